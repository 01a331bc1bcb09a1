//! A client of the admin API (the `tessera` CLI uses it): the same request
//! and answer types as placement, over a minimal HTTP/1.1 exchange (one
//! request per connection; the API is small and local).

use crate::api::*;
use crate::error::{ErrorKind, PlacementError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shardmap::ShardMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug)]
pub struct PlacementClient {
    base: String,
    dialer: tessera_rpc::tls::Dialer,
}

impl PlacementClient {
    /// `base`: placement's admin URL, `http://host:port`.
    pub fn new(base: impl Into<String>) -> Self {
        PlacementClient { base: base.into(), dialer: Default::default() }
    }

    /// How this client reaches placement (and, for the CLI, the groups).
    pub fn dialer(&self) -> &tessera_rpc::tls::Dialer {
        &self.dialer
    }

    /// Through `dialer` (placement serving `https://`).
    pub fn with_dialer(mut self, dialer: tessera_rpc::tls::Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    pub async fn map(&self) -> Result<ShardMap> {
        self.call::<(), _>("GET", "/tessera/v1/map", None).await
    }

    pub async fn init(&self, req: &InitRequest) -> Result<ShardMap> {
        self.call("POST", "/tessera/v1/init", Some(req)).await
    }

    pub async fn add_group(&self, req: &GroupAddRequest) -> Result<GroupAdded> {
        self.call("POST", "/tessera/v1/groups", Some(req)).await
    }

    pub async fn join_ring(&self, group: u64, rate_bytes: u64) -> Result<RingJoined> {
        self.call("POST", &format!("/tessera/v1/groups/{group}/ring"), Some(&RingJoinRequest { rate_bytes })).await
    }

    /// `join_ring` for a group just added: its moves and the ring flip
    /// need its leader, so it is asked again (every 0.5 s, `tries` times)
    /// until one answers; the last error otherwise.
    pub async fn join_new_group(&self, group: u64, rate_bytes: u64, tries: usize) -> Result<RingJoined> {
        let mut joined = self.join_ring(group, rate_bytes).await;
        for _ in 1..tries {
            if joined.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            joined = self.join_ring(group, rate_bytes).await;
        }
        joined
    }

    pub async fn drain_group(&self, group: u64, rate_bytes: u64) -> Result<GroupDrained> {
        self.call("POST", &format!("/tessera/v1/groups/{group}/drain"), Some(&GroupDrainRequest { rate_bytes })).await
    }

    pub async fn remove_group(&self, group: u64) -> Result<GroupRemoved> {
        self.call::<(), _>("DELETE", &format!("/tessera/v1/groups/{group}"), None).await
    }

    pub async fn add_learner(&self, group: u64, node: Option<String>) -> Result<LearnerAdded> {
        self.call("POST", &format!("/tessera/v1/groups/{group}/learners"), Some(&LearnerAddRequest { node })).await
    }

    pub async fn remove_replica(&self, group: u64, node: &str) -> Result<ReplicaRemoved> {
        self.call::<(), _>("DELETE", &format!("/tessera/v1/groups/{group}/replicas/{node}"), None).await
    }

    pub async fn pin(&self, prefix: &str, group: u64) -> Result<OwnershipChanged> {
        self.call("PUT", "/tessera/v1/pins", Some(&PinRequest { prefix: prefix.into(), group })).await
    }

    pub async fn split(&self, req: &SplitRequest) -> Result<SplitReport> {
        self.call("POST", "/tessera/v1/splits", Some(req)).await
    }

    pub async fn merge(&self, req: &MergeRequest) -> Result<MergeReport> {
        self.call("POST", "/tessera/v1/merges", Some(req)).await
    }

    pub async fn spread(&self, prefix: &str, groups: &[u64]) -> Result<OwnershipChanged> {
        self.call("PUT", "/tessera/v1/spreads", Some(&SpreadRequest { prefix: prefix.into(), groups: groups.to_vec() })).await
    }

    /// Moves a prefix with its data (returns when the move is done).
    pub async fn move_prefix(&self, req: &MoveRequest) -> Result<MoveReport> {
        self.call("POST", "/tessera/v1/moves", Some(req)).await
    }

    /// A rebalancing round (returns once its moves are done).
    pub async fn rebalance(&self, req: &RebalanceRequest) -> Result<RebalancePlan> {
        self.call("POST", "/tessera/v1/rebalance", Some(req)).await
    }

    /// Size and load per placement unit.
    pub async fn units(&self) -> Result<UnitsReport> {
        self.call::<(), _>("GET", "/tessera/v1/units", None).await
    }

    pub async fn moves(&self) -> Result<MovesList> {
        self.call::<(), _>("GET", "/tessera/v1/moves", None).await
    }

    pub async fn cancel_move(&self, prefix: &str) -> Result<()> {
        self.call("POST", "/tessera/v1/moves/cancel", Some(&MoveCancelRequest { prefix: prefix.into() })).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&B>) -> Result<T> {
        let unreachable = |e: std::io::Error| PlacementError::unavailable(format!("placement at {}: {e}", self.base));
        let (mut s, hostport) = self.dialer.http1(&self.base).await.map_err(unreachable)?;
        let body = match body {
            Some(b) => serde_json::to_string(b).map_err(|e| PlacementError::invalid(e.to_string()))?,
            None => String::new(),
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.map_err(unreachable)?;
        let mut buf = vec![];
        s.read_to_end(&mut buf).await.map_err(unreachable)?;
        let text = String::from_utf8_lossy(&buf);
        let bad = || PlacementError::unavailable(format!("bad HTTP response from placement at {}", self.base));
        let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
        let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let payload =
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
        if status >= 300 {
            return Err(match serde_json::from_str::<ErrorBody>(&payload) {
                Ok(e) => PlacementError { kind: e.kind, message: e.error },
                Err(_) => {
                    PlacementError { kind: ErrorKind::Unavailable, message: format!("placement: HTTP {status}: {payload}") }
                }
            });
        }
        serde_json::from_str(&payload).map_err(|e| PlacementError::unavailable(format!("placement answered {payload:?}: {e}")))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
