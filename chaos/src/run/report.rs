//! What a run found: the checkers' report, the faults, what the workloads
//! measured, and the violations of what Kubernetes relies on that the
//! history checkers do not see (caches, freshness).

use super::etcd::EtcdReport;
use super::faults::Injected;
use super::kube::KubeReport;
use super::net::SwitchStats;
use super::RunConfig;
use crate::check::Report;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub seed: u64,
    /// "federation" or "standalone".
    pub target: String,
    pub net: String,
    pub seconds: u64,
    /// The fault kinds the run drew from.
    pub fault_kinds: Vec<String>,
    pub faults: Vec<Injected>,
    pub kube: Option<KubeReport>,
    pub etcd: Option<EtcdReport>,
    pub check: Report,
    /// Violations of what Kubernetes relies on that the history checkers
    /// do not see (freshness, caches), as text.
    pub workload_violations: Vec<String>,
    pub switch: Option<SwitchStats>,
    /// The runner's own failures (the run is inconclusive, not Tessera's fault).
    #[serde(default)]
    pub runner_errors: Vec<String>,
    /// Where the failing run's data, logs, history and report were kept.
    pub kept: Option<String>,
    /// The command that replays the run's choices.
    pub reproduce: String,
}

impl RunReport {
    pub fn new(
        cfg: &RunConfig,
        net: &str,
        faults: Vec<Injected>,
        kube: Option<KubeReport>,
        etcd: Option<EtcdReport>,
        check: Report,
        switch: Option<SwitchStats>,
    ) -> RunReport {
        let mut v = vec![];
        if let Some(k) = &kube {
            v.extend(k.progress_backwards.iter().map(|p| format!("progress went backwards: {p}")));
            v.extend(k.cache_mismatches.iter().map(|p| format!("watch cache differs from a list: {p}")));
            v.extend(k.stuck_caches.iter().map(|p| format!("watch cache stuck after the faults healed: {p}")));
            // Under faults a group without quorum holds every merged watch
            // back and compaction may pass a broken watch: liveness, not
            // safety. Without faults neither should happen.
            if cfg.faults.is_empty() {
                v.extend(k.compaction_cancels.iter().map(|p| format!("watch cancelled for compaction: {p}")));
                if k.freshness_timeouts > 0 {
                    v.push(format!("{} RequestProgress calls left caches stale for over 3 s", k.freshness_timeouts));
                }
            }
        }
        RunReport {
            seed: cfg.seed,
            target: match cfg.target {
                super::Target::Federation { .. } => "federation".into(),
                super::Target::Standalone { .. } => "standalone".into(),
            },
            net: net.into(),
            seconds: cfg.duration.as_secs(),
            fault_kinds: cfg.faults.iter().map(|f| f.name().to_string()).collect(),
            faults,
            kube,
            etcd,
            check,
            workload_violations: v,
            switch,
            runner_errors: vec![],
            kept: None,
            reproduce: cfg.command_line(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.check.is_ok() && self.workload_violations.is_empty() && self.runner_errors.is_empty()
    }

    pub fn violations(&self) -> usize {
        self.check.violations.len() + self.check.inconclusive.len() + self.workload_violations.len()
    }

    pub fn writes(&self) -> (u64, u64) {
        let k = self.kube.as_ref().map_or((0, 0), |k| (k.writes, k.writes_failed));
        let e = self.etcd.as_ref().map_or((0, 0), |e| (e.writes, e.writes_failed));
        (k.0 + e.0, k.1 + e.1)
    }
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} on a {} ({}), {} s; {} faults:", self.seed, self.target, self.net, self.seconds, self.faults.len())?;
        for i in &self.faults {
            writeln!(f, "  {:>6} ms +{:>4} ms  {}", i.at_ms, i.healed_ms.saturating_sub(i.at_ms), i.what)?;
        }
        if let Some(k) = &self.kube {
            writeln!(
                f,
                "kubernetes load: {} writes ({} failed), {} compactions, {} progress requests, freshness p50 {:.1} ms \
                 p99 {:.1} ms max {:.1} ms, {} over 3 s, {} watch cancels for compaction",
                k.writes,
                k.writes_failed,
                k.compactions,
                k.progress_requests,
                k.percentile(0.5),
                k.percentile(0.99),
                k.percentile(1.0),
                k.freshness_timeouts,
                k.compaction_cancels.len()
            )?;
        }
        if let Some(e) = &self.etcd {
            writeln!(
                f,
                "etcd load: {} ops ({} failed), {} writes ({} failed), {} txns ({} succeeded), leases {} granted {} revoked \
                 {} expired, {} compactions, {} watch streams",
                e.ops,
                e.failed,
                e.writes,
                e.writes_failed,
                e.txns,
                e.txns_succeeded,
                e.leases_granted,
                e.leases_revoked,
                e.leases_expired,
                e.compactions,
                e.watch_streams
            )?;
        }
        if let Some(s) = &self.switch {
            writeln!(
                f,
                "network: {} packets forwarded, {} dropped by partitions, {} lost, {} delayed",
                s.forwarded, s.dropped, s.lost, s.delayed
            )?;
        }
        for v in &self.workload_violations {
            writeln!(f, "  workload: {v}")?;
        }
        for e in &self.runner_errors {
            writeln!(f, "  RUNNER (inconclusive run): {e}")?;
        }
        writeln!(f, "{}", self.check)?;
        if !self.is_ok() {
            writeln!(f, "reproduce: {}", self.reproduce)?;
            if let Some(k) = &self.kept {
                writeln!(f, "kept the system's logs, history.json and report.txt in {k}")?;
            }
        }
        Ok(())
    }
}
