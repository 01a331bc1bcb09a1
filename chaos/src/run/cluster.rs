//! The system under test, started by the run itself, process by process,
//! with the command lines `tessera dev` uses (cli/src/dev.rs): a federation
//! (placement's store of three shard-nodes serving the revision oracle,
//! placement, the shard-nodes, routers) or a standalone group of three
//! shard-nodes. The run starts each process itself so that each can have a
//! network namespace (`net`) and a clock (`clock`) of its own. It knows
//! every process by name, pid and command line, so faults can stop, pause,
//! restart, cut off and skew them.
//!
//! Every process dies with the runner however it ends (PR_SET_PDEATHSIG),
//! and with the `Cluster` when it is dropped.

use super::clock::{ProcClock, Skewable};
use super::net::{enter_raw, Network};
use anyhow::{bail, Context};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the processes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// A loopback address (127.x.y.z) per process; no network faults.
    Loopback,
    /// A network namespace per process, joined by the run's packet switch.
    Netns,
}

/// One process of the system, as it was started.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    /// The binary, then its arguments.
    pub args: Vec<String>,
    pub pid: Option<u32>,
    /// Its host in the network (namespace mode).
    pub host: Option<usize>,
    /// Its clock, when clocks are faked.
    pub clock: Option<ProcClock>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The etcd endpoints clients use (host:port): the routers, or the members.
    pub endpoints: Vec<String>,
    pub procs: Vec<Proc>,
    pub net: Option<Arc<Network>>,
    /// Placement's admin URL (a federation's).
    pub placement: Option<String>,
    skew: Option<Skewable>,
    children: Vec<Child>,
}

/// A binary of the workspace: `$TESSERA_BIN`, else next to this executable
/// (or one up, from a test's target/<profile>/deps).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = vec![];
    if let Some(d) = std::env::var_os("TESSERA_BIN") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let up = exe_dir.parent().map(Path::to_path_buf);
        dirs.push(exe_dir);
        dirs.extend(up);
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found (build the workspace first: cargo build --workspace --bins)"))
}

