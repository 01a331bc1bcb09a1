//! `tessera dev`: a whole federation on this machine — placement, the
//! shard-nodes hosting `groups` × (`replicas` voters + `learners`
//! learners), and a router on 127.0.0.1:<client-port>. Data lives under
//! --data-dir, so running the same command again resumes it.
//!
//! Ports from the client port P: router P; placement P+10000 (client) and
//! P+10001 (peer); node i P+10000+10·i (client) and +1 (peer).

use anyhow::{bail, Context};
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
    #[arg(long, default_value = ".tessera-dev")]
    pub data_dir: PathBuf,
    /// The router's port on 127.0.0.1 (etcd clients connect here).
    #[arg(long, default_value_t = 2379)]
    pub client_port: u16,
    /// Loopback address every process listens on (tests use 127.x.y.z).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
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
    let child = Command::new(bin(binary)?)
        .args(&args)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
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

async fn http_ok(url: &str) -> bool {
    crate::http::call(url, "GET", "/health", None).await.is_ok_and(|v| v.get("health").and_then(|h| h.as_str()) == Some("true"))
}

pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&a.data_dir)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let h = a.host.as_str();
    let p = a.client_port as u32;
    let port = |off: u32| -> anyhow::Result<u16> {
        u16::try_from(p + off).context("--client-port too high for the port plan (needs P+10000+10·nodes)")
    };
    let placement_url = format!("http://{h}:{}", port(10000)?);
    let placement_peer = format!("http://{h}:{}", port(10001)?);
    let mut procs = vec![spawn(
        "placement",
        "placement",
        vec![
            "--name=placement".into(),
            format!("--data-dir={}", dir.join("placement").display()),
            format!("--listen-client-urls={placement_url}"),
            format!("--advertise-client-urls={placement_url}"),
            format!("--listen-peer-urls={placement_peer}"),
            format!("--initial-advertise-peer-urls={placement_peer}"),
            format!("--initial-cluster=placement={placement_peer}"),
        ],
        &logs,
    )?];
    let nodes = a.replicas + a.learners;
    let mut node_urls = vec![];
    for i in 1..=nodes as u32 {
        let client = format!("http://{h}:{}", port(10000 + 10 * i)?);
        let peer = format!("http://{h}:{}", port(10001 + 10 * i)?);
        node_urls.push(client.clone());
        procs.push(spawn(
            &format!("n{i}"),
            "shard-node",
            vec![
                format!("--name=n{i}"),
                format!("--data-dir={}", dir.join(format!("n{i}")).display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--placement-endpoints={placement_url}"),
            ],
            &logs,
        )?);
    }
    let result = async {
        wait_until("nodes to register with placement", Duration::from_secs(60), &mut procs, || async {
            shardmap::watcher::fetch(&placement_url).await.is_ok_and(|(m, _)| m.nodes.len() >= nodes)
        })
        .await?;
        let body = serde_json::json!({ "groups": a.groups, "replicas": a.replicas, "learners": a.learners });
        crate::http::call(&placement_url, "POST", "/tessera/v1/init", Some(body)).await?;
        wait_until("every group to elect a leader", Duration::from_secs(60), &mut procs, || {
            let urls = node_urls.clone();
            async move {
                for u in &urls {
                    if !http_ok(u).await {
                        return false;
                    }
                }
                true
            }
        })
        .await?;
        let router_url = format!("http://{h}:{}", a.client_port);
        procs.push(spawn(
            "router",
            "router",
            vec![format!("--listen-client-urls={router_url}"), format!("--placement-endpoints={placement_url}")],
            &logs,
        )?);
        wait_until("the router", Duration::from_secs(30), &mut procs, || http_ok(&router_url)).await?;
        let map = shardmap::watcher::fetch(&placement_url).await?.0;
        println!("tessera dev: federation ready");
        println!("  etcd endpoint (router): {h}:{}", a.client_port);
        println!("  placement:              {placement_url}");
        for (i, u) in node_urls.iter().enumerate() {
            println!("  node n{}:                {u}", i + 1);
        }
        println!("  groups: {:?} ({} voters + {} learners each)", map.groups.keys().collect::<Vec<_>>(), a.replicas, a.learners);
        println!("  data and logs: {}", dir.display());
        println!(
            "try: ETCDCTL_API=3 etcdctl --endpoints {h}:{} put foo bar;  tessera status --placement {placement_url}",
            a.client_port
        );
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
        _ = tokio::signal::ctrl_c() => "interrupted".to_string(),
        _ = term.recv() => "terminated".to_string(),
        _ = watch_exits => unreachable!(),
    };
    println!("tessera dev: {why}; stopping");
    stop(&mut procs).await;
    println!("tessera dev: stopped");
    Ok(())
}

/// Router first, placement last; each gets SIGTERM (clean hand-off) and a
/// few seconds before SIGKILL.
async fn stop(procs: &mut [Proc]) {
    for p in procs.iter_mut().rev() {
        if let Some(pid) = p.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
    }
    for p in procs.iter_mut().rev() {
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.is_err() {
            let _ = p.child.kill().await;
        }
    }
}
