//! `tessera dev`: a whole federation on this machine — placement's store (a
//! standalone shard-node group of three: it also serves the revision
//! oracle every write depends on), placement, the shard-nodes hosting
//! `groups` × (`replicas` voters + `learners` learners), and a router on
//! 127.0.0.1:<client-port>. Data lives under --data-dir, so running the same
//! command again resumes it.
//!
//! Ports from the client port P: router P; placement's store members
//! P+10000/P+10001, P+10003/P+10004, P+10005/P+10006 (client/peer);
//! placement's admin API P+10002; node i P+10000+10·i (client) and +1 (peer). `--client-port 0` picks free ports
//! instead. Either way the plan is written to `<data-dir>/endpoints.json`
//! (the CLI finds placement there) and reused when the data is resumed, as
//! the groups remember their members' addresses.
//!
//! Every process it starts dies with it, however it dies: each child asks
//! the kernel for SIGTERM when its parent goes (PR_SET_PDEATHSIG).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Raft groups to create (on the first run).
    #[arg(long, default_value_t = 3)]
    pub groups: usize,
    /// Voters per group.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Learners per group.
    #[arg(long, default_value_t = 1)]
    pub learners: usize,
    /// Where every process keeps its data and logs.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The router's port (etcd clients connect here); 0 picks free ports for everything.
    #[arg(long, default_value_t = 2379)]
    pub client_port: u16,
    /// Loopback address every process listens on (tests use 127.x.y.z).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Members of placement's store (1 or 3; with 3 it survives one down).
    #[arg(long, default_value_t = 3)]
    pub store_members: usize,
    /// Seconds between placement's rebalancing rounds (0: off). Thresholds
    /// are small here: a group past 20% above the mean once the fullest
    /// holds 16 MiB, or the busiest takes 200 writes/s.
    #[arg(long, default_value_t = 30)]
    pub rebalance_every: u64,
    /// TLS everywhere (on the first run): a CA and certificates under
    /// <data-dir>/tls, https:// URLs, client certificates required on every
    /// port; clients use tls/ca.pem, tls/client.pem, tls/client-key.pem.
    #[arg(long)]
    pub tls: bool,
}

pub const DEFAULT_DATA_DIR: &str = ".tessera-dev";

/// Where `tessera dev` records the endpoints of the last federation it started.
fn last_started() -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("tessera").join("dev-endpoints.json"))
}

/// Where each process of a dev federation listens (`endpoints.json`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The router: etcd clients connect here.
    pub router: String,
    /// Placement's admin API (the `tessera` CLI).
    pub placement: String,
    /// Placement's store members (client URL, peer URL).
    pub store: Vec<(String, String)>,
    /// Shard-nodes: (client URL, peer URL) each.
    pub nodes: Vec<(String, String)>,
    /// With --tls: what a client shows and trusts (the CLI uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tessera_rpc::flags::DialTlsArgs>,
}

impl Endpoints {
    /// The plan `tessera dev` wrote under `data_dir`, if any.
    pub fn load(data_dir: &Path) -> Option<Endpoints> {
        serde_json::from_slice(&std::fs::read(data_dir.join("endpoints.json")).ok()?).ok()
    }

    fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        std::fs::write(data_dir.join("endpoints.json"), serde_json::to_vec_pretty(self)?)?;
        // The last one started on this machine, for a CLI run elsewhere.
        if let Some(last) = last_started() {
            let _ = std::fs::create_dir_all(last.parent().unwrap_or(Path::new("/")));
            let _ = std::fs::write(last, serde_json::to_vec_pretty(self)?);
        }
        Ok(())
    }

    /// The dev federation the CLI talks to: the one started from this
    /// directory (`.tessera-dev`), else the last one started on this machine.
    pub fn find() -> Option<Endpoints> {
        Endpoints::load(Path::new(DEFAULT_DATA_DIR))
            .or_else(|| serde_json::from_slice(&std::fs::read(last_started()?).ok()?).ok())
    }

    /// The store's client URLs, as nodes and routers take them.
    pub fn store_urls(&self) -> String {
        self.store.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The fixed plan from client port `p`.
    fn from_port(h: &str, p: u16, nodes: usize, store: usize) -> anyhow::Result<Endpoints> {
        let port = |off: u32| -> anyhow::Result<String> {
            let n = u16::try_from(p as u32 + off).context("--client-port too high for the port plan (needs P+10000+10·nodes)")?;
            Ok(format!("http://{h}:{n}"))
        };
        Ok(Endpoints {
            router: port(0)?,
            store: [(10000, 10001), (10003, 10004), (10005, 10006)]
                .into_iter()
                .take(store)
                .map(|(c, p)| Ok((port(c)?, port(p)?)))
                .collect::<anyhow::Result<_>>()?,
            placement: port(10002)?,
            nodes: (1..=nodes as u32)
                .map(|i| Ok((port(10000 + 10 * i)?, port(10001 + 10 * i)?)))
                .collect::<anyhow::Result<_>>()?,
            tls: None,
        })
    }

    /// Free ports on `h`, picked by the kernel.
    fn free(h: &str, nodes: usize, store: usize) -> anyhow::Result<Endpoints> {
        // Hold every listener until all are picked, so none is picked twice:
        // router, placement, and each store member's and node's two.
        let held: Vec<std::net::TcpListener> =
            (0..2 + 2 * (store + nodes)).map(|_| std::net::TcpListener::bind((h, 0))).collect::<Result<_, _>>()?;
        let mut urls = held.iter().map(|l| l.local_addr().map(|a| format!("http://{h}:{}", a.port())));
        let mut next = || urls.next().context("a listener per port")?.map_err(anyhow::Error::from);
        Ok(Endpoints {
            router: next()?,
            store: (0..store).map(|_| Ok((next()?, next()?))).collect::<anyhow::Result<_>>()?,
            placement: next()?,
            nodes: (0..nodes).map(|_| Ok((next()?, next()?))).collect::<anyhow::Result<_>>()?,
            tls: None,
        })
    }

    /// Every URL https://, a CA and certificates under `dir`: one for the
    /// servers (every process, also as their client identity to each
    /// other) and one for clients (CN "root").
    fn secured(mut self, dir: &Path, host: &str) -> anyhow::Result<Endpoints> {
        let https = |u: &mut String| *u = u.replacen("http://", "https://", 1);
        https(&mut self.router);
        https(&mut self.placement);
        for (c, p) in self.store.iter_mut().chain(self.nodes.iter_mut()) {
            https(c);
            https(p);
        }
        let ca = tessera_rpc::tls::DevCa::create(dir)?;
        ca.issue("server", &[host.to_string(), "localhost".to_string()])?;
        let client = ca.issue("root", &[])?;
        self.tls = Some(tessera_rpc::flags::DialTlsArgs {
            cacert: ca.ca_file.display().to_string(),
            cert: client.cert_file.display().to_string(),
            key: client.key_file.display().to_string(),
            insecure_skip_tls_verify: false,
        });
        Ok(self)
    }

    /// The flags a process of this federation serves and dials with.
    fn process_tls(&self) -> Option<ProcessTls> {
        let t = self.tls.as_ref()?;
        let dir = Path::new(&t.cacert).parent()?;
        let (cert, key) = (dir.join("server.pem").display().to_string(), dir.join("server-key.pem").display().to_string());
        Some(ProcessTls { ca: t.cacert.clone(), cert, key })
    }

    /// How `tessera dev` itself reaches the processes.
    fn dialer(&self) -> anyhow::Result<tessera_rpc::tls::Dialer> {
        Ok(self.tls.clone().unwrap_or_default().dialer()?)
    }
    fn all(&self) -> Vec<(String, &str)> {
        let mut v = vec![("router".to_string(), self.router.as_str()), ("placement".to_string(), self.placement.as_str())];
        for (i, (c, p)) in self.store.iter().enumerate() {
            v.push((format!("placement's store member {}", i + 1), c.as_str()));
            v.push((format!("placement's store member {} (peer)", i + 1), p.as_str()));
        }
        for (i, (c, p)) in self.nodes.iter().enumerate() {
            v.push((format!("node n{}", i + 1), c.as_str()));
            v.push((format!("node n{} (peer)", i + 1), p.as_str()));
        }
        v
    }

    /// Refuses to start anything if a port of the plan is taken.
    fn check_free(&self) -> anyhow::Result<()> {
        for (who, url) in self.all() {
            let addr = tessera_rpc::flags::socket_addr(url)?;
            if let Err(e) = std::net::TcpListener::bind(addr) {
                bail!(
                    "port {} for {who} is not available ({e}); stop what uses it, or pick other ports with \
                     --client-port (0 picks free ones)",
                    addr.port()
                );
            }
        }
        Ok(())
    }
}

