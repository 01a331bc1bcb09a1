//! A chaos run: start the system (a federation, or a standalone group) in a
//! network of its own, drive the workloads while injecting faults, heal,
//! read everything back, check the history and report.

pub mod auth;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod etcd;
pub mod faults;
pub mod kube;
pub mod net;
pub mod prove;
pub mod recorder;
mod report;
pub mod table;
pub mod watch;

pub use report::RunReport;

use crate::check::check_all;
use crate::history::{Bytes, Call, FinalRead, History, Response};
use cluster::{Cluster, NetMode, Plan};
use etcd::EtcdConfig;
use faults::{FaultKind, Rng};
use kube::KubeConfig;
use recorder::Recorder;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A federation: placement's store, placement, `groups` groups of three
    /// voters over three nodes, routers.
    Federation { groups: usize },
    /// A standalone group of this many members.
    Standalone { members: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Kube,
    Etcd,
    Both,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kube" => Ok(Workload::Kube),
            "etcd" => Ok(Workload::Etcd),
            "both" => Ok(Workload::Both),
            _ => Err(format!("unknown workload {s:?} (kube, etcd, both)")),
        }
    }
}

/// Which network the system gets (auto: namespaces when this machine allows them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetChoice {
    Auto,
    Loopback,
    Netns,
}

