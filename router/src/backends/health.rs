//! What the router knows of the nodes' health, and the order in which a
//! call tries a group's replicas. Leader hints and each group's revision
//! come from polling every group once a second (`Shard.Stats`); a node that
//! failed a call or a poll is marked down and tried last for a while, so
//! calls do not keep paying its connect timeout first.

use super::{Backends, Lane};
use parking_lot::RwLock;
use shardmap::map::{Replica, Routing};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::tessera::command::TxnPrepared;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::{StatsRequest, StatsResponse};
use tonic::transport::Channel;
use tonic::Status;

/// How long a node that failed stays at the back of the line.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// How often every group is polled.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A poll waits no longer than this for one replica before trying the next.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// Which replica of a group a call wants first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Prefer {
    /// Writes and linearizable reads: the leader (any member would forward).
    Leader,
    /// Serializable reads: learners first, then followers, then the leader.
    Learner,
}

#[derive(Default)]
pub(super) struct Health {
    /// group → its leader's node name, from polling.
    leaders: RwLock<HashMap<u64, String>>,
    /// node name → when it last failed a call or a poll.
    down: RwLock<HashMap<String, Instant>>,
    /// Every group answered (through some replica, with a leader) in the last poll.
    healthy: AtomicBool,
    /// Cross-group txns groups reported in doubt in their last poll, by group.
    in_doubt: RwLock<HashMap<u64, TxnPrepared>>,
    /// Leases groups reported expired in their last poll, by group.
    expired_leases: RwLock<HashMap<u64, Vec<i64>>>,
}

impl Health {
    pub(super) fn mark_down(&self, node: &str) {
        self.down.write().insert(node.to_string(), Instant::now());
    }

    fn mark_up(&self, node: &str) {
        self.down.write().remove(node);
    }

    fn mark_leader(&self, group: u64, node: &str) {
        self.leaders.write().insert(group, node.to_string());
    }

    /// `replicas` of `group`, best first for a call that prefers `prefer`.
    fn order<'a>(&self, group: u64, replicas: &'a [Replica], prefer: Prefer) -> Vec<&'a Replica> {
        let leader = self.leaders.read().get(&group).cloned();
        let down = self.down.read();
        let recently_down = |node: &str| down.get(node).is_some_and(|t| t.elapsed() < DOWN_FOR);
        order(replicas, prefer, leader.as_deref(), recently_down)
    }
}

/// Nodes that failed recently go last; among the rest, the preferred role first.
fn order<'a>(replicas: &'a [Replica], prefer: Prefer, leader: Option<&str>, down: impl Fn(&str) -> bool) -> Vec<&'a Replica> {
    let mut ordered: Vec<&Replica> = replicas.iter().collect();
    ordered.sort_by_key(|rep| {
        let is_leader = leader == Some(rep.node.as_str());
        let rank = match prefer {
            Prefer::Leader => u8::from(!is_leader) + 2 * u8::from(rep.learner),
            Prefer::Learner => u8::from(!rep.learner) + 2 * u8::from(is_leader),
        };
        (down(&rep.node), rank)
    });
    ordered
}

impl Backends {
    /// The replicas of `group` to try for a unary call, best first: (node name, channel).
    pub(crate) fn targets(&self, r: &Routing, group: u64, prefer: Prefer) -> Result<Vec<(String, Channel)>, Status> {
        self.targets_on(r, group, prefer, Lane::Calls)
    }

    /// As `targets`, on the connections of `lane`.
    pub(crate) fn targets_on(
        &self,
        r: &Routing,
        group: u64,
        prefer: Prefer,
        lane: Lane,
    ) -> Result<Vec<(String, Channel)>, Status> {
        let info =
            r.map.groups.get(&group).ok_or_else(|| Status::unavailable(format!("tessera: no group {group} in the map")))?;
        let mut out = vec![];
        for rep in self.health.order(group, &info.replicas, prefer) {
            if let Some(n) = r.map.nodes.get(&rep.node) {
                out.push((rep.node.clone(), self.connections.channel(&n.client_url, lane)?));
            }
        }
        Ok(out)
    }

