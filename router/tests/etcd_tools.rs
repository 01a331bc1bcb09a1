//! etcd's own tools through the router (installed by scripts/etcd-tools.sh):
//! `benchmark` must finish every request without an error, and
//! `etcd-runner`'s workloads (election, lock racer, watcher, lease renewer)
//! must keep their invariants, with the federation's keys on several groups.

use std::process::Stdio;
use std::time::Duration;
use tessera_testkit::{bins, Federation};

fn tool(name: &str) -> std::path::PathBuf {
    bins::etcd_tool("3.4", name)
}

fn run(f: &Federation, name: &str, args: &[&str]) -> String {
    let out = bins::command(tool(name)).args(args).arg(format!("--endpoints={}", f.endpoint())).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

/// benchmark's summary: requests completed and no error distribution.
fn assert_clean_benchmark(out: &str, total: usize) {
    assert!(!out.contains("Error distribution"), "benchmark saw errors:\n{out}");
    let histogram: usize =
        out.lines().filter_map(|l| l.trim().split_once('[')?.1.split_once(']')?.0.trim().parse::<usize>().ok()).sum();
    assert_eq!(histogram, total, "every request answered:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_benchmark_and_runner_through_the_router() {
    let f = Federation::start(3);
    let common = ["--clients=20", "--conns=4"];
    let put = run(&f, "benchmark", &[&common[..], &["put", "--total=2000", "--key-space-size=5000", "--key-size=12"]].concat());
    assert_clean_benchmark(&put, 2000);
    // The put keys are spread over the ring: several groups hold them.
    let (holding, status) = f.groups_with_keys();
    assert!(holding >= 2, "benchmark keys on one group only: {status}");
    for consistency in ["l", "s"] {
        let flag = format!("--consistency={consistency}");
        let args = [&common[..], &["range", "foo", "--total=2000", &flag]].concat();
        assert_clean_benchmark(&run(&f, "benchmark", &args), 2000);
    }
    // A range over every group, at one revision each time.
    let all = [&common[..], &["range", "\u{1}", "\u{7f}", "--total=200"]].concat();
    assert_clean_benchmark(&run(&f, "benchmark", &all), 200);
    let txn = run(&f, "benchmark", &[&common[..], &["txn-put", "--total=1000", "--key-space-size=1000"]].concat());
    assert_clean_benchmark(&txn, 1000);
    let watch = run(&f, "benchmark", &["watch-latency", "--total=200", "--put-rate=200"]);
    assert!(!watch.contains("Error distribution"), "{watch}");

    // Fresh names: a runner leaves its last holder's key until its lease expires.
    run(&f, "etcd-runner", &["election", "fed-election", "--rounds=5", "--req-rate=100"]);
    // etcd's client-side Mutex reads its whole prefix inside its txn, and
    // its contenders' keys spread over the groups: a txn across groups.
    run(&f, "etcd-runner", &["lock-racer", "fed-lock", "--rounds=5", "--req-rate=100"]);
    run(&f, "etcd-runner", &["watcher", "--rounds=1", "--req-rate=200"]);
    let mut renewer = bins::command(tool("etcd-runner"))
        .args(["lease-renewer", "--ttl=4", &format!("--endpoints={}", f.endpoint())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(renewer.try_wait().unwrap().is_none(), "lease-renewer exited early");
    renewer.kill().unwrap();
    let out = renewer.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.matches("renewed lease").count() >= 3, "expected steady renewals:\n{log}");
    assert!(!log.contains("lost lease") && !log.contains("bad renew"), "{log}");
}
