//! `--mutate`: proof that the checkers see each corruption on real data.
//! A recorded history (which passed, or whose own violations are set
//! aside) is corrupted by a `Mutation`, checked again, and the mutation's
//! checker must report something it did not report before.

use crate::check::{check_all, Checker, Report};
use crate::history::History;
use crate::mutate::Mutation;
use serde::{Deserialize, Serialize};

/// What one mutation did and whether it was caught.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proof {
    pub mutation: String,
    /// What was corrupted (None: the history offered no place for it).
    pub applied: Option<String>,
    /// The checkers that reported more violations than on the real history.
    pub caught_by: Vec<String>,
    pub expected: String,
    pub caught: bool,
}

/// Parses `all` or a comma-separated list of mutation names.
pub fn parse(spec: &str) -> Result<Vec<Mutation>, String> {
    if spec == "all" {
        return Ok(Mutation::ALL.to_vec());
    }
    spec.split(',')
        .map(|name| {
            Mutation::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mutation {name:?} (all, or some of {})", names.join(", "))
            })
        })
        .collect()
}

/// Applies each of `mutations` to `h` (whose own check is `base`) and checks the result.
pub fn prove(h: &History, base: &Report, mutations: &[Mutation], seed: u64) -> Vec<Proof> {
    mutations
        .iter()
        .map(|&m| {
            // Several places may be tried: some histories offer a mutation few.
            let mutated = (0..4).find_map(|i| m.apply(h, seed.wrapping_add(i * 7919)).ok());
            let Some(mutated) = mutated else {
                return Proof {
                    mutation: m.name().into(),
                    applied: None,
                    caught_by: vec![],
                    expected: m.expected().name().into(),
                    caught: false,
                };
            };
            let report = check_all(&mutated.history);
            let caught_by: Vec<Checker> = Checker::ALL.into_iter().filter(|&c| report.count(c) > base.count(c)).collect();
            Proof {
                mutation: m.name().into(),
                applied: Some(mutated.description),
                caught: caught_by.contains(&m.expected()),
                caught_by: caught_by.iter().map(|c| c.name().to_string()).collect(),
                expected: m.expected().name().into(),
            }
        })
        .collect()
}

/// The proofs as a table; the verdict line says whether every one was caught.
pub fn render(proofs: &[Proof]) -> String {
    let mut out = String::from("mutations (each must be caught by its checker):\n");
    for p in proofs {
        let verdict = match (&p.applied, p.caught) {
            (None, _) => "NOT APPLIED (no place in this history)".to_string(),
            (Some(_), true) => format!("caught by {}", p.caught_by.join(", ")),
            (Some(_), false) if p.caught_by.is_empty() => format!("NOT CAUGHT (expected {})", p.expected),
            (Some(_), false) => format!("NOT CAUGHT by {} (only by {})", p.expected, p.caught_by.join(", ")),
        };
        out.push_str(&format!("  {:<24} {verdict}\n", p.mutation));
        if let Some(a) = &p.applied {
            out.push_str(&format!("  {:<24}   ({a})\n", ""));
        }
    }
    let all = proofs.iter().all(|p| p.caught);
    out.push_str(if all { "every mutation caught\n" } else { "SOME MUTATION NOT CAUGHT\n" });
    out
}
