//! etcd's Cluster service: membership changes go through raft as conf
//! changes (their context carries the member), so every member's table and
//! raft configuration change at the same log index.

use crate::apply::Applied;
use crate::error::Error;
use crate::group::Group;
use crate::members::member_id;
use raft::prelude::ConfChangeType;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tessera_proto::etcdserverpb::cluster_client::ClusterClient;
use tessera_proto::etcdserverpb::cluster_server::Cluster;
use tessera_proto::etcdserverpb::*;
use tessera_proto::tessera::command::{command::Op, MemberContext};
use tessera_rpc::flags::socket_addr;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct ClusterService {
    pub group: Arc<Group>,
}

/// A learner may be promoted once it holds 90% of the leader's log (etcd's rule).
const LEARNER_READY_PERCENT: f64 = 0.9;

impl ClusterService {
    /// As etcd's cluster server: membership answers carry no revision.
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.group.header(0))
    }

    fn members(&self) -> Vec<Member> {
        self.group.sm.members().to_proto()
    }

    fn check_peer_urls(&self, urls: &[String], except: Option<u64>) -> Result<(), Error> {
        if urls.is_empty() || urls.iter().any(|u| socket_addr(u).is_err()) {
            return Err(Error::MemberBadUrls);
        }
        let members = self.group.sm.members();
        let taken = members.all().any(|m| Some(m.id) != except && m.peer_urls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(Error::PeerUrlExist);
        }
        Ok(())
    }

    /// etcd's mayAddMember under --strict-reconfig-check: a new voter must
    /// leave a quorum among the voters that have started (published their
    /// name), counting the new one as not started — except a second member
    /// added to a one-member cluster (how a restored member is grown).
    fn may_add_voter(&self) -> Result<(), Error> {
        if !self.group.settings.strict_reconfig_check {
            return Ok(());
        }
        let (voters, started) = self.voters_started(&self.group.status().voters, None);
        let members = voters + 1;
        if (started, members) != (1, 2) && started < members / 2 + 1 {
            return Err(Error::MemberNotEnoughStarted);
        }
        Ok(())
    }

    /// etcd's mayRemoveMember under --strict-reconfig-check: removing a
    /// voter must leave a quorum of started voters, and — unless the removed
    /// one is unreachable already — of voters the leader heard from lately.
    fn may_remove(&self, member: &MemberContext) -> Result<(), Error> {
        let st = self.group.status();
        if !self.group.settings.strict_reconfig_check || st.learners.contains(&member.id) {
            return Ok(());
        }
        let (voters, started) = self.voters_started(&st.voters, Some(member.id));
        if started < voters / 2 + 1 {
            return Err(Error::MemberNotEnoughStarted);
        }
        // Who is connected is the leader's knowledge (raft's check-quorum
        // view); a follower leaves that check to the started count.
        if !st.is_leader || (member.id != self.group.member_id && !st.active.contains(&member.id)) {
            return Ok(());
        }
        let active = st.voters.iter().filter(|v| st.active.contains(v)).count();
        if active.saturating_sub(1) < 1 + st.voters.len().saturating_sub(1) / 2 {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }

    /// Of `voters` (but `except`): how many there are, and how many have started.
    fn voters_started(&self, voters: &[u64], except: Option<u64>) -> (usize, usize) {
        let members = self.group.sm.members();
        let counted: Vec<&MemberContext> = members.all().filter(|m| voters.contains(&m.id) && Some(m.id) != except).collect();
        (counted.len(), counted.iter().filter(|m| !m.name.is_empty()).count())
    }

    /// Client URL of the leader, for what only the leader can decide.
    fn leader_client_url(&self) -> Result<String, Error> {
        let leader = self.group.status().leader;
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        self.group.sm.member(leader).and_then(|m| m.client_urls.first().cloned()).ok_or(Error::NotLeader)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        // etcd: membership changes are the root role's while auth is on.
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let r = req.into_inner();
        self.check_peer_urls(&r.peer_ur_ls, None)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let id = member_id(&r.peer_ur_ls, &format!("{}{nanos}", self.group.cluster_id));
        let member = MemberContext {
            id,
            name: String::new(),
            peer_urls: r.peer_ur_ls.clone(),
            client_urls: vec![],
            is_learner: r.is_learner,
        };
        if !r.is_learner {
            self.may_add_voter()?;
        }
        let change = if r.is_learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
        self.group.propose_conf_change(change, member).await?.result?;
        let members = self.members();
        let added = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(MemberAddResponse { header: self.header(), member: added, members }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        // etcd: membership changes are the root role's while auth is on.
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let id = req.into_inner().id;
        let member = self.group.sm.member(id).ok_or(Error::MemberNotFound)?;
        self.may_remove(&member)?;
        self.group.propose_conf_change(ConfChangeType::RemoveNode, member).await?.result?;
        Ok(Response::new(MemberRemoveResponse { header: self.header(), members: self.members() }))
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        // etcd: membership changes are the root role's while auth is on.
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let r = req.into_inner();
        let mut member = self.group.sm.member(r.id).ok_or(Error::MemberNotFound)?;
        self.check_peer_urls(&r.peer_ur_ls, Some(r.id))?;
        member.peer_urls = r.peer_ur_ls;
        match self.group.propose(Op::UpdateMember(member)).await?.result? {
            Applied::Done => Ok(Response::new(MemberUpdateResponse { header: self.header(), members: self.members() })),
            other => Err(Status::internal(format!("unexpected apply result {other:?}"))),
        }
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.group.read_index().await?;
        }
        Ok(Response::new(MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(&self, req: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        // etcd: membership changes are the root role's while auth is on.
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let id = req.into_inner().id;
        let st = self.group.status();
        if !st.is_leader {
            // Only the leader knows how far the learner is: ask it (as etcd forwards).
            let mut leader =
                ClusterClient::connect(self.leader_client_url()?).await.map_err(|_| Status::from(Error::NoLeader))?;
            return leader.member_promote(self.group.request(MemberPromoteRequest { id })).await;
        }
        let member = self.group.sm.member(id).ok_or(Error::MemberNotFound)?;
        if !st.learners.contains(&id) {
            return Err(Error::MemberNotLearner.into());
        }
        let matched = |who: u64| st.progress.iter().find(|(m, _)| *m == who).map_or(0, |(_, i)| *i);
        if (matched(id) as f64) < matched(self.group.member_id) as f64 * LEARNER_READY_PERCENT {
            return Err(Error::LearnerNotReady.into());
        }
        self.group.propose_conf_change(ConfChangeType::AddNode, member).await?.result?;
        Ok(Response::new(MemberPromoteResponse { header: self.header(), members: self.members() }))
    }
}
