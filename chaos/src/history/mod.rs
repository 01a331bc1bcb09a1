//! A recorded history: what clients asked an etcd endpoint, what came back
//! and when, plus every watch response they received.
//!
//! The types follow etcd's gRPC responses closely so a runner can record
//! them field by field, and they are serde types so a failing history can
//! be saved as JSON and checked again later (`History::to_json`,
//! `History::from_json`). Times are monotonic nanoseconds from one clock in
//! the runner. Keys and values are bytes; they serialise as a JSON string
//! when they are UTF-8 and as an array of numbers otherwise.

mod bytes;
mod validate;

pub use bytes::{in_range, prefix_end, Bytes};
pub use validate::{describe, HistoryError};

use serde::{Deserialize, Serialize};

/// One key's value as etcd returns it (`mvccpb.KeyValue` without the key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kv {
    pub value: Bytes,
    pub mod_rev: i64,
    pub create_rev: i64,
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
}

/// What a transaction compares; the number or bytes are what it compares against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    ModRev(i64),
    CreateRev(i64),
    Version(i64),
    Value(Bytes),
    Lease(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Eq,
    NotEq,
    Less,
    Greater,
}

/// One compare of a Txn: `key`'s target `op` the given value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes,
    pub op: CmpOp,
    pub target: CompareTarget,
}

/// One request of a Txn branch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOp {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
        #[serde(default)]
        lease: i64,
    },
    Delete {
        key: Bytes,
    },
}

impl TxnOp {
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Get { key } | TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// The answer to one request of the executed Txn branch, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnResult {
    Get { kv: Option<Kv> },
    Put,
    Delete { deleted: i64 },
}

/// What a client asked (etcd's request, reduced to what the checkers use).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// A single-key Range; `revision` 0 is the latest.
    Get {
        key: Bytes,
        #[serde(default)]
        revision: i64,
        #[serde(default)]
        serializable: bool,
    },
    /// A Range in etcd's encoding (see `in_range`); `limit` 0 is unlimited.
    Range {
        key: Bytes,
        range_end: Bytes,
        #[serde(default)]
        revision: i64,
        #[serde(default)]
        limit: i64,
        #[serde(default)]
        serializable: bool,
    },
    Put {
        key: Bytes,
        value: Bytes,
        #[serde(default)]
        lease: i64,
        #[serde(default)]
        prev_kv: bool,
    },
    /// DeleteRange; an empty `range_end` deletes the one key.
    Delete {
        key: Bytes,
        #[serde(default)]
        range_end: Bytes,
    },
    Txn {
        #[serde(default)]
        compares: Vec<Compare>,
        #[serde(default)]
        success: Vec<TxnOp>,
        #[serde(default)]
        failure: Vec<TxnOp>,
    },
    /// `id` 0 lets the server choose.
    LeaseGrant {
        ttl: i64,
        #[serde(default)]
        id: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    LeaseKeepAlive {
        id: i64,
    },
    LeaseTimeToLive {
        id: i64,
    },
    Compact {
        revision: i64,
    },
}

/// What came back for a successful call (`header_rev` is the response header's revision).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Get {
        header_rev: i64,
        kv: Option<Kv>,
    },
    Range {
        header_rev: i64,
        kvs: Vec<(Bytes, Kv)>,
        #[serde(default)]
        more: bool,
        #[serde(default)]
        count: i64,
    },
    /// `prev` only when the Put asked for it.
    Put {
        header_rev: i64,
        #[serde(default)]
        prev: Option<Kv>,
    },
    Delete {
        header_rev: i64,
        deleted: i64,
    },
    Txn {
        header_rev: i64,
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    LeaseGrant {
        #[serde(default)]
        header_rev: i64,
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        #[serde(default)]
        header_rev: i64,
    },
    /// A TTL of 0 or less means the lease was not found (expired or revoked).
    LeaseKeepAlive {
        ttl: i64,
    },
    /// A TTL of -1 means the lease was not found.
    LeaseTimeToLive {
        ttl: i64,
        #[serde(default)]
        keys: Vec<Bytes>,
    },
    Compact {
        #[serde(default)]
        header_rev: i64,
    },
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Response),
    /// A definite error: the call was not applied (e.g. a failed precondition,
    /// "lease not found", "required revision has been compacted"). Errors after
    /// which a write may still be applied ("etcdserver: request timed out",
    /// "leader changed", gRPC Unavailable or DeadlineExceeded) are `Unknown`.
    Error(String),
    /// Timeout or lost connection: it may have taken effect, at any time after invoke.
    Unknown(String),
}

/// One call of one client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub client: u32,
    pub invoke: u64,
    /// `None` when the outcome is unknown.
    pub complete: Option<u64>,
    pub call: Call,
    pub outcome: Outcome,
}

