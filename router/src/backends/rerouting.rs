//! The shard map, as followed from placement, and routing again by a newer
//! one. A router's map can be older than a group's fence: the group then
//! refuses the call (`EpochNotMatch{current}`) before applying it, and the
//! call is run again once this router has that map. Only the service knows
//! how to route its request, so it hands `rerouting` a closure that routes
//! by whatever map it finds.

use super::Backends;
use crate::deadline::Deadline;
use shardmap::map::Routing;
use std::future::Future;
use std::sync::Arc;
use tessera_rpc::Refusal;
use tonic::Status;

/// The map epoch a group refused the call for (it was routed by an older
/// map and touched a prefix that group is handing to another).
pub(super) fn epoch_not_match(s: &Status) -> Option<u64> {
    match Refusal::from_status(s)? {
        Refusal::EpochNotMatch { current } => Some(current),
        _ => None,
    }
}

impl Backends {
    /// The map this router routes by now.
    pub fn routing(&self) -> Result<Arc<Routing>, Status> {
        self.maps.borrow().clone().ok_or_else(|| Status::unavailable("tessera: no shard map from placement yet"))
    }

    /// Waits until this router has map `epoch` (or a newer one); etcd's
    /// deadline error if it does not come in time.
    pub(crate) async fn wait_for_epoch(&self, epoch: u64, deadline: Deadline) -> Result<(), Status> {
        let mut maps = self.maps.clone();
        deadline
            .run(async {
                match maps.wait_for(|m| m.as_ref().is_some_and(|r| r.epoch() >= epoch)).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(Status::unavailable(format!("tessera: shard map epoch {epoch} not received from placement"))),
                }
            })
            .await
    }

    /// Runs `f`, which routes by the current map, again each time a group
    /// refuses it for an older map, once this router has that map; all
    /// within the one `deadline` of the client's request.
    pub(crate) async fn rerouting<R, F, Fut>(&self, deadline: Deadline, f: F) -> Result<R, Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        loop {
            let refused = match f().await {
                Err(s) => s,
                ok => return ok,
            };
            let Some(epoch) = epoch_not_match(&refused) else {
                return Err(refused);
            };
            crate::metrics::REROUTES.inc();
            tracing::debug!(epoch, "refused for an older map; waiting for it");
            self.wait_for_epoch(epoch, deadline).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::ShardMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tessera_rpc::Error;
    use tonic::Code;

    fn map(epoch: u64) -> Option<Arc<Routing>> {
        Some(Arc::new(ShardMap { epoch, ..Default::default() }.routing()))
    }

    /// A call the group at epoch `fenced_until` refuses while routed by an older map.
    async fn routed_call(b: &Backends, tries: &AtomicU32, fenced_until: u64) -> Result<u64, Status> {
        tries.fetch_add(1, Ordering::Relaxed);
        let epoch = b.routing()?.epoch();
        if epoch < fenced_until {
            return Err(Error::Refused(Refusal::EpochNotMatch { current: fenced_until }).into());
        }
        Ok(epoch)
    }

    #[tokio::test]
    async fn a_refused_call_runs_again_once_the_newer_map_arrives() {
        let (maps, rx) = tokio::sync::watch::channel(map(1));
        let b = Backends::new(1, rx, tessera_rpc::oracle::OracleClient::new(vec![], Default::default()), Default::default());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            maps.send_replace(map(2));
            maps.closed().await;
        });
        let tries = AtomicU32::new(0);
        let rerouted = crate::metrics::REROUTES.get();
        let epoch = b.rerouting(Deadline::after(Duration::from_secs(5)), || routed_call(&b, &tries, 2)).await.unwrap();
        assert_eq!((epoch, tries.load(Ordering::Relaxed)), (2, 2));
        assert!(crate::metrics::REROUTES.get() > rerouted);
    }

    #[tokio::test]
    async fn waiting_for_a_map_spends_the_requests_deadline() {
        let (_maps, rx) = tokio::sync::watch::channel(map(1));
        let b = Backends::new(1, rx, tessera_rpc::oracle::OracleClient::new(vec![], Default::default()), Default::default());
        let tries = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let err = b.rerouting(Deadline::after(Duration::from_millis(50)), || routed_call(&b, &tries, 2)).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert_eq!(Error::from_status(&err), Some(Error::DeadlineExceeded));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn other_failures_are_answered_as_they_are() {
        let (_maps, rx) = tokio::sync::watch::channel(map(1));
        let b = Backends::new(1, rx, tessera_rpc::oracle::OracleClient::new(vec![], Default::default()), Default::default());
        let err = b
            .rerouting(Deadline::after(Duration::from_secs(5)), || async { Err::<(), _>(Status::from(Error::Compacted)) })
            .await
            .unwrap_err();
        assert_eq!(Error::from_status(&err), Some(Error::Compacted));
    }
}
