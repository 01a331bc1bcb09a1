//! A real group of `shard-node` processes on loopback for integration tests.
#![allow(dead_code)]

pub mod json_http;
pub mod recipes;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A loopback address of its own for one test cluster (all of 127.0.0.0/8
/// is loopback on Linux), so parallel test processes never race for ports.
pub fn fresh_host() -> String {
    loop {
        let n: u32 = rand_u32() % (250 * 256 * 256);
        let host = format!("127.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, 1 + n % 250);
        if TcpListener::bind(format!("{host}:0")).is_ok() {
            return host;
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.write_u32(std::process::id());
    h.finish() as u32
}

pub struct Member {
    pub host: String,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }
    fn url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.host)
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    cluster_flag: String,
    extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members (extra flags go to every member) and waits for a leader.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let host = fresh_host();
        let members: Vec<Member> = (1..=n)
            .map(|i| Member {
                host: host.clone(),
                name: format!("n{i}"),
                client_port: 2379 + 10 * i as u16,
                peer_port: 2380 + 10 * i as u16,
                dir: tmp.path().join(format!("n{i}")),
                child: None,
            })
            .collect();
        let cluster_flag = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.url(m.peer_port)))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster { members, cluster_flag, extra: extra.iter().map(|s| s.to_string()).collect(), _tmp: tmp };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_ready().await;
        c
    }

    /// Registers a new member slot (not started): for `etcdctl member add`.
    pub fn add_member_slot(&mut self) -> usize {
        let i = self.members.len() + 1;
        let host = self.members[0].host.clone();
        self.members.push(Member {
            host,
            name: format!("n{i}"),
            client_port: 2379 + 10 * i as u16,
            peer_port: 2380 + 10 * i as u16,
            dir: self._tmp.path().join(format!("n{i}")),
            child: None,
        });
        i - 1
    }

    /// Moves member `i` to another peer port (for `member update`); takes
    /// effect at its next start.
    pub fn set_peer_port(&mut self, i: usize, port: u16) {
        self.members[i].peer_port = port;
        self.cluster_flag = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.url(m.peer_port)))
            .collect::<Vec<_>>()
            .join(",");
    }

    pub fn peer_url(&self, i: usize) -> String {
        self.members[i].url(self.members[i].peer_port)
    }

    /// Starts a member added with `member add`, joining the running group.
    pub fn spawn_joining(&mut self, i: usize, initial_cluster: &str) {
        self.cluster_flag = initial_cluster.to_string();
        self.extra.extend(["--initial-cluster-state".to_string(), "existing".to_string()]);
        self.spawn(i);
        self.extra.truncate(self.extra.len() - 2);
    }

    pub fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._tmp.path().join(format!("{}.log", m.name)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shard-node"))
            .args(["--name", &m.name, "--data-dir", m.dir.to_str().unwrap()])
            .args(["--listen-client-urls", &m.url(m.client_port)])
            .args(["--advertise-client-urls", &m.url(m.client_port)])
            .args(["--listen-peer-urls", &m.url(m.peer_port)])
            .args(["--initial-advertise-peer-urls", &m.url(m.peer_port)])
            .args(["--initial-cluster", &self.cluster_flag])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shard-node");
        self.members[i].child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` with extra flags for this start only.
    pub fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let n = self.extra.len();
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(i);
        self.extra.truncate(n);
    }

    /// Waits for member `i` to exit by itself (None if still running at the deadline).
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.members[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.members[i].child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then waits for the member to exit on its own.
    pub fn terminate(&mut self, i: usize) -> Duration {
        let start = Instant::now();
        if let Some(mut c) = self.members[i].child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let status = c.wait().unwrap();
            assert!(status.success(), "member exited with {status} after SIGTERM");
        }
        start.elapsed()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self._tmp.path().join(format!("{}.log", self.members[i].name))).unwrap_or_default()
    }

    pub async fn client(&self, i: usize) -> etcd_client::Client {
        etcd_client::Client::connect([self.members[i].endpoint()], None).await.expect("connect")
    }

    /// Waits until every running member sees the same leader.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(_) = self.try_leader().await {
                return;
            }
            assert!(Instant::now() < deadline, "group did not elect a leader; logs:\n{}", self.log(0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_leader(&self) -> Option<u64> {
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if !self.is_running(i) {
                continue;
            }
            let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_millis(500));
            let mut c = etcd_client::Client::connect([m.endpoint()], Some(opts)).await.ok()?;
            let l = c.status().await.ok()?.leader();
            if l == 0 || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader
    }

    /// Index of the member that leads.
    pub async fn leader(&self) -> usize {
        self.wait_ready().await;
        for (i, _) in self.members.iter().enumerate() {
            if !self.is_running(i) {
                continue;
            }
            let mut c = self.client(i).await;
            let s = c.status().await.unwrap();
            if s.leader() == s.header().unwrap().member_id() {
                return i;
            }
        }
        panic!("no member claims leadership");
    }

    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        etcdctl(&self.members[i].endpoint(), args)
    }
}

pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("etcdctl is installed (scripts/prereqs.sh)")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // TESSERA_KEEP_FAILED=1 keeps a failed test's data dirs and logs.
        if std::thread::panicking() && std::env::var_os("TESSERA_KEEP_FAILED").is_some() {
            let dir = std::mem::replace(&mut self._tmp, tempfile::tempdir().unwrap()).keep();
            eprintln!("kept the cluster's data and logs in {}", dir.display());
        }
    }
}

/// A real etcd 3.4 server, for side-by-side comparisons.
pub struct RealEtcd {
    child: Child,
    pub endpoint: String,
    _tmp: tempfile::TempDir,
}

impl RealEtcd {
    pub async fn start() -> RealEtcd {
        let tmp = tempfile::tempdir().unwrap();
        let host = fresh_host();
        let (client, peer) = (format!("http://{host}:2379"), format!("http://{host}:2380"));
        let child = Command::new("etcd")
            .args(["--name", "ref", "--data-dir", tmp.path().join("d").to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ref={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (scripts/prereqs.sh)");
        let endpoint = format!("{host}:2379");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([endpoint.clone()], None).await {
                if c.status().await.map(|s| s.leader() != 0).unwrap_or(false) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "reference etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        RealEtcd { child, endpoint, _tmp: tmp }
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn etcdctl_stdin(endpoint: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A client load for fault tests: writes distinct keys `load/NNNNNNNN`
/// round-robin through `endpoints` until stopped, recording which writes
/// were acknowledged and how many failed.
pub struct LoadWriter {
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadWriter {
    pub fn start(endpoints: Vec<String>) -> Self {
        use std::sync::atomic::Ordering;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, f, s) = (acked.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut clients = vec![];
            for ep in &endpoints {
                clients.push(etcd_client::Client::connect([ep.clone()], None).await.unwrap());
            }
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let key = format!("load/{i:08}");
                let c = &mut clients[i % endpoints.len()];
                match tokio::time::timeout(Duration::from_secs(3), c.put(key.clone(), "v", None)).await {
                    Ok(Ok(_)) => a.lock().unwrap().push(key),
                    Ok(Err(e)) => {
                        eprintln!("write failed: {e}");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        eprintln!("write timed out");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        });
        Self { acked, failures, stop, task }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` writes are acknowledged; returns how long that took.
    pub async fn wait_acked(&self, n: usize, within: Duration) -> Duration {
        let start = Instant::now();
        while self.acked() < n {
            assert!(start.elapsed() < within, "writes stalled at {} acknowledged", self.acked());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// Stops writing; returns the acknowledged keys and the number of failures.
    pub async fn stop(self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failures.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Asserts every key in `acked` is present (read linearizably through `c`).
pub async fn assert_has_all(c: &mut etcd_client::Client, acked: &[String]) {
    let got = c.get("load/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    let have: std::collections::HashSet<&[u8]> = got.kvs().iter().map(|k| k.key()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_bytes())).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}
