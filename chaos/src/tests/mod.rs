//! Tests of the checkers: valid simulated histories pass, each mutation is
//! caught by its checker, hand-made histories exercise each guarantee, and
//! the linearizability search meets its speed bound.

mod checkers;
mod mutations;
mod perf;
mod stress;
mod valid;

use crate::sim::workload::Scenario;

/// Simulated workloads of several shapes and seeds.
pub(crate) fn scenarios() -> Vec<Scenario> {
    let mut out = Vec::new();
    for seed in 1..=6 {
        out.push(Scenario::new(seed));
    }
    out.push(Scenario { clients: 10, unknown_pct: 8, ..Scenario::new(11) });
    out.push(Scenario { compaction: true, ..Scenario::new(12) });
    out.push(Scenario { compaction: true, clients: 3, ..Scenario::new(13) });
    out.push(Scenario { keys: 2, clients: 8, ..Scenario::new(14) });
    out.push(Scenario { preload: true, ..Scenario::new(15) });
    out.push(Scenario { preload: true, compaction: true, keys: 3, ..Scenario::new(16) });
    out
}
