//! Reaching the group leader's peer port, for what only the leader answers
//! (lease liveness). The client is cached per leader.

use crate::error::{Error, Result};
use crate::group::Group;
use crate::locks::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::transport::peer_client::PeerClient;
use tonic::transport::Channel;

pub struct LeaderClient {
    group: Arc<Group>,
    cached: Mutex<Option<(u64, PeerClient<Channel>)>>,
}

impl LeaderClient {
    pub fn new(group: Arc<Group>) -> Self {
        Self { group, cached: Mutex::leaf("leader client", None) }
    }

    pub fn get(&self) -> Result<PeerClient<Channel>> {
        let leader = self.group.status().leader;
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if let Some((id, c)) = self.cached.lock().as_ref() {
            if *id == leader {
                return Ok(c.clone());
            }
        }
        let url = self.group.sm.member(leader).and_then(|m| m.peer_urls.first().cloned()).ok_or(Error::NoLeader)?;
        let ep = tonic::transport::Endpoint::from_shared(url).map_err(|e| Error::Internal(e.to_string()))?;
        let client = PeerClient::new(self.group.settings.dialer.lazy(ep.connect_timeout(Duration::from_secs(1))));
        *self.cached.lock() = Some((leader, client.clone()));
        Ok(client)
    }
}

/// A peer-RPC failure as the error a client should see: the leader's own
/// answer, or "no leader" when it could not be reached.
pub fn forward_error(s: tonic::Status) -> tonic::Status {
    match Error::from_status(&s) {
        Some(_) => s,
        None => Error::NoLeader.into(),
    }
}
