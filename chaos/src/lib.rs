//! Fault injection against a real Tessera federation (or a standalone
//! group) and the checkers that judge what clients saw: a recorded history
//! of operations (`history`), checkers over it (`check`) and corruptions of
//! valid histories that the checkers must catch (`mutate`), and the runner
//! that starts a system, drives a workload under faults and records the
//! history (`run`, binary `chaos`).

pub mod check;
pub mod history;
pub mod mutate;
pub mod run;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
