//! Wider sweeps: many workload shapes must pass and every applicable
//! mutation must be caught; the search must stay fast as concurrency and
//! unknown outcomes grow.

use crate::check::{check_all, linearizable, Checker};
use crate::mutate::Mutation;
use crate::sim::workload::{generate, Scenario};
use std::time::Instant;

#[test]
fn sixty_workload_shapes_pass_and_their_mutations_are_caught() {
    for seed in 100..160u64 {
        let s = Scenario {
            clients: 2 + (seed % 13) as u32,
            unknown_pct: seed % 15,
            keys: 1 + seed % 7,
            compaction: seed % 3 == 0,
            preload: seed % 4 == 1,
            steps: 2500,
            ..Scenario::new(seed)
        };
        let h = generate(&s);
        let r = check_all(&h);
        assert!(r.is_ok(), "{s:?}\n{r}");
        let mut caught = 0;
        for m in Mutation::ALL {
            let Ok(mutated) = m.apply(&h, seed) else { continue };
            let r = check_all(&mutated.history);
            assert!(r.count(m.expected()) > 0, "{s:?}: {} ({}) not caught:\n{r}", m.name(), mutated.description);
            caught += 1;
        }
        assert!(caught >= 5, "{s:?}: only {caught} mutations applied");
    }
}

#[test]
fn search_stays_fast_with_many_clients_and_unknowns() {
    for (clients, unknown_pct, steps) in [(20, 1, 6100), (50, 1, 6100), (20, 3, 6100), (50, 5, 12000), (100, 2, 12000)] {
        let s = Scenario {
            clients,
            steps,
            keys: 1,
            unknown_pct,
            watches: false,
            leases: false,
            compaction: false,
            ..Scenario::new(5)
        };
        let h = generate(&s);
        let unknown = h.ops.iter().filter(|o| o.is_unknown()).count();
        let start = Instant::now();
        let valid = linearizable::check(&h);
        let valid_time = start.elapsed();
        assert!(valid.violations.is_empty() && valid.inconclusive.is_empty(), "{clients} clients: {:?}", valid.inconclusive);
        let stale = Mutation::StaleRead.apply(&h, 1).expect("a stale read candidate");
        let start = Instant::now();
        let found = check_all(&stale.history);
        let stale_time = start.elapsed();
        assert!(found.count(Checker::Linearizable) > 0 && found.inconclusive.is_empty(), "{found}");
        eprintln!("{clients} clients, {} ops, {unknown} unknown: valid {valid_time:?}, stale read {stale_time:?}", h.ops.len());
    }
}
