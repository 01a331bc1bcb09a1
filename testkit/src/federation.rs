//! A whole federation for a test: `tessera dev` as a process (the README's
//! command) on a loopback address of its own, and what tests do with it
//! (its endpoints, clients, its processes killed and restarted).

use crate::bins;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

pub struct Federation {
    pub host: String,
    pub dir: tempfile::TempDir,
    dev: Child,
    endpoints: serde_json::Value,
    /// Processes a test restarted (they are the test's children, not dev's).
    restarted: Vec<Child>,
}

impl Federation {
    /// `tessera dev --groups <groups>` (3 voters + 1 learner each), ready;
    /// without placement's rebalancing rounds (a move takes revisions, and
    /// tests compare revisions: a test that wants one runs `tessera rebalance`).
    pub fn start(groups: usize) -> Self {
        Self::start_logging(groups, None)
    }

    /// As `start`, every process logging at `filter` (RUST_LOG's syntax)
    /// into the federation's logs/ — kept with its data when a test fails
    /// under `TESSERA_KEEP_FAILED` (CI sets it).
    pub fn start_logging(groups: usize, filter: Option<&str>) -> Self {
        let host = crate::net::fresh_host();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = bins::command(bins::path("tessera"));
        cmd.args(["dev", "--groups", &groups.to_string(), "--host", &host, "--client-port", "2379", "--rebalance-every", "0"])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped());
        if let Some(filter) = filter {
            cmd.env("RUST_LOG", filter);
        }
        let mut dev = cmd.spawn().unwrap();
        let out = dev.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("federation ready") => break,
                Some(Ok(_)) => {}
                _ => panic!("tessera dev did not come up; logs in {}", dir.path().join("logs").display()),
            }
        }
        // Keep draining stdout so the process never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let endpoints = serde_json::from_slice(&std::fs::read(dir.path().join("endpoints.json")).unwrap()).unwrap();
        Federation { host, dir, dev, endpoints, restarted: vec![] }
    }

    fn url_of(&self, field: &str) -> String {
        let v = &self.endpoints[field];
        v.as_str().or_else(|| v[0].as_str()).unwrap_or_else(|| panic!("no {field} in endpoints.json")).to_string()
    }

    /// The router's address (host:port), for etcd clients.
    pub fn endpoint(&self) -> String {
        self.url().trim_start_matches("http://").to_string()
    }

    pub fn url(&self) -> String {
        self.url_of("router")
    }

    /// Placement's admin API.
    pub fn placement(&self) -> String {
        self.url_of("placement")
    }

    /// Placement's store (an etcd API; its members' client URLs, comma-separated):
    /// routers and nodes follow the map there.
    pub fn store(&self) -> String {
        let members = self.endpoints["store"].as_array().cloned().unwrap_or_default();
        members.iter().filter_map(|m| m[0].as_str()).collect::<Vec<_>>().join(",")
    }

    /// One member of placement's store (the first).
    pub fn store_url(&self) -> String {
        self.store().split(',').next().unwrap_or_default().to_string()
    }

    /// Client URLs of the shard-nodes.
    pub fn node_urls(&self) -> Vec<String> {
        let nodes = self.endpoints["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().filter_map(|n| n[0].as_str().map(String::from)).collect()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    /// The pid of one of dev's processes (by its name: n1, placement-store-1, ...).
    pub fn pid(&self, name: &str) -> u32 {
        let want = format!("--data-dir={}", self.dir.path().join(name).display());
        self.find_pid(|args| args.contains(&want)).unwrap_or_else(|| panic!("no process {name}"))
    }

    pub fn pid_of_placement(&self) -> u32 {
        let want = format!("--listen-client-urls={}", self.placement());
        self.find_pid(|args| args.contains(&want)).expect("no placement")
    }

    pub fn pid_of_router(&self) -> u32 {
        let want = format!("--listen-client-urls={}", self.url());
        self.find_pid(|args| args.contains(&want)).expect("no router")
    }

    /// A process started from this federation's plan, found by its command line.
    fn find_pid(&self, matches: impl Fn(&[String]) -> bool) -> Option<u32> {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(args) = cmdline(pid) {
                if matches(&args) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// kill -9 one of the federation's processes; returns its command line
    /// to restart it.
    pub fn kill9(&self, pid: u32) -> Vec<String> {
        let args = cmdline(pid).expect("the process runs");
        assert!(args.iter().any(|a| a.contains(&self.dir.path().display().to_string()) || a.contains(&self.host)));
        // SAFETY: a process of this federation (checked above).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        args
    }

    /// Starts a process again with the command line `kill9` returned.
    pub fn restart(&mut self, args: &[String]) {
        self.restart_with_env(args, &[]);
    }

    /// As `restart`, with these environment variables (e.g. `FAILPOINTS`).
    pub fn restart_with_env(&mut self, args: &[String], env: &[(&str, &str)]) {
        let n = self.restarted.len();
        let log = std::fs::File::create(self.dir.path().join(format!("logs/restarted-{n}.log"))).unwrap();
        let mut cmd = bins::command(&args[0]);
        cmd.args(&args[1..]).stdout(log.try_clone().unwrap()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.restarted.push(cmd.spawn().unwrap());
    }

    /// Whether the child `restart` started last has exited (e.g. at a failpoint).
    pub fn restarted_exited(&mut self) -> bool {
        self.restarted.last_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Kills the child `restart` started last (a process the test restarted).
    pub fn kill_restarted(&mut self) {
        if let Some(mut c) = self.restarted.pop() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        let out = crate::etcd::etcdctl(&self.endpoint(), args);
        let mut s = String::from_utf8_lossy(&out.stdout).to_string();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// `tessera <args> --placement <this federation's>`.
    pub fn tessera(&self, args: &[&str]) -> std::process::Output {
        bins::command(bins::path("tessera")).args(args).args(["--placement", &self.placement()]).output().unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.tessera(&["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// How many groups hold keys (and `tessera status --json`, to show).
    pub fn groups_with_keys(&self) -> (usize, serde_json::Value) {
        let status = self.status_json();
        let holding = status["groups"].as_array().unwrap().iter().filter(|g| g["keys"].as_u64().unwrap_or(0) > 0).count();
        (holding, status)
    }
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

impl Drop for Federation {
    fn drop(&mut self) {
        // SAFETY: signalling the `tessera dev` this federation started.
        unsafe { libc::kill(self.dev.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.dev.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        for c in &mut self.restarted {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("TESSERA_KEEP_FAILED").is_some() && std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("kept federation data and logs in {}", kept.display());
        }
    }
}
