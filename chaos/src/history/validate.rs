//! Structural checks of a recorded history, its JSON form, and short
//! descriptions of ops for reports.

use super::{Call, History, Outcome, Response, TxnOp, TxnResult};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("op #{op}: {reason}")]
    Op { op: usize, reason: String },
    #[error("watch stream #{stream}: {reason}")]
    Stream { stream: usize, reason: String },
    #[error("history JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl History {
    pub fn to_json(&self) -> Result<String, HistoryError> {
        Ok(serde_json::to_string_pretty(self)?)
    }
    pub fn from_json(text: &str) -> Result<History, HistoryError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Structural mistakes of the recording (not of the server): times out of
    /// order, a response of another kind than its call, txn results that do
    /// not match the branch, watch responses for watches never created.
    pub fn validate(&self) -> Vec<HistoryError> {
        let mut errors = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            let mut bad = |reason: String| errors.push(HistoryError::Op { op: i, reason });
            if let Some(c) = op.complete {
                if c < op.invoke {
                    bad(format!("completed at {c} before its invoke at {}", op.invoke));
                }
            } else if !matches!(op.outcome, Outcome::Unknown(_)) {
                bad("no completion time but a definite outcome".into());
            }
            if let Outcome::Ok(r) = &op.outcome {
                if let Some(reason) = response_mismatch(&op.call, r) {
                    bad(reason);
                }
            }
        }
        for (s, stream) in self.watches.iter().enumerate() {
            let mut last = 0;
            for (j, r) in stream.responses.iter().enumerate() {
                let reason = if r.at < last {
                    Some(format!("response {j} received at {} before the previous one at {last}", r.at))
                } else if r.watch_id != -1 && !stream.watches.iter().any(|w| w.watch_id == r.watch_id) {
                    Some(format!("response {j} for watch id {} which was never created", r.watch_id))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    errors.push(HistoryError::Stream { stream: s, reason });
                }
                last = last.max(r.at);
            }
        }
        errors
    }
}

fn response_mismatch(call: &Call, r: &Response) -> Option<String> {
    let kinds_match = matches!(
        (call, r),
        (Call::Get { .. }, Response::Get { .. })
            | (Call::Range { .. }, Response::Range { .. })
            | (Call::Put { .. }, Response::Put { .. })
            | (Call::Delete { .. }, Response::Delete { .. })
            | (Call::Txn { .. }, Response::Txn { .. })
            | (Call::LeaseGrant { .. }, Response::LeaseGrant { .. })
            | (Call::LeaseRevoke { .. }, Response::LeaseRevoke { .. })
            | (Call::LeaseKeepAlive { .. }, Response::LeaseKeepAlive { .. })
            | (Call::LeaseTimeToLive { .. }, Response::LeaseTimeToLive { .. })
            | (Call::Compact { .. }, Response::Compact { .. })
    );
    if !kinds_match {
        return Some("the response is of another kind than the call".into());
    }
    if let (Call::Txn { success, failure, .. }, Response::Txn { succeeded, results, .. }) = (call, r) {
        let branch = if *succeeded { success } else { failure };
        if branch.len() != results.len() {
            return Some(format!("txn branch has {} requests but {} results", branch.len(), results.len()));
        }
        let fits = branch.iter().zip(results).all(|(o, r)| {
            matches!(
                (o, r),
                (TxnOp::Get { .. }, TxnResult::Get { .. })
                    | (TxnOp::Put { .. }, TxnResult::Put)
                    | (TxnOp::Delete { .. }, TxnResult::Delete { .. })
            )
        });
        if !fits {
            return Some("txn results do not match the requests of the executed branch".into());
        }
    }
    None
}

/// A short human description of an op: `#12 c3 put "k"="v" → rev 17 [100..250]`.
pub fn describe(h: &History, i: usize) -> String {
    let Some(op) = h.ops.get(i) else {
        return format!("#{i} (no such op)");
    };
    let call = match &op.call {
        Call::Get { key, revision, .. } if *revision > 0 => format!("get {key}@{revision}"),
        Call::Get { key, .. } => format!("get {key}"),
        Call::Range { key, range_end, revision, .. } => format!("range [{key}, {range_end})@{revision}"),
        Call::Put { key, value, lease: 0, .. } => format!("put {key}={value}"),
        Call::Put { key, value, lease, .. } => format!("put {key}={value} lease {lease:x}"),
        Call::Delete { key, range_end } if range_end.is_empty() => format!("delete {key}"),
        Call::Delete { key, range_end } => format!("delete [{key}, {range_end})"),
        Call::Txn { compares, success, failure } => {
            let keys: Vec<String> = op.named_keys().iter().map(|k| k.to_string()).collect();
            format!("txn on {} ({} compares, {}/{} ops)", keys.join(","), compares.len(), success.len(), failure.len())
        }
        Call::LeaseGrant { ttl, .. } => format!("lease grant ttl {ttl}"),
        Call::LeaseRevoke { id } => format!("lease revoke {id:x}"),
        Call::LeaseKeepAlive { id } => format!("lease keepalive {id:x}"),
        Call::LeaseTimeToLive { id } => format!("lease ttl {id:x}"),
        Call::Compact { revision } => format!("compact {revision}"),
    };
    let result = match &op.outcome {
        Outcome::Error(e) => format!("error {e:?}"),
        Outcome::Unknown(_) => "unknown".to_string(),
        Outcome::Ok(r) => match r {
            Response::Get { header_rev, kv: Some(kv) } => {
                format!("{}@{} v{} (header {header_rev})", kv.value, kv.mod_rev, kv.version)
            }
            Response::Get { header_rev, kv: None } => format!("none (header {header_rev})"),
            Response::Range { header_rev, kvs, .. } => format!("{} keys (header {header_rev})", kvs.len()),
            Response::Put { header_rev, .. } => format!("rev {header_rev}"),
            Response::Delete { header_rev, deleted } => format!("deleted {deleted} (header {header_rev})"),
            Response::Txn { header_rev, succeeded, .. } => {
                format!("{} (header {header_rev})", if *succeeded { "succeeded" } else { "failed" })
            }
            Response::LeaseGrant { id, ttl, .. } => format!("id {id:x} ttl {ttl}"),
            Response::LeaseKeepAlive { ttl } | Response::LeaseTimeToLive { ttl, .. } => format!("ttl {ttl}"),
            Response::LeaseRevoke { .. } | Response::Compact { .. } => "ok".to_string(),
        },
    };
    let end = op.complete.map_or("?".to_string(), |c| c.to_string());
    format!("#{i} c{} {call} → {result} [{}..{end}]", op.client, op.invoke)
}