    /// Whether every group answered with a leader in the last poll (`/health`).
    pub(crate) fn healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }

    /// The cross-group txns groups held prepared for long at their last
    /// poll (their coordinator may be gone), by group.
    pub(crate) fn in_doubt(&self) -> Vec<(u64, TxnPrepared)> {
        self.health.in_doubt.read().iter().map(|(g, t)| (*g, t.clone())).collect()
    }

    /// The leases groups reported expired at their last poll (each is
    /// revoked on every group at once).
    pub(crate) fn expired_leases(&self) -> std::collections::BTreeSet<i64> {
        self.health.expired_leases.read().values().flatten().copied().collect()
    }

    /// Keeps leader hints, down marks and revisions fresh, forever.
    pub(crate) async fn poll(self: Arc<Self>) {
        loop {
            if let Ok(r) = self.routing() {
                let mut all_led = !r.map.groups.is_empty();
                for group in r.map.groups.keys() {
                    all_led &= self.poll_group(&r, *group).await;
                }
                self.health.healthy.store(all_led, Ordering::Relaxed);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// One replica's Stats, within the poll's timeout.
    async fn stats(&self, r: &Routing, group: u64, rep: &Replica) -> Option<StatsResponse> {
        let n = r.map.nodes.get(&rep.node)?;
        let ch = self.connections.channel(&n.client_url, Lane::Calls).ok()?;
        let mut req = self.request(r, group, StatsRequest {});
        req.set_timeout(POLL_TIMEOUT);
        match ShardClient::new(ch).stats(req).await {
            Ok(s) => Some(s.into_inner()),
            Err(_) => {
                self.health.mark_down(&rep.node);
                None
            }
        }
    }

    /// Asks `group`'s replicas in turn until one answers; whether the group
    /// has a leader. Expired leases are the leader's to report (it keeps the
    /// leases' time): asked of the leader when another replica answered.
    async fn poll_group(&self, r: &Routing, group: u64) -> bool {
        let info = &r.map.groups[&group];
        for rep in &info.replicas {
            let Some(s) = self.stats(r, group, rep).await else { continue };
            self.observe(s.header.as_ref());
            let leader = info.replicas.iter().find(|x| x.member_id == s.leader);
            if let Some(leader) = leader {
                self.health.mark_leader(group, &leader.node);
            }
            self.health.mark_up(&rep.node);
            {
                let mut in_doubt = self.health.in_doubt.write();
                match s.in_doubt {
                    Some(t) => in_doubt.insert(group, t),
                    None => in_doubt.remove(&group),
                };
                crate::metrics::CROSS_TXNS_IN_DOUBT.set(in_doubt.len() as i64);
            }
            let expired_leases = match leader {
                Some(l) if l.member_id != rep.member_id => {
                    self.stats(r, group, l).await.map(|s| s.expired_leases).unwrap_or_default()
                }
                _ => s.expired_leases,
            };
            let mut expired = self.health.expired_leases.write();
            if expired_leases.is_empty() {
                expired.remove(&group);
            } else {
                expired.insert(group, expired_leases);
            }
            return s.leader != 0; // one answer per group is enough
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node: &str, learner: bool) -> Replica {
        Replica { node: node.into(), member_id: 0, learner, initial: true }
    }

    fn names(rs: Vec<&Replica>) -> Vec<&str> {
        rs.into_iter().map(|r| r.node.as_str()).collect()
    }

    #[test]
    fn the_leader_first_for_writes_and_learners_first_for_serializable_reads() {
        let rs = [replica("a", false), replica("b", false), replica("c", true)];
        let up = |_: &str| false;
        assert_eq!(names(order(&rs, Prefer::Leader, Some("b"), up)), ["b", "a", "c"]);
        assert_eq!(names(order(&rs, Prefer::Learner, Some("b"), up)), ["c", "a", "b"]);
        // No leader known: voters in map order, learners last.
        assert_eq!(names(order(&rs, Prefer::Leader, None, up)), ["a", "b", "c"]);
    }

    #[test]
    fn a_node_that_failed_recently_goes_last_even_if_it_leads() {
        let rs = [replica("a", false), replica("b", false), replica("c", true)];
        let down = |n: &str| n == "b";
        assert_eq!(names(order(&rs, Prefer::Leader, Some("b"), down)), ["a", "c", "b"]);
    }

    #[test]
    fn a_down_mark_expires() {
        let h = Health::default();
        let rs = [replica("a", false), replica("b", false)];
        h.mark_down("a");
        assert_eq!(names(h.order(1, &rs, Prefer::Leader)), ["b", "a"]);
        h.down.write().insert("a".into(), Instant::now() - DOWN_FOR);
        assert_eq!(names(h.order(1, &rs, Prefer::Leader)), ["a", "b"]);
        h.mark_down("a");
        h.mark_up("a");
        assert_eq!(names(h.order(1, &rs, Prefer::Leader)), ["a", "b"]);
    }
}
