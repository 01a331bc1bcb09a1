//! `chaos table`: the soak's results as markdown, from the JSON reports of
//! its runs (`chaos run --json`): per target, per fault kind, and every
//! failing run with the command that replays it.

use super::RunReport;
use std::collections::BTreeMap;

#[derive(Default)]
struct Row {
    runs: usize,
    failed: usize,
    faults: usize,
    ops: usize,
    violations: usize,
    writes: u64,
    writes_failed: u64,
    freshness: Vec<f64>,
}

impl Row {
    fn add(&mut self, r: &RunReport) {
        self.runs += 1;
        self.failed += usize::from(!r.is_ok());
        self.faults += r.faults.len();
        self.ops += r.check.ops;
        self.violations += r.violations();
        let (w, f) = r.writes();
        self.writes += w;
        self.writes_failed += f;
        if let Some(k) = &r.kube {
            self.freshness.extend(&k.freshness_ms);
        }
    }

    fn p99(&self) -> String {
        if self.freshness.is_empty() {
            return "–".into();
        }
        let mut v = self.freshness.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        format!("{:.0} ms", v[((v.len() - 1) as f64 * 0.99).round() as usize])
    }
}

/// Renders the reports as markdown.
pub fn render(reports: &[RunReport]) -> String {
    let mut by_target: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = Row::default();
    // Per kind: faults injected (a multi fault counts once as multi), runs drawing on it, and their violations.
    let mut by_kind: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for r in reports {
        by_target.entry(r.target.clone()).or_default().add(r);
        total.add(r);
        for k in &r.fault_kinds {
            let e = by_kind.entry(k.clone()).or_default();
            e.1 += 1;
            e.2 += r.violations();
        }
        for f in &r.faults {
            by_kind.entry(f.kind.name().to_string()).or_default().0 += 1;
        }
    }
    let mut out = String::new();
    out.push_str("| target | runs | failed runs | faults | ops checked | violations | writes (failed) | freshness p99 |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let rows = by_target.iter().map(|(t, r)| (t.as_str(), r)).chain([("**all**", &total)]);
    for (t, r) in rows {
        out.push_str(&format!(
            "| {t} | {} | {} | {} | {} | {} | {} ({}) | {} |\n",
            r.runs,
            r.failed,
            r.faults,
            r.ops,
            r.violations,
            r.writes,
            r.writes_failed,
            r.p99()
        ));
    }
    out.push_str("\n| fault kind | injected | runs | violations in those runs |\n|---|---:|---:|---:|\n");
    for (k, (injected, runs, violations)) in &by_kind {
        out.push_str(&format!("| {k} | {injected} | {runs} | {violations} |\n"));
    }
    let failing: Vec<&RunReport> = reports.iter().filter(|r| !r.is_ok()).collect();
    if !failing.is_empty() {
        out.push_str("\nFailing runs:\n\n");
        for r in failing {
            let first = r
                .check
                .violations
                .first()
                .map(|v| v.to_string())
                .or_else(|| r.workload_violations.first().cloned())
                .or_else(|| r.check.inconclusive.first().map(|i| format!("inconclusive: {}", i.detail)))
                .or_else(|| r.runner_errors.first().map(|e| format!("runner: {e}")))
                .unwrap_or_default();
            let first: String = first.chars().take(400).collect();
            out.push_str(&format!(
                "- seed {} on a {} ({}): {} violation(s); first: {first}\n",
                r.seed,
                r.target,
                r.fault_kinds.join(","),
                r.violations()
            ));
            out.push_str(&format!("  - reproduce: `{}`\n", r.reproduce));
            if let Some(k) = &r.kept {
                out.push_str(&format!("  - kept: {k}\n"));
            }
        }
    }
    out
}
