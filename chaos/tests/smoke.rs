//! One short chaos run against real processes, so `cargo test` (and CI)
//! covers the runner end to end: a standalone group of three shard-nodes
//! under both workloads with a kill, a pause and (where this machine lets
//! the run build network namespaces) a partition and a one-way cut; every
//! checker must pass, and every mutation of the recorded history must be
//! caught by its checker; and a federation of three groups behind two
//! routers under the same faults, once more with etcd's security on (TLS,
//! client-certificate identity, auth enabled) and a move. The other fault kinds are
//! scripts/chaos-smoke.sh's and scripts/chaos-soak.sh's.

use chaos::mutate::Mutation;
use chaos::run::faults::FaultKind;
use chaos::run::{net, prove, run, RunConfig, Target};
use std::time::Duration;

/// Runs `target` for `seconds` under a kill, a pause, a partition and a
/// one-way cut (where network namespaces can be built), with a light load;
/// the run must pass every checker, with faults and load enough to mean
/// it, and each mutation of its history must be caught.
fn passing_run(target: Target, seconds: u64, seed: u64) {
    passing_run_with(RunConfig::new(target, seconds, seed));
}

/// `passing_run` of `cfg`, with its own faults added to the kill, pause, ....
fn passing_run_with(mut cfg: RunConfig) {
    let seed = cfg.seed;
    cfg.faults.extend([FaultKind::Kill, FaultKind::Pause]);
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
    let proofs = prove::prove(&history, &report.check, &Mutation::ALL, seed);
    assert!(proofs.iter().all(|p| p.caught), "{}", prove::render(&proofs));
}

#[test]
fn standalone_group_under_faults_passes_and_mutations_are_caught() {
    passing_run(Target::Standalone { members: 3 }, 12, 7);
}

#[test]
fn federation_under_faults_passes_and_mutations_are_caught() {
    passing_run(Target::Federation { groups: 3 }, 16, 11);
}

/// The same with etcd's security on: routers serve TLS and take the caller
/// from its client certificate, auth is enabled, the workloads run as a
/// user allowed only their keys, and a prefix moves meanwhile; the run's
/// probes (in its report) check that the user is still refused elsewhere.
#[test]
fn federation_with_auth_under_faults_and_a_move_passes() {
    let mut cfg = RunConfig::new(Target::Federation { groups: 3 }, 16, 13);
    cfg.auth = true;
    cfg.faults = vec![FaultKind::Move];
    passing_run_with(cfg);
}