/// A loopback address nobody listens on: 127.x.y.z with random x, y, z.
fn fresh_host() -> String {
    loop {
        let n: u32 = rand_u32() % (250 * 256 * 256);
        let host = format!("127.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, 1 + n % 250);
        if std::net::TcpListener::bind(format!("{host}:2379")).is_ok()
            && std::net::TcpListener::bind(format!("{host}:2380")).is_ok()
        {
            return host;
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}

/// The processes of a system and their hosts, before anything starts:
/// the network is built from the names, the command lines from the hosts.
pub struct Plan {
    pub names: Vec<String>,
    pub hosts: Vec<String>,
}

impl Plan {
    /// Names: placement's store, placement, nodes, routers (federation), or members.
    pub fn new(names: Vec<String>, mode: NetMode) -> Plan {
        let hosts = match mode {
            NetMode::Netns => (1..=names.len()).map(|i| format!("10.77.0.{i}")).collect(),
            NetMode::Loopback => names.iter().map(|_| fresh_host()).collect(),
        };
        Plan { names, hosts }
    }

    pub fn federation(nodes: usize, routers: usize, mode: NetMode) -> Plan {
        let mut names: Vec<String> = (1..=3).map(|i| format!("placement-store-{i}")).collect();
        names.push("placement".into());
        names.extend((1..=nodes).map(|i| format!("n{i}")));
        names.extend((1..=routers).map(|i| format!("router-{i}")));
        Plan::new(names, mode)
    }

    pub fn standalone(members: usize, mode: NetMode) -> Plan {
        Plan::new((1..=members).map(|i| format!("m{i}")).collect(), mode)
    }

    fn host(&self, name: &str) -> &str {
        let i = self.names.iter().position(|n| n == name).unwrap_or(0);
        &self.hosts[i]
    }
}

/// A shard-node's etcd flags (as dev's `node_args`): client 2379, peer 2380 on its host.
fn node_args(name: &str, dir: &Path, host: &str) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", dir.join(name).display()),
        format!("--listen-client-urls=http://{host}:2379"),
        format!("--advertise-client-urls=http://{host}:2379"),
        format!("--listen-peer-urls=http://{host}:2380"),
        format!("--initial-advertise-peer-urls=http://{host}:2380"),
    ]
}

impl Cluster {
    fn empty(net: Option<Arc<Network>>, skew: Option<Skewable>, base: &Path) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("chaos-").tempdir_in(base)?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        Ok(Cluster { dir, endpoints: vec![], procs: vec![], net, placement: None, skew, children: vec![] })
    }

    fn add(&mut self, name: &str, binary: &str, args: Vec<String>) -> anyhow::Result<usize> {
        let mut all = vec![bin(binary)?.display().to_string()];
        all.extend(args);
        let host = self.net.as_ref().and_then(|n| n.index(name));
        let clock = match &self.skew {
            Some(s) if s.name == name => {
                std::fs::create_dir_all(self.dir.path().join("clocks"))?;
                Some(ProcClock::new(self.dir.path().join("clocks").join(name))?)
            }
            _ => None,
        };
        self.procs.push(Proc { name: name.into(), args: all, pid: None, host, clock });
        let i = self.procs.len() - 1;
        self.start(i)?;
        Ok(i)
    }

    /// A federation as `tessera dev` starts it: `groups` groups of three
    /// voters (and `learners` learners) over the plan's nodes. Data under `base`.
    pub async fn federation(
        plan: &Plan,
        groups: usize,
        learners: usize,
        net: Option<Arc<Network>>,
        skew: Option<Skewable>,
        base: &Path,
        certs: Option<&super::auth::Certs>,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster::empty(net, skew, base)?;
        match c.start_federation(plan, groups, learners, certs).await {
            Ok(()) => Ok(c),
            Err(e) => Err(c.failed(e)),
        }
    }

    /// The startup failed: keep the logs for a look.
    fn failed(&mut self, e: anyhow::Error) -> anyhow::Error {
        match self.keep() {
            Some(kept) => e.context(format!("the system did not start; its logs are in {}", kept.display())),
            None => e,
        }
    }

    async fn start_federation(
        &mut self,
        plan: &Plan,
        groups: usize,
        learners: usize,
        certs: Option<&super::auth::Certs>,
    ) -> anyhow::Result<()> {
        let c = self;
        let dir = c.dir.path().to_path_buf();
        let store: Vec<&String> = plan.names.iter().filter(|n| n.starts_with("placement-store-")).collect();
        let store_urls: Vec<String> = store.iter().map(|n| format!("http://{}:2379", plan.host(n))).collect();
        let cluster: Vec<String> = store.iter().map(|n| format!("{n}=http://{}:2380", plan.host(n))).collect();
        for n in &store {
            let mut args = node_args(n, &dir, plan.host(n));
            args.push(format!("--initial-cluster={}", cluster.join(",")));
            args.push("--revision-oracle".into());
            c.add(n, "shard-node", args)?;
        }
        let placement = format!("http://{}:2379", plan.host("placement"));
        let args = vec![format!("--listen-client-urls={placement}"), format!("--store-endpoints={}", store_urls.join(","))];
        c.add("placement", "placement", args)?;
        c.placement = Some(placement.clone());
        let nodes: Vec<&String> = plan.names.iter().filter(|n| n.starts_with('n') && n[1..].parse::<u32>().is_ok()).collect();
        for n in &nodes {
            let mut args = node_args(n, &dir, plan.host(n));
            args.push(format!("--placement-endpoints={}", store_urls.join(",")));
            c.add(n, "shard-node", args)?;
        }
        let admin = placement::PlacementClient::new(placement);
        let want = nodes.len();
        c.wait("nodes to register with placement", Duration::from_secs(60), || async {
            admin.map().await.is_ok_and(|m| m.nodes.len() >= want)
        })
        .await?;
        let replicas = nodes.len() - learners;
        admin.init(&placement::api::InitRequest { groups, replicas, learners }).await.context("placement init")?;
        let node_urls: Vec<String> = nodes.iter().map(|n| format!("{}:2379", plan.host(n))).collect();
        c.wait("every group to elect a leader", Duration::from_secs(60), || async {
            for u in &node_urls {
                if !tessera_rpc::endpoints::probe_health(u).await {
                    return false;
                }
            }
            true
        })
        .await?;
        // With auth, routers serve TLS and take the caller from its certificate.
        let (scheme, tls_flags, health) = match certs {
            Some(c) => ("https", c.router_flags(), c.root()?),
            None => ("http", vec![], tessera_rpc::tls::Dialer::plain()),
        };
        for r in plan.names.iter().filter(|n| n.starts_with("router-")) {
            let url = format!("{}:2379", plan.host(r));
            let mut args =
                vec![format!("--listen-client-urls={scheme}://{url}"), format!("--placement-endpoints={}", store_urls.join(","))];
            args.extend(tls_flags.iter().cloned());
            c.add(r, "router", args)?;
            let probe = format!("{scheme}://{url}");
            c.wait("the router", Duration::from_secs(30), || tessera_rpc::endpoints::probe_health_via(&health, &probe)).await?;
            c.endpoints.push(url);
        }
        Ok(())
    }

    /// A standalone group of shard-nodes (etcd's flags), one per host of the plan.
    pub async fn standalone(
        plan: &Plan,
        net: Option<Arc<Network>>,
        skew: Option<Skewable>,
        base: &Path,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster::empty(net, skew, base)?;
        match c.start_standalone(plan).await {
            Ok(()) => Ok(c),
            Err(e) => Err(c.failed(e)),
        }
    }

    async fn start_standalone(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let c = self;
        let dir = c.dir.path().to_path_buf();
        let cluster: Vec<String> = plan.names.iter().map(|n| format!("{n}=http://{}:2380", plan.host(n))).collect();
        for n in &plan.names {
            let mut args = node_args(n, &dir, plan.host(n));
            args.push(format!("--initial-cluster={}", cluster.join(",")));
            c.add(n, "shard-node", args)?;
            c.endpoints.push(format!("{}:2379", plan.host(n)));
        }
        let urls = c.endpoints.clone();
        c.wait("the group to elect a leader", Duration::from_secs(60), || async {
            for u in &urls {
                if !tessera_rpc::endpoints::probe_health(u).await {
                    return false;
                }
            }
            true
        })
        .await
    }

    async fn wait<F, Fut>(&mut self, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            for (c, p) in self.children.iter_mut().zip(&self.procs) {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("{} exited ({status}) while waiting for {what}; logs in {}", p.name, self.dir.path().display());
                }
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; logs in {}", self.dir.path().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Starts process `i` (again) from its command line, in its namespace, on its clock.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_with(i, &[])
    }

    /// `start` with more environment (a shard-node's `FAILPOINTS`).
    pub fn start_with(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let log_path = self.dir.path().join("logs").join(format!("{}.log", self.procs[i].name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
        let ns = match (&self.net, self.procs[i].host) {
            (Some(net), Some(h)) => Some(net.ns_fd(h)),
            _ => None,
        };
        let p = &mut self.procs[i];
        let mut cmd = Command::new(&p.args[0]);
        cmd.args(&p.args[1..]).stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(log);
        cmd.envs(env.iter().copied());
        if let (Some(clock), Some(skew)) = (&mut p.clock, &self.skew) {
            clock.restarted()?;
            cmd.envs(clock.env(&skew.lib));
        }
        // SAFETY: prctl and setns are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                match ns {
                    Some(fd) => enter_raw(fd),
                    None => Ok(()),
                }
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", p.name))?;
        p.pid = Some(child.id());
        // The child of process i sits at index i until it is restarted.
        if i < self.children.len() {
            let mut old = std::mem::replace(&mut self.children[i], child);
            let _ = old.kill();
            let _ = old.wait();
        } else {
            self.children.push(child);
        }
        Ok(())
    }

    /// Sends `signal` to process `i` (if it runs).
    pub fn signal(&self, i: usize, signal: i32) {
        if let Some(pid) = self.procs[i].pid {
            // SAFETY: a process this run started.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// kill -9 process `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        self.procs[i].pid = None;
        if let Some(c) = self.children.get_mut(i) {
            let _ = c.wait();
        }
    }

    /// The log of process `i`.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join("logs").join(format!("{}.log", self.procs[i].name))
    }

    /// Keeps the data and logs after the run; returns where they are.
    pub fn keep(&mut self) -> Option<PathBuf> {
        let old = std::mem::replace(&mut self.dir, tempfile::tempdir().ok()?);
        Some(old.keep())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