impl Op {
    pub fn ok(client: u32, invoke: u64, complete: u64, call: Call, response: Response) -> Op {
        Op { client, invoke, complete: Some(complete), call, outcome: Outcome::Ok(response) }
    }
    pub fn error(client: u32, invoke: u64, complete: u64, call: Call, message: impl Into<String>) -> Op {
        Op { client, invoke, complete: Some(complete), call, outcome: Outcome::Error(message.into()) }
    }
    pub fn unknown(client: u32, invoke: u64, call: Call, message: impl Into<String>) -> Op {
        Op { client, invoke, complete: None, call, outcome: Outcome::Unknown(message.into()) }
    }

    /// The response of a call that completed successfully.
    pub fn response(&self) -> Option<&Response> {
        match (&self.outcome, self.complete) {
            (Outcome::Ok(r), Some(_)) => Some(r),
            _ => None,
        }
    }
    /// The outcome is unknown: it may or may not have been applied.
    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown(_)) || self.complete.is_none()
    }
    /// A definite error: not applied.
    pub fn is_error(&self) -> bool {
        matches!(self.outcome, Outcome::Error(_)) && self.complete.is_some()
    }
    /// The header revision of a successful KV call (reads, writes, txns;
    /// not compaction or leases, whose headers the checkers do not rely on).
    pub fn header_rev(&self) -> Option<i64> {
        match self.response()? {
            Response::Get { header_rev, .. }
            | Response::Range { header_rev, .. }
            | Response::Put { header_rev, .. }
            | Response::Delete { header_rev, .. }
            | Response::Txn { header_rev, .. } => Some(*header_rev),
            _ => None,
        }
    }
    /// A serializable read (may be served stale by a follower).
    pub fn is_serializable(&self) -> bool {
        matches!(self.call, Call::Get { serializable: true, .. } | Call::Range { serializable: true, .. })
    }
    /// The keys the call names directly (not the keys of a range).
    pub fn named_keys(&self) -> Vec<&Bytes> {
        match &self.call {
            Call::Get { key, .. } | Call::Put { key, .. } => vec![key],
            Call::Range { key, range_end, .. } | Call::Delete { key, range_end } if range_end.is_empty() => vec![key],
            Call::Txn { compares, success, failure } => {
                let mut keys: Vec<&Bytes> = compares.iter().map(|c| &c.key).collect();
                keys.extend(success.iter().chain(failure).map(TxnOp::key));
                keys.sort();
                keys.dedup();
                keys
            }
            _ => Vec::new(),
        }
    }
}

/// etcd's watch filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchFilter {
    NoPut,
    NoDelete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

/// One watch event; a Delete carries the key and its deletion revision only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub key: Bytes,
    #[serde(default)]
    pub value: Bytes,
    pub mod_rev: i64,
    #[serde(default)]
    pub create_rev: i64,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
    /// The previous kv, when the watch asked for it and the key existed.
    #[serde(default)]
    pub prev: Option<Kv>,
}

/// One watch created on a stream (`watch_id` as the created response said).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    pub watch_id: i64,
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    /// 0: from the revision after the created response's header.
    #[serde(default)]
    pub start_revision: i64,
    #[serde(default)]
    pub prev_kv: bool,
    #[serde(default)]
    pub filters: Vec<WatchFilter>,
    #[serde(default)]
    pub progress_notify: bool,
    /// When the create request was sent.
    pub created_at: u64,
    /// When the client sent a cancel for it, if it did.
    #[serde(default)]
    pub cancel_sent_at: Option<u64>,
}

/// One WatchResponse as received, in arrival order on its stream (whole
/// responses: the checkers do not reassemble fragments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchResponseRecord {
    pub at: u64,
    pub header_rev: i64,
    /// -1 for the answer to a RequestProgress (etcd 3.5+).
    pub watch_id: i64,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default)]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
}

impl WatchResponseRecord {
    /// A progress notification: no events, neither created nor canceled.
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled
    }
}

/// One gRPC Watch stream of one client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchStream {
    pub client: u32,
    pub id: u64,
    pub watches: Vec<Watch>,
    pub responses: Vec<WatchResponseRecord>,
    /// When each RequestProgress was sent on this stream.
    #[serde(default)]
    pub progress_requests: Vec<u64>,
}

/// A read of the whole key space of the workload after the faults healed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalRead {
    pub at: u64,
    pub key: Bytes,
    pub range_end: Bytes,
    pub header_rev: i64,
    pub kvs: Vec<(Bytes, Kv)>,
}

/// Everything recorded. `initial` lists the keys of the workload's key space
/// that existed when the history began, at `start_revision` (the checkers
/// assume the others did not, and that every later write to the key space is
/// in `ops`); states and events at or below `start_revision` are not checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub start_revision: i64,
    #[serde(default)]
    pub initial: Vec<(Bytes, Kv)>,
    pub ops: Vec<Op>,
    #[serde(default)]
    pub watches: Vec<WatchStream>,
    #[serde(default)]
    pub final_read: Option<FinalRead>,
}
