//! One short chaos run against real processes, so `cargo test` (and CI)
//! covers the runner end to end: a standalone group of three shard-nodes
//! under both workloads with a kill, a pause and (where this machine lets
//! the run build network namespaces) a partition and a one-way cut; every
//! checker must pass, and every mutation of the recorded history must be
//! caught by its checker. The federation and the other fault kinds are
//! scripts/chaos-smoke.sh's and scripts/chaos-soak.sh's.

use chaos::mutate::Mutation;
use chaos::run::faults::FaultKind;
use chaos::run::{net, prove, run, RunConfig, Target};
use std::time::Duration;

#[test]
fn standalone_group_under_faults_passes_and_mutations_are_caught() {
    let mut cfg = RunConfig::new(Target::Standalone { members: 3 }, 12, 7);
    cfg.faults = vec![FaultKind::Kill, FaultKind::Pause];
    if net::available() {
        cfg.faults.extend([FaultKind::Isolate, FaultKind::Cut]);
    }
    cfg.fault_every = Duration::from_secs(2);
    cfg.kube.writers_per_resource = 2;
    cfg.etcd.clients = 4;
    let (report, history) = run(cfg).expect("the run could not start (build the binaries first: scripts/test.sh does)");
    assert!(report.is_ok(), "{report}");
    assert!(!report.faults.is_empty(), "no fault was injected:\n{report}");
    assert!(report.check.ops > 1000, "too little load:\n{report}");
    let proofs = prove::prove(&history, &report.check, &Mutation::ALL, 7);
    assert!(proofs.iter().all(|p| p.caught), "{}", prove::render(&proofs));
}
