//! The speed bound of the linearizability search: one partition of ~2,000
//! ops with ~20 unknown outcomes must be decided in seconds (release mode).

use crate::check::{check_all, Checker};
use crate::mutate::Mutation;
use crate::sim::workload::{generate, Scenario};
use std::time::Instant;

fn one_key_history() -> crate::history::History {
    let s = Scenario {
        clients: 8,
        steps: 6100,
        keys: 1,
        unknown_pct: 1,
        watches: false,
        leases: false,
        compaction: false,
        txns: true,
        ..Scenario::new(21)
    };
    generate(&s)
}

#[test]
fn a_two_thousand_op_partition_is_decided_quickly() {
    let h = one_key_history();
    let unknown = h.ops.iter().filter(|o| o.is_unknown()).count();
    assert!(h.ops.len() >= 1900, "{} ops", h.ops.len());
    assert!(unknown >= 10, "{unknown} unknown");
    let start = Instant::now();
    let report = check_all(&h);
    let valid = start.elapsed();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.partitions, 1);

    let stale = Mutation::StaleRead.apply(&h, 3).expect("a stale read candidate");
    let start = Instant::now();
    let report = check_all(&stale.history);
    let invalid = start.elapsed();
    assert!(report.count(Checker::Linearizable) > 0 && report.inconclusive.is_empty(), "{report}");
    eprintln!("one partition, {} ops ({unknown} unknown): valid in {valid:?}, stale read found in {invalid:?}", h.ops.len());
    let bound = if cfg!(debug_assertions) { 120 } else { 10 };
    assert!(valid.as_secs() < bound && invalid.as_secs() < bound, "too slow: {valid:?} / {invalid:?}");
}
