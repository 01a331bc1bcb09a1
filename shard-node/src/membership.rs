//! How conf-change entries change the member table. The entry's context
//! carries the member (a `MemberContext`): added members are recorded with
//! their URLs and learner flag; removed ones are dropped.

use crate::engine::keys::GroupKeys;
use crate::engine::WriteBatch;
use crate::members::Members;
use prost::Message;
use raft::prelude::{ConfChangeType, ConfChangeV2};
use tessera_proto::tessera::command::{ConfChangeContext, MemberContext};

/// Applies the member-table side of a conf change; returns the proposer
/// (member id, seq) so its waiting client can be answered.
pub fn apply_context(
    members: &mut Members,
    keys: &GroupKeys,
    cc: &ConfChangeV2,
    context: &[u8],
    batch: &mut WriteBatch,
) -> Option<crate::raft::Proposer> {
    let decoded = ConfChangeContext::decode(context).ok();
    let ctx: Option<MemberContext> = decoded.as_ref().and_then(|c| c.member.clone());
    for change in cc.get_changes() {
        let id = change.get_node_id();
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                // A promotion keeps what is known of the member; an add
                // brings the member's URLs in the context.
                let existing = members.get(id).cloned();
                let mut m = match (existing, &ctx) {
                    (Some(existing), _) => existing,
                    (None, Some(c)) if c.id == id => c.clone(),
                    _ => MemberContext { id, ..Default::default() },
                };
                m.is_learner = learner;
                members.upsert(m, keys, batch);
            }
            ConfChangeType::RemoveNode => members.remove(id, keys, batch),
        }
    }
    decoded.map(|c| crate::raft::Proposer { member: c.member_id, seq: c.seq })
}