impl std::str::FromStr for NetChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(NetChoice::Auto),
            "loopback" => Ok(NetChoice::Loopback),
            "netns" => Ok(NetChoice::Netns),
            _ => Err(format!("unknown network {s:?} (auto, loopback, netns)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// Time between faults.
    pub fault_every: Duration,
    pub workload: Workload,
    pub kube: KubeConfig,
    pub etcd: EtcdConfig,
    pub net: NetChoice,
    /// Routers of a federation (clients spread over them).
    pub routers: usize,
    /// Learners per group of a federation.
    pub learners: usize,
    /// Where the system's data lives; a failing run's logs, history and
    /// report are kept there (default: the temp dir).
    pub artifacts: Option<PathBuf>,
    /// Keep a failing run's data directories too (hundreds of MB).
    pub keep_data: bool,
    /// Routers serve TLS, auth is on and the workloads run as a user
    /// allowed only their keys (`auth`; a federation only).
    pub auth: bool,
}

impl RunConfig {
    pub fn new(target: Target, seconds: u64, seed: u64) -> RunConfig {
        RunConfig {
            target,
            duration: Duration::from_secs(seconds),
            seed,
            faults: vec![],
            fault_every: Duration::from_secs(4),
            workload: Workload::Both,
            kube: KubeConfig::default(),
            etcd: EtcdConfig::default(),
            net: NetChoice::Auto,
            routers: 2,
            learners: 0,
            artifacts: None,
            keep_data: false,
            auth: false,
        }
    }

    /// The command that replays this run's choices.
    pub fn command_line(&self) -> String {
        let groups = match self.target {
            Target::Federation { groups } => groups,
            Target::Standalone { .. } => 0,
        };
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        let workload = match self.workload {
            Workload::Kube => "kube",
            Workload::Etcd => "etcd",
            Workload::Both => "both",
        };
        let mut cross = format!(" --cross-unit-txns {}", self.etcd.cross_unit_txns);
        if self.auth {
            cross.push_str(" --auth");
        }
        format!(
            "chaos run --groups {groups} --seconds {} --seed {} --faults '{}' --fault-every {} --workload {workload} \
             --routers {}{cross}",
            self.duration.as_secs(),
            self.seed,
            faults.join(","),
            self.fault_every.as_secs(),
            self.routers
        )
    }

    fn net_mode(&self) -> anyhow::Result<NetMode> {
        let needs = self.faults.iter().any(|f| f.needs_network());
        match self.net {
            NetChoice::Loopback if needs => anyhow::bail!("network faults need --net netns"),
            NetChoice::Loopback => Ok(NetMode::Loopback),
            NetChoice::Netns | NetChoice::Auto if net::available() => Ok(NetMode::Netns),
            NetChoice::Auto if !needs => Ok(NetMode::Loopback),
            _ => anyhow::bail!("network namespaces need root and /dev/net/tun"),
        }
    }
}

/// Runs one chaos run on a runtime of its own; returns its report and the
/// history it checked. With namespaces, every thread of that runtime (and
/// the calling thread, until the run ends) lives in the clients' namespace.
pub fn run(cfg: RunConfig) -> anyhow::Result<(RunReport, History)> {
    let mode = cfg.net_mode()?;
    if cfg.auth && !matches!(cfg.target, Target::Federation { .. }) {
        anyhow::bail!("--auth runs a federation (a standalone group's auth is etcd's own, tested by etcd's e2e tests)");
    }
    let plan = match cfg.target {
        Target::Federation { .. } => Plan::federation(3 + cfg.learners, cfg.routers.max(1), mode),
        Target::Standalone { members } => Plan::standalone(members, mode),
    };
    let skew = match cfg.faults.contains(&FaultKind::Skew) {
        true => {
            let lib = clock::libfaketime().ok_or_else(|| {
                anyhow::anyhow!("skew faults need libfaketime (apt-get install faketime; scripts/chaos-smoke.sh installs it)")
            })?;
            // One process's clock (see clock::Skewable), the seed says which.
            let name = plan.names[Rng::new(cfg.seed ^ 0x5EED).below(plan.names.len() as u64) as usize].clone();
            Some(clock::Skewable { lib, name })
        }
        false => None,
    };
    let network = match mode {
        NetMode::Netns => {
            let mut names = plan.names.clone();
            names.push("client".into());
            Some(Arc::new(net::Network::new(&names)?))
        }
        NetMode::Loopback => None,
    };
    let client_ns = network.as_ref().and_then(|n| Some(n.ns_fd(n.index("client")?)));
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    if let Some(fd) = client_ns {
        net::enter_raw(fd)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            if let Some(fd) = client_ns {
                if let Err(e) = net::enter_raw(fd) {
                    tracing::error!(error = %e, "runtime thread could not enter the clients' namespace");
                }
            }
        })
        .build()?;
    // Ctrl-C drops the run: the system's processes are killed and its data removed.
    let out = rt.block_on(async {
        tokio::select! {
            r = run_on(cfg, plan, mode, network.clone(), skew) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    drop(rt);
    use std::os::fd::AsRawFd;
    net::enter_raw(home.as_raw_fd())?;
    out
}

async fn run_on(
    cfg: RunConfig,
    plan: Plan,
    mode: NetMode,
    network: Option<Arc<net::Network>>,
    skew: Option<clock::Skewable>,
) -> anyhow::Result<(RunReport, History)> {
    let base = cfg.artifacts.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let certs_dir = tempfile::Builder::new().prefix("chaos-certs-").tempdir_in(&base)?;
    let certs = cfg.auth.then(|| auth::Certs::create(certs_dir.path(), &plan.hosts)).transpose()?;
    let cluster = match cfg.target {
        Target::Federation { groups } => {
            Cluster::federation(&plan, groups, cfg.learners, network.clone(), skew, &base, certs.as_ref()).await?
        }
        Target::Standalone { .. } => Cluster::standalone(&plan, network.clone(), skew, &base).await?,
    };
    // A federation's clients spread over its routers. A standalone group's
    // clients share one member (which, the seed says), as an etcd client with
    // one endpoint: etcd answers RequestProgress with the member's own
    // revision, which may trail a write another member acknowledged.
    let endpoints = match cfg.target {
        Target::Federation { .. } => cluster.endpoints.clone(),
        Target::Standalone { .. } => vec![cluster.endpoints[cfg.seed as usize % cluster.endpoints.len()].clone()],
    };
    // The workloads' channels, and the run's own (as root with auth).
    let (channels, own, dialer) = match &certs {
        Some(c) => {
            let (user, root) = (c.user()?, c.root()?);
            let user_ch = endpoints.iter().map(|e| auth::channel(&user, e)).collect::<anyhow::Result<Vec<_>>>()?;
            let root_ch = endpoints.iter().map(|e| auth::channel(&root, e)).collect::<anyhow::Result<Vec<_>>>()?;
            (user_ch, root_ch, root)
        }
        None => {
            let plain = endpoints.iter().map(|e| connect(e)).collect::<anyhow::Result<Vec<_>>>()?;
            (plain.clone(), plain, tessera_rpc::tls::Dialer::plain())
        }
    };
    let mut auth_violations = vec![];
    if certs.is_some() {
        let mut prefixes: Vec<&str> = kube::RESOURCES.to_vec();
        prefixes.push(etcd::PREFIX);
        auth::enable(own[0].clone(), &prefixes, &[kube::COMPACT_KEY]).await?;
        auth_violations.extend(auth::probe(channels[0].clone(), own[0].clone()).await);
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let rec = Recorder::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let kube = matches!(cfg.workload, Workload::Kube | Workload::Both)
        .then(|| tokio::spawn(kube::run(channels.clone(), rec.clone(), cfg.kube.clone(), cfg.seed, stop_rx.clone())));
    let etcd = matches!(cfg.workload, Workload::Etcd | Workload::Both)
        .then(|| tokio::spawn(etcd::run(channels.clone(), rec.clone(), cfg.etcd.clone(), cfg.seed, stop_rx.clone())));
    let clock = {
        let rec = rec.clone();
        move || rec.now()
    };
    let faults =
        tokio::spawn(faults::inject(cluster.clone(), cfg.faults.clone(), cfg.fault_every, Rng::new(cfg.seed), clock, stop_rx));
    tokio::time::sleep(cfg.duration).await;
    let _ = stop_tx.send(true);
    let injected = faults.await?;
    let kube = match kube {
        Some(k) => Some(k.await??),
        None => None,
    };
    let etcd = match etcd {
        Some(e) => Some(e.await??),
        None => None,
    };

    if certs.is_some() {
        auth_violations.extend(auth::probe(channels[channels.len() - 1].clone(), own[0].clone()).await);
    }
    // Healed: read the whole key space back once.
    let final_read = final_read(&own, &rec).await;
    let mut history = rec.take();
    history.final_read = final_read;
    let check = check_all(&history);
    let switch = network.as_ref().map(|n| n.stats());
    let net_text = match mode {
        NetMode::Netns => "netns",
        NetMode::Loopback => "loopback",
    };
    let mut report = RunReport::new(&cfg, net_text, injected, kube, etcd, check, switch);
    report.workload_violations.extend(rec.take_violations().into_iter().map(|v| format!("protocol: {v}")));
    report.workload_violations.extend(auth_violations);
    if matches!(cfg.target, Target::Federation { .. }) {
        let scheme = if certs.is_some() { "https" } else { "http" };
        let urls: Vec<String> = endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
        report.workload_violations.extend(left_in_doubt(&dialer, &urls).await);
    }
    {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        for (i, p) in c.procs.iter().enumerate().filter(|(_, p)| p.clock.is_some()) {
            if let Some(at) = clock::lost_offset(&c.log(i)) {
                report.runner_errors.push(format!(
                    "libfaketime lost {}'s clock offset (its log jumps from 1970 to {at}); its timed waits hang from then \
                     on, so this run's availability and freshness results are the runner's, not Tessera's",
                    p.name
                ));
            }
        }
    }
    if !report.is_ok() {
        // Keep the system's data and logs, with the history and the report, for a look.
        let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = c.keep() {
            if !cfg.keep_data {
                for p in &c.procs {
                    let _ = std::fs::remove_dir_all(kept.join(&p.name));
                }
            }
            let _ = std::fs::write(kept.join("history.json"), history.to_json()?);
            let _ = std::fs::write(kept.join("report.txt"), format!("{report}\n"));
            report.kept = Some(kept.display().to_string());
        }
    }
    Ok((report, history))
}

fn connect(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Cross-group txns a lost coordinator left prepared must be finished by
/// recovery: once the system is healed, every router must soon see no
/// group holding one for long (its `tessera_router_cross_group_txns_in_doubt`).
async fn left_in_doubt(dialer: &tessera_rpc::tls::Dialer, routers: &[String]) -> Option<String> {
    const GAUGE: &str = "tessera_router_cross_group_txns_in_doubt ";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut stuck = vec![];
        for r in routers {
            let body = tessera_rpc::endpoints::http_get_via(dialer, r, "/metrics").await.unwrap_or_default();
            let held = body.lines().find_map(|l| l.strip_prefix(GAUGE)).and_then(|v| v.trim().parse::<f64>().ok());
            if held != Some(0.0) {
                stuck.push(format!("{r}: {}", held.map_or("no answer".into(), |h| format!("{h} groups"))));
            }
        }
        if stuck.is_empty() {
            return None;
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(format!("recovery: cross-group txns still in doubt 30 s after the run ({})", stuck.join(", ")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The whole key space at the latest revision, from the first endpoint that answers.
async fn final_read(channels: &[tonic::transport::Channel], rec: &Recorder) -> Option<FinalRead> {
    let key = Bytes::from(vec![0u8]);
    let range_end = Bytes::from(vec![0u8]);
    for attempt in 0..30 {
        let mut c = client::Client::new(u32::MAX, channels[attempt % channels.len()].clone(), rec.clone());
        let at = rec.now();
        let call = Call::Range { key: key.clone(), range_end: range_end.clone(), revision: 0, limit: 0, serializable: false };
        if let Some(Response::Range { header_rev, kvs, .. }) = c.call(call).await {
            return Some(FinalRead { at, key, range_end, header_rev, kvs });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}
