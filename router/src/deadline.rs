//! One deadline per client request. It is taken once, when the request
//! arrives, from the client's `grpc-timeout` (else the router's default),
//! and every step the router takes for that request — routing again after a
//! refusal, calls to groups and their retries, revision bumps — spends from
//! it, so retries cannot nest budgets and a client that gives up after 2 s
//! does not leave the router working for 30. Each call to a group carries
//! what is left as its own `grpc-timeout`, so the node gives up when the
//! client does. Long-lived streams (watches, keepalives, observes) have none.

use std::future::Future;
use std::time::Duration;
use tessera_rpc::Error;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// How long a request may take when its client sets no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// gRPC's header for the time a client grants a call.
const GRPC_TIMEOUT: &str = "grpc-timeout";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        // An absurd client timeout (gRPC allows 10^8 hours) must not overflow the clock.
        let at = Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        Deadline { at }
    }

    /// The router's default deadline, for work no client timed (a watcher's bumps).
    pub fn default_from_now() -> Self {
        Self::after(DEFAULT_TIMEOUT)
    }

    /// The deadline of an incoming request: its client's `grpc-timeout`, else the default.
    pub fn of<T>(req: &Request<T>) -> Self {
        Self::after(client_timeout(req.metadata()).unwrap_or(DEFAULT_TIMEOUT))
    }

    /// Time left, or None once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    pub fn expired(&self) -> bool {
        self.remaining().is_none()
    }

    /// Runs `f` until this deadline; when the time is up first, `f` is
    /// dropped and the answer is etcd's deadline error.
    pub async fn run<R>(&self, f: impl Future<Output = Result<R, Status>>) -> Result<R, Status> {
        tokio::time::timeout_at(self.at, f).await.unwrap_or_else(|_| Err(exceeded()))
    }

    /// Sleeps `pause`, or until the deadline if that comes first.
    pub async fn sleep(&self, pause: Duration) {
        tokio::time::sleep_until(self.at.min(Instant::now() + pause)).await;
    }
}

/// etcd's answer when a request's time ran out (clients map it to `context.DeadlineExceeded`).
pub fn exceeded() -> Status {
    Error::DeadlineExceeded.into()
}

/// The client's `grpc-timeout`, if it sent a valid one.
fn client_timeout(md: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(md.get(GRPC_TIMEOUT)?.to_str().ok()?)
}

/// gRPC's `TimeoutValue TimeoutUnit`: at most 8 digits, then one of H M S m u n.
/// A value that does not parse is ignored, as tonic's own server ignores it.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let digits = value.len().checked_sub(1)?;
    let (amount, unit) = value.split_at(digits);
    if amount.is_empty() || amount.len() > 8 || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout("0S"), Some(Duration::ZERO));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "5", "5s", "5 S", "-5S", "+5S", "123456789S", "1.5S", "5SS"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_takes_its_clients_timeout_else_the_default() {
        let mut req = Request::new(());
        req.set_timeout(Duration::from_millis(300)); // what a tonic client sends: "300000u"
        let left = Deadline::of(&req).remaining().unwrap();
        assert!(left <= Duration::from_millis(300) && left > Duration::from_millis(200), "{left:?}");

        let left = Deadline::of(&Request::new(())).remaining().unwrap();
        assert!(left <= DEFAULT_TIMEOUT && left > DEFAULT_TIMEOUT - Duration::from_secs(1), "{left:?}");

        let mut req = Request::new(());
        req.metadata_mut().insert(GRPC_TIMEOUT, "soon".parse().unwrap());
        assert!(Deadline::of(&req).remaining().unwrap() > Duration::from_secs(14));
    }

    #[test]
    fn a_huge_client_timeout_does_not_overflow() {
        let d = Deadline::after(Duration::from_secs(99_999_999 * 3600));
        assert!(d.remaining().unwrap() > Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn a_spent_deadline_answers_etcds_error() {
        let d = Deadline::after(Duration::ZERO);
        assert!(d.expired());
        assert_eq!(d.remaining(), None);
        let err = exceeded();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert_eq!(err.message(), "etcdserver: context deadline exceeded");
        assert_eq!(Error::from_status(&err), Some(Error::DeadlineExceeded));
    }

    #[tokio::test]
    async fn run_cuts_off_work_at_the_deadline() {
        let d = Deadline::after(Duration::from_millis(30));
        let never = std::future::pending::<Result<(), Status>>();
        let started = std::time::Instant::now();
        let err = d.run(never).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert!(d.expired());

        // Work that finishes in time keeps its own answer, errors included.
        let d = Deadline::after(Duration::from_secs(5));
        assert_eq!(d.run(async { Ok::<_, Status>(7) }).await.unwrap(), 7);
        assert_eq!(d.run(async { Err::<(), _>(Status::unavailable("x")) }).await.unwrap_err().code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn sleep_never_outlasts_the_deadline() {
        let d = Deadline::after(Duration::from_millis(20));
        let started = std::time::Instant::now();
        d.sleep(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(d.expired());
    }
}
