use super::scenarios;
use crate::check::check_all;
use crate::history::{Bytes, History};
use crate::sim::workload::generate;

#[test]
fn simulated_histories_pass() {
    for s in scenarios() {
        let h = generate(&s);
        let unknown = h.ops.iter().filter(|o| o.is_unknown()).count();
        let events: usize = h.watches.iter().flat_map(|w| &w.responses).map(|r| r.events.len()).sum();
        assert!(h.ops.len() > 500, "seed {}: only {} ops", s.seed, h.ops.len());
        assert!(unknown > 0 && events > 0, "seed {}: {unknown} unknown ops, {events} events", s.seed);
        let report = check_all(&h);
        assert!(report.is_ok(), "seed {} ({} ops, {unknown} unknown):\n{report}", s.seed, h.ops.len());
    }
}

#[test]
fn compaction_cancels_a_watch_in_some_scenario() {
    let canceled = scenarios()
        .iter()
        .filter(|s| s.compaction)
        .map(generate)
        .flat_map(|h| h.watches)
        .flat_map(|w| w.responses)
        .any(|r| r.canceled && r.compact_revision > 0);
    assert!(canceled, "no scenario exercises a compaction cancel");
}

#[test]
fn json_round_trip_keeps_the_history_and_verdict() {
    let mut h = generate(&scenarios()[0]);
    h.initial.push((
        Bytes(vec![0xff, 0x00, b'k']),
        crate::history::Kv { value: Bytes(vec![0x80]), mod_rev: 1, create_rev: 1, version: 1, lease: 0 },
    ));
    let text = h.to_json().expect("serialise");
    assert!(text.contains("\"k/0\""), "UTF-8 keys are strings");
    assert!(text.contains("255"), "other bytes are arrays of numbers");
    let back = History::from_json(&text).expect("parse");
    assert_eq!(back, h);
    assert_eq!(crate::check::check_all(&back), crate::check::check_all(&h));
}

#[test]
fn report_prints_a_summary() {
    let h = generate(&scenarios()[1]);
    let text = check_all(&h).to_string();
    assert!(text.contains("linearizable: ok") && text.ends_with("PASS"), "{text}");
}
