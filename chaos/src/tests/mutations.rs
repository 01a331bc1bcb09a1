use super::scenarios;
use crate::check::check_all;
use crate::mutate::Mutation;
use crate::sim::workload::generate;

/// Every mutation applies to some simulated history and its checker reports it.
#[test]
fn every_mutation_is_caught_by_its_checker() {
    let histories: Vec<_> = scenarios().iter().take(5).map(generate).chain(scenarios().get(7).map(generate)).collect();
    for m in Mutation::ALL {
        let mut applied = 0;
        for h in &histories {
            for seed in [0, 7, 1234] {
                let Ok(mutated) = m.apply(h, seed) else { continue };
                applied += 1;
                let report = check_all(&mutated.history);
                assert!(
                    report.count(m.expected()) > 0,
                    "{} ({}) not caught by the {} checker:\n{report}",
                    m.name(),
                    mutated.description,
                    m.expected()
                );
            }
        }
        assert!(applied >= 3, "{}: applied only {applied} times", m.name());
    }
}

#[test]
fn no_candidate_is_an_error_not_a_panic() {
    let h = crate::history::History::default();
    for m in Mutation::ALL {
        assert!(m.apply(&h, 0).is_err(), "{}", m.name());
    }
}
