//! `chaos`: runs workloads against a real federation (or a standalone
//! group) while injecting faults, then checks everything clients saw.
//! Exits non-zero on any violation.
//!
//!     chaos run --seconds 30 --seed 7 --faults kill,pause,isolate,cut,delay
//!     chaos run --seconds 20 --mutate all        # the checkers must catch each corruption
//!     chaos check history.json
//!     chaos table reports/*.json                 # the soak's markdown table

use chaos::run::faults::FaultKind;
use chaos::run::kube::KubeConfig;
use chaos::run::{prove, table, RunConfig, RunReport, Target};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "chaos", about = "Tessera's fault injection and history checkers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a system, run the workloads under faults, check the history.
    Run(RunArgs),
    /// Check a recorded history again.
    Check { history: PathBuf },
    /// The markdown results table of runs' JSON reports (`run --json`).
    Table { reports: Vec<PathBuf> },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Groups of a federation; 0 runs a standalone group of three instead.
    #[arg(long, default_value_t = 3)]
    groups: usize,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Comma-separated: kill, pause, isolate, split, cut, delay, loss, skew, crash, disk, move, multi; or all (empty: none).
    #[arg(long, default_value = "")]
    faults: String,
    /// Seconds between faults.
    #[arg(long, default_value_t = 4)]
    fault_every: u64,
    /// kube, etcd or both.
    #[arg(long, default_value = "both")]
    workload: chaos::run::Workload,
    /// Writers per resource of the Kubernetes load (4 resources).
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Clients of the etcd load.
    #[arg(long, default_value_t = 6)]
    etcd_clients: usize,
    /// Percent of the etcd load's txns that span placement units (so groups).
    #[arg(long, default_value_t = 30)]
    cross_unit_txns: u64,
    /// auto (namespaces when root), loopback (no network faults) or netns.
    #[arg(long, default_value = "auto")]
    net: chaos::run::NetChoice,
    /// Routers of a federation.
    #[arg(long, default_value_t = 2)]
    routers: usize,
    /// Learners per group of a federation.
    #[arg(long, default_value_t = 0)]
    learners: usize,
    /// After the run, corrupt its history with these mutations (all, or
    /// names from chaos::mutate) and fail unless each is caught.
    #[arg(long)]
    mutate: Option<String>,
    /// Where to write the history (JSON) for `chaos check`.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Where the system's data lives and a failing run's is kept (default: the temp dir).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Keep a failing run's data directories too (by default only its logs, history and report).
    #[arg(long)]
    keep_data: bool,
    /// Routers serve TLS with client-certificate auth, auth is enabled, and
    /// the workloads run as a user whose role allows only their keys (a
    /// federation only).
    #[arg(long)]
    auth: bool,
    /// Print the report as JSON (for `chaos table`).
    #[arg(long)]
    json: bool,
}

fn faults(spec: &str) -> anyhow::Result<Vec<FaultKind>> {
    if spec == "all" {
        let mut all: Vec<FaultKind> =
            FaultKind::ALL.into_iter().filter(|k| !k.needs_network() || chaos::run::net::available()).collect();
        if chaos::run::clock::libfaketime().is_none() {
            all.retain(|k| *k != FaultKind::Skew);
        }
        return Ok(all);
    }
    spec.split(',').filter(|f| !f.is_empty()).map(|f| f.parse().map_err(anyhow::Error::msg)).collect()
}

fn run(a: RunArgs) -> anyhow::Result<bool> {
    let target = if a.groups == 0 { Target::Standalone { members: 3 } } else { Target::Federation { groups: a.groups } };
    let mut cfg = RunConfig::new(target, a.seconds, a.seed);
    cfg.faults = faults(&a.faults)?;
    cfg.fault_every = Duration::from_secs(a.fault_every);
    cfg.workload = a.workload;
    cfg.kube = KubeConfig { writers_per_resource: a.writers, ..KubeConfig::default() };
    cfg.etcd.clients = a.etcd_clients;
    cfg.etcd.cross_unit_txns = a.cross_unit_txns;
    cfg.net = a.net;
    cfg.routers = a.routers;
    cfg.learners = a.learners;
    cfg.artifacts = a.artifacts;
    cfg.keep_data = a.keep_data;
    cfg.auth = a.auth;
    let mutations = a.mutate.as_deref().map(prove::parse).transpose().map_err(anyhow::Error::msg)?;
    let (mut report, h) = chaos::run::run(cfg)?;
    if let Some(path) = &a.history {
        std::fs::write(path, h.to_json()?)?;
    }
    let mut ok = report.is_ok();
    let mut proofs = vec![];
    if let Some(ms) = mutations {
        proofs = prove::prove(&h, &report.check, &ms, a.seed);
        ok &= proofs.iter().all(|p| p.caught);
        if !proofs.iter().all(|p| p.caught) && report.kept.is_none() {
            // The history the checkers missed a corruption of is the evidence.
            let path = std::env::temp_dir().join(format!("chaos-mutate-seed{}-{}.json", a.seed, std::process::id()));
            std::fs::write(&path, h.to_json()?)?;
            report.kept = Some(path.display().to_string());
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
        if !proofs.is_empty() {
            print!("{}", prove::render(&proofs));
        }
    }
    if !proofs.is_empty() && a.json {
        eprint!("{}", prove::render(&proofs));
    }
    Ok(ok)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let ok = match Cli::parse().cmd {
        Cmd::Run(a) => run(a)?,
        Cmd::Check { history } => {
            let h = chaos::history::History::from_json(&std::fs::read_to_string(history)?)?;
            let report = chaos::check::check_all(&h);
            println!("{report}");
            report.is_ok()
        }
        Cmd::Table { reports } => {
            let mut all = vec![];
            for p in &reports {
                let text = std::fs::read_to_string(p)?;
                let r: RunReport = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                all.push(r);
            }
            print!("{}", table::render(&all));
            true
        }
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
