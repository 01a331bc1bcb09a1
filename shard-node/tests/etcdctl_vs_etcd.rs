//! The same etcdctl session against real etcd 3.4 and against a Tessera
//! group: outputs must match (lease ids normalised; revision numbers are not
//! printed by these commands).

use tessera_testkit::etcd::{etcdctl, etcdctl_stdin, RealEtcd};
use tessera_testkit::Cluster;

/// One step: etcdctl args, and stdin for `txn`.
const SESSION: &[(&[&str], &str)] = &[
    (&["put", "foo", "bar"], ""),
    (&["put", "foo", "bar2", "--prev-kv"], ""),
    (&["get", "foo"], ""),
    (&["get", "foo", "--print-value-only"], ""),
    (&["get", "missing"], ""),
    (&["put", "a", "1"], ""),
    (&["put", "b", "22"], ""),
    (&["put", "c", "3"], ""),
    (&["put", "d", "0"], ""),
    (&["put", "b", "2"], ""),
    (&["get", "a", "d"], ""),
    (&["get", "a", "--prefix"], ""),
    (&["get", "b", "--from-key"], ""),
    (&["get", "", "--prefix", "--keys-only"], ""),
    (&["get", "a", "--from-key", "--limit=2"], ""),
    (&["get", "a", "z", "--sort-by=KEY", "--order=DESCEND"], ""),
    (&["get", "a", "z", "--sort-by=VALUE", "--order=ASCEND"], ""),
    (&["get", "a", "z", "--sort-by=VERSION", "--order=DESCEND", "--limit=1"], ""),
    (&["get", "a", "z", "--sort-by=CREATE", "--order=DESCEND", "--keys-only"], ""),
    (&["get", "a", "z", "--sort-by=MODIFY"], ""),
    (&["get", "a", "z", "--count-only"], ""),
    (&["get", "a", "z", "--consistency=s"], ""),
    (&["del", "a"], ""),
    (&["del", "zzz"], ""),
    (&["del", "b", "d", "--prev-kv"], ""),
    (&["get", "", "--from-key"], ""),
    (&["txn"], "value(\"foo\") = \"bar2\"\n\nput foo bar3\nget foo\n\nget missing\n\n"),
    (&["txn"], "value(\"foo\") = \"nope\"\n\nput foo bar4\n\nget foo\n\n"),
    (&["txn"], "version(\"foo\") > \"1\"\nmod(\"nokey\") = \"0\"\n\ndel foo --prev-kv\n\n\n"),
    (&["txn"], "create(\"d\") > \"0\"\n\n\nput x 1\nput x 2\n\n"),
    (&["get", "foo", "--rev=999999999999999999"], ""),
    (&["put", "keep", "v", "--ignore-value"], ""),
    (&["put", "d", "--ignore-value"], ""),
    (&["get", "d"], ""),
    (&["put", "d", "v", "--lease=abc"], ""),
    (&["put", "d", "v", "--lease=1234"], ""),
    (&["lease", "revoke", "1234"], ""),
    (&["lease", "timetolive", "1234"], ""),
    (&["compact", "999999999999999999"], ""),
];

fn run_session(endpoint: &str) -> Vec<String> {
    SESSION
        .iter()
        .map(|(args, stdin)| {
            let out = if args[0] == "txn" { etcdctl_stdin(endpoint, args, stdin) } else { etcdctl(endpoint, args) };
            // etcdctl's client-side retry warnings carry timestamps and ids.
            let stderr: String = String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.starts_with("{\"level\":\"warn\""))
                .map(|l| format!("{l}\n"))
                .collect();
            format!(
                "$ etcdctl {}\n{}{}[exit {}]",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                stderr,
                out.status.code().unwrap_or(-1)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_session_matches_real_etcd() {
    let etcd = RealEtcd::start().await;
    let cluster = Cluster::start(3, &[]).await;
    let want = run_session(&etcd.endpoint);
    // Tessera through a follower-or-leader member chosen at random: any member serves.
    let got = run_session(&cluster.members[1].endpoint());
    let mut diffs = vec![];
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            diffs.push(format!("--- etcd\n{w}\n--- tessera\n{g}"));
        }
    }
    assert!(diffs.is_empty(), "{} of {} steps differ:\n{}", diffs.len(), SESSION.len(), diffs.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_session_matches_real_etcd() {
    let etcd = RealEtcd::start().await;
    let cluster = Cluster::start(3, &[]).await;
    let session = |ep: &str| -> Vec<String> {
        let grant = etcdctl(ep, &["lease", "grant", "600"]);
        let text = String::from_utf8_lossy(&grant.stdout).to_string();
        // "lease 694d7ab1c2e3f405 granted with TTL(600s)"
        let id = text.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut out = vec![text.replace(&id, "ID")];
        for args in [
            vec!["put", "lk1", "v1", "--lease", &id],
            vec!["put", "lk2", "v2", "--lease", &id],
            vec!["lease", "timetolive", &id, "--keys"],
            vec!["lease", "list"],
            vec!["lease", "keep-alive", "--once", &id],
            vec!["lease", "revoke", &id],
            vec!["get", "lk", "--prefix"],
            vec!["lease", "timetolive", &id],
        ] {
            let o = etcdctl(ep, &args);
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            // TTLs tick down while the session runs; keep only their presence.
            let text = text.replace(&id, "ID");
            let text: String = text
                .split_inclusive('\n')
                .map(|l| {
                    if l.contains("remaining(") {
                        l.split("remaining(").next().unwrap().to_string() + "remaining(..)\n"
                    } else {
                        l.to_string()
                    }
                })
                .map(|l| {
                    if l.contains(" keepalived with TTL(") {
                        l.split(" keepalived").next().unwrap().to_string() + " keepalived\n"
                    } else {
                        l
                    }
                })
                .collect();
            out.push(format!("$ {}\n{text}", args.join(" ").replace(&id, "ID")));
        }
        out
    };
    let want = session(&etcd.endpoint);
    let got = session(&cluster.members[2].endpoint());
    assert_eq!(want, got);
}

/// etcdctl 3.4 sends `http://host:port` as the HTTP/2 authority on
/// maintenance calls to an endpoint given with its scheme (and for
/// `--cluster`): etcd accepts it, so must we.
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_calls_with_scheme_endpoints_and_cluster_flag() {
    let etcd = RealEtcd::start().await;
    let cluster = Cluster::start(3, &[]).await;
    for ep in [etcd.endpoint.clone(), cluster.members[0].endpoint()] {
        let url = format!("http://{ep}");
        for args in [
            vec!["endpoint", "status"],
            vec!["endpoint", "hashkv"],
            vec!["defrag"],
            vec!["endpoint", "status", "--cluster"],
            vec!["endpoint", "health", "--cluster"],
        ] {
            let out = etcdctl(&url, &args);
            assert!(out.status.success(), "{ep}: etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let cluster_status = String::from_utf8_lossy(&etcdctl(&url, &["endpoint", "status", "--cluster"]).stdout).to_string();
        let members = if ep == etcd.endpoint { 1 } else { 3 };
        assert_eq!(cluster_status.lines().count(), members, "{cluster_status}");
    }
}
