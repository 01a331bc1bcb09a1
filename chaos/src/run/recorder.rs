//! Recording what clients saw: one monotonic clock for every invocation,
//! completion and watch response, and the history they build.

use crate::history::{Call, History, Op, Outcome, WatchResponseRecord, WatchStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tessera_rpc::client::never_sent;
use tessera_rpc::Error;

/// How a failed call ended for the history: not applied, or maybe applied.
pub fn outcome_of(s: &tonic::Status) -> Outcome {
    let text = format!("{:?}: {}", s.code(), s.message());
    if never_sent(s) {
        return Outcome::Error(text);
    }
    match Error::from_status(s) {
        // Refused before (or instead of) being applied.
        Some(
            Error::Compacted
            | Error::FutureRev
            | Error::LeaseNotFound
            | Error::LeaseExist
            | Error::KeyNotFound
            | Error::EmptyKey
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge
            | Error::NoSpace
            | Error::TooManyRequests
            | Error::Refused(_)
            | Error::InvalidArgument(_),
        ) => Outcome::Error(text),
        // Timeouts, leader changes, unreachable: it may have been applied.
        _ => Outcome::Unknown(text),
    }
}

#[derive(Default)]
struct Inner {
    history: History,
    /// Protocol violations seen while recording (not in the history).
    violations: Vec<String>,
}

/// Shared by every client of a run.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { start: Instant::now(), inner: Arc::default() }
    }
}

impl Recorder {
    /// Nanoseconds on the run's clock.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a call invoked at `invoke` that ended now as `outcome`.
    pub fn record(&self, client: u32, invoke: u64, call: Call, outcome: Outcome) {
        let complete = self.now();
        let op = match outcome {
            Outcome::Ok(r) => Op::ok(client, invoke, complete, call, r),
            Outcome::Unknown(m) => Op::unknown(client, invoke, call, m),
            Outcome::Error(m) => Op::error(client, invoke, complete, call, m),
        };
        self.lock().history.ops.push(op);
    }

    /// A new watch stream; returns its index.
    pub fn stream(&self, client: u32) -> usize {
        let mut g = self.lock();
        let id = g.history.watches.len();
        g.history.watches.push(WatchStream {
            client,
            id: id as u64,
            watches: vec![],
            responses: vec![],
            progress_requests: vec![],
        });
        id
    }

    pub fn with_stream(&self, stream: usize, f: impl FnOnce(&mut WatchStream)) {
        if let Some(s) = self.lock().history.watches.get_mut(stream) {
            f(s);
        }
    }

    pub fn response(&self, stream: usize, r: WatchResponseRecord) {
        self.with_stream(stream, |s| s.responses.push(r));
    }

    pub fn with_history<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        f(&mut self.lock().history)
    }

    /// A violation of etcd's protocol the recording itself saw.
    pub fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }

    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().violations)
    }

    pub fn take(&self) -> History {
        std::mem::take(&mut self.lock().history)
    }
}