struct ProcessTls {
    ca: String,
    cert: String,
    key: String,
}

impl ProcessTls {
    /// Serving clients, certificates required.
    fn serving(&self) -> Vec<String> {
        let (ca, cert, key) = (&self.ca, &self.cert, &self.key);
        vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth".into(),
        ]
    }

    /// A shard-node's: client and peer ports, certificates required on both.
    fn node(&self) -> Vec<String> {
        let (ca, cert, key) = (&self.ca, &self.cert, &self.key);
        let mut flags = self.serving();
        flags.extend([
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ]);
        flags
    }

    /// Placement's and the router's: serving, and dialing the others.
    fn frontend(&self) -> Vec<String> {
        let (ca, cert, key) = (&self.ca, &self.cert, &self.key);
        let mut flags = self.serving();
        flags.extend([format!("--cacert={ca}"), format!("--cert={cert}"), format!("--key={key}")]);
        flags
    }
}

struct Proc {
    name: String,
    child: Child,
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("no binary dir")?.join(name);
    if !p.exists() {
        bail!("{} not found next to tessera (build the workspace: cargo build)", p.display());
    }
    Ok(p)
}

fn spawn(name: &str, binary: &str, args: Vec<String>, logs: &Path) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let mut cmd = Command::new(bin(binary)?);
    cmd.args(&args).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log)).kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The child gets SIGTERM (a clean stop) when tessera dev dies,
            // even by SIGKILL, so no process outlives it holding ports.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    Ok(Proc { name: name.into(), child })
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, procs: &mut [Proc], mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("{} exited ({status}) while waiting for {what}; see its log", p.name);
            }
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_args(name: &str, dir: &Path, (client, peer): &(String, String)) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", dir.join(name).display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
    ]
}

pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&a.data_dir)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let nodes = a.replicas + a.learners;
    let ep = match Endpoints::load(&dir) {
        // Resuming: the groups know their members by these addresses.
        Some(ep) => ep,
        None if !matches!(a.store_members, 1 | 3) => bail!("--store-members must be 1 or 3"),
        None if a.client_port == 0 => Endpoints::free(&a.host, nodes, a.store_members)?,
        None => Endpoints::from_port(&a.host, a.client_port, nodes, a.store_members)?,
    };
    let ep = if a.tls && ep.tls.is_none() {
        if Endpoints::load(&dir).is_some() {
            bail!("--tls is chosen on the first run; {} holds a federation without it", dir.display());
        }
        ep.secured(&dir.join("tls"), &a.host)?
    } else {
        ep
    };
    let tls = ep.process_tls();
    let dialer = ep.dialer()?;
    ep.check_free()?;
    ep.save(&dir)?;

    let store_cluster: Vec<String> =
        ep.store.iter().enumerate().map(|(i, (_, peer))| format!("placement-store-{}={peer}", i + 1)).collect();
    let mut procs = vec![];
    for (i, member) in ep.store.iter().enumerate() {
        let name = format!("placement-store-{}", i + 1);
        let mut args = node_args(&name, &dir, member);
        args.push(format!("--initial-cluster={}", store_cluster.join(",")));
        args.push("--revision-oracle".into());
        args.extend(tls.iter().flat_map(ProcessTls::node));
        procs.push(spawn(&name, "shard-node", args, &logs)?);
    }
    procs.push(spawn(
        "placement",
        "placement",
        vec![
            format!("--listen-client-urls={}", ep.placement),
            format!("--store-endpoints={}", ep.store_urls()),
            format!("--rebalance-every={}", a.rebalance_every),
            format!("--rebalance-min-bytes={}", 16 << 20),
            "--rebalance-min-writes=200".to_string(),
        ]
        .into_iter()
        .chain(tls.iter().flat_map(ProcessTls::frontend))
        .collect(),
        &logs,
    )?);
    for (i, n) in ep.nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let mut args = node_args(&name, &dir, n);
        args.push(format!("--placement-endpoints={}", ep.store_urls()));
        args.extend(tls.iter().flat_map(ProcessTls::node));
        procs.push(spawn(&name, "shard-node", args, &logs)?);
    }
    let admin = placement::PlacementClient::new(ep.placement.clone()).with_dialer(dialer.clone());
    let result = async {
        wait_until("nodes to register with placement", Duration::from_secs(60), &mut procs, || async {
            admin.map().await.is_ok_and(|m| m.nodes.len() >= ep.nodes.len())
        })
        .await?;
        let init = placement::api::InitRequest { groups: a.groups, replicas: a.replicas, learners: a.learners };
        admin.init(&init).await?;
        wait_until("every group to elect a leader", Duration::from_secs(60), &mut procs, || async {
            for (client, _) in &ep.nodes {
                if !tessera_rpc::endpoints::probe_health_via(&dialer, client).await {
                    return false;
                }
            }
            true
        })
        .await?;
        procs.push(spawn(
            "router",
            "router",
            [format!("--listen-client-urls={}", ep.router), format!("--placement-endpoints={}", ep.store_urls())]
                .into_iter()
                .chain(tls.iter().flat_map(ProcessTls::frontend))
                .collect(),
            &logs,
        )?);
        wait_until("the router", Duration::from_secs(30), &mut procs, || {
            tessera_rpc::endpoints::probe_health_via(&dialer, &ep.router)
        })
        .await?;
        let map = admin.map().await?;
        let router = ep.router.trim_start_matches("http://");
        println!("tessera dev: federation ready");
        println!("  etcd endpoint (router): {router}");
        println!("  placement (admin API):  {}", ep.placement);
        println!("  placement's store:      {}", ep.store_urls());
        for (i, (u, _)) in ep.nodes.iter().enumerate() {
            println!("  node n{}:                {u}", i + 1);
        }
        println!("  groups: {:?} ({} voters + {} learners each)", map.groups.keys().collect::<Vec<_>>(), a.replicas, a.learners);
        println!("  data and logs: {}", dir.display());
        match &ep.tls {
            None => println!(
                "try: ETCDCTL_API=3 etcdctl --endpoints {router} put foo bar;  tessera status --placement {}",
                ep.placement
            ),
            Some(t) => println!(
                "try: ETCDCTL_API=3 etcdctl --endpoints {router} --cacert {} --cert {} --key {} put foo bar;  tessera status",
                t.cacert, t.cert, t.key
            ),
        }
        println!("Ctrl-C stops everything; the same command resumes it.");
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        stop(&mut procs).await;
        return Err(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A process that dies is reported, not replaced: the rest keep
    // serving (that is the point of replication); restart it by hand or
    // rerun the command.
    let watch_exits = async {
        let mut reported = std::collections::BTreeSet::new();
        loop {
            for p in procs.iter_mut() {
                if let Ok(Some(s)) = p.child.try_wait() {
                    if reported.insert(p.name.clone()) {
                        println!("tessera dev: {} exited ({s}); the others keep running", p.name);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
        _ = watch_exits => unreachable!(),
    };
    println!("tessera dev: {why}; stopping");
    stop(&mut procs).await;
    println!("tessera dev: stopped");
    Ok(())
}

/// Router first, placement's store last; each gets SIGTERM (clean
/// hand-off) and a few seconds before SIGKILL.
async fn stop(procs: &mut [Proc]) {
    for p in procs.iter_mut().rev() {
        if let Some(pid) = p.child.id() {
            // SAFETY: signalling a child we started and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    for p in procs.iter_mut().rev() {
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.is_err() {
            let _ = p.child.kill().await;
        }
    }
}
