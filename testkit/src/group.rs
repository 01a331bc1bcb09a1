//! A real group of `shard-node` processes on loopback (etcd's flags: one
//! standalone group), started, killed and restarted by tests.

use crate::net::fresh_host;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

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
        let cluster_flag = members.iter().map(|m| format!("{}={}", m.name, m.url(m.peer_port))).collect::<Vec<_>>().join(",");
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
        self.cluster_flag =
            self.members.iter().map(|m| format!("{}={}", m.name, m.url(m.peer_port))).collect::<Vec<_>>().join(",");
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
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self._tmp.path().join(format!("{}.log", m.name))).unwrap();
        let child = crate::bins::command(crate::bins::path("shard-node"))
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
            // SAFETY: signalling a child this cluster started and has not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let status = c.wait().unwrap();
            if !status.success() {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("member exited with {status} after SIGTERM; its log ends:\n{}", tail.join("\n"));
            }
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
            if self.try_leader().await.is_some() {
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
        crate::etcd::etcdctl(&self.members[i].endpoint(), args)
    }
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
