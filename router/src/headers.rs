//! Every answer of the router carries one identity, as `member list` shows
//! it: the federation's cluster id (its map's) and this router's member id,
//! whichever group answered underneath — etcd clients compare them across
//! responses. The revision is the federation's; the raft term stays the
//! answering group's.

use crate::backends::Backends;
use crate::deadline::Deadline;
use tessera_proto::etcdserverpb::*;
use tessera_proto::v3electionpb::{CampaignResponse, LeaderResponse, ProclaimResponse, ResignResponse};
use tessera_proto::v3lockpb::{LockResponse, UnlockResponse};
use tonic::{Response, Status};

/// A response with etcd's header.
pub(crate) trait WithHeader {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! with_header {
    ($($t:ty),* $(,)?) => {
        $(impl WithHeader for $t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

with_header!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    CompactionResponse,
    WatchResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
    LeaseKeepAliveResponse,
    LeaseTimeToLiveResponse,
    LeaseLeasesResponse,
    AlarmResponse,
    StatusResponse,
    DefragmentResponse,
    HashKvResponse,
    MemberListResponse,
    LockResponse,
    UnlockResponse,
    CampaignResponse,
    ProclaimResponse,
    LeaderResponse,
    ResignResponse,
);

impl Backends {
    /// The header of an answer the router makes itself, at `revision`.
    pub(crate) fn header(&self, revision: i64) -> ResponseHeader {
        let mut h = Some(ResponseHeader { revision, ..Default::default() });
        self.stamp(&mut h);
        h.unwrap_or_default()
    }

    /// Puts the router's identity on `header` (etcd always sends one).
    pub(crate) fn stamp(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(Default::default);
        if let Some(cluster) = self.routing().ok().map(|r| r.map.cluster_id).filter(|c| *c != 0) {
            h.cluster_id = cluster;
        }
        h.member_id = self.member_id();
    }

    /// `resp` as the client gets it: with the router's identity.
    pub(crate) fn answer<T: WithHeader>(&self, mut resp: T) -> Response<T> {
        self.stamp(resp.header_mut());
        Response::new(resp)
    }

    /// `resp` with the router's identity and a revision no lower than the
    /// federation's current one: for answers whose group revision is no
    /// point of the timeline (leases, compaction, status) but which must
    /// still never go back below a revision a client was given.
    pub(crate) async fn answer_now<T: WithHeader>(&self, mut resp: T, deadline: Deadline) -> Result<Response<T>, Status> {
        let now = self.now(deadline).await?;
        let h = resp.header_mut().get_or_insert_with(Default::default);
        if h.revision > now {
            // Every group's revision is one the oracle handed out, so this
            // is not expected; if a group ever answered one it did not, the
            // oracle must learn of it before a client sees it.
            self.tell(h.revision, deadline).await?;
        }
        h.revision = h.revision.max(now);
        Ok(self.answer(resp))
    }
}
