//! How conf-change entries change the member table. The entry's context
//! carries the member (a `MemberContext`): added members are recorded with
//! their URLs and learner flag; removed ones are dropped.

use crate::apply::StateMachine;
use crate::engine::WriteBatch;
use prost::Message;
use raft::prelude::{ConfChangeType, ConfChangeV2};
use tessera_proto::tessera::command::MemberContext;

pub fn apply_context(sm: &StateMachine, cc: &ConfChangeV2, context: &[u8], batch: &mut WriteBatch) {
    let ctx = MemberContext::decode(context).ok();
    for change in cc.get_changes() {
        let id = change.get_node_id();
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                let mut m = match (&ctx, sm.members.read().get(id)) {
                    (Some(c), _) if c.id == id => c.clone(),
                    (_, Some(existing)) => existing.clone(),
                    _ => MemberContext { id, ..Default::default() },
                };
                m.is_learner = learner;
                sm.upsert_member(m, batch);
            }
            ConfChangeType::RemoveNode => sm.remove_member(id, batch),
        }
    }
}
