//! The call-with-retry every service uses: try a group's replicas in
//! preference order, and again with a growing pause, until the request's
//! deadline, while the failure is one that can pass. Whether a failed call
//! may be sent again is decided from types alone, never from message text:
//! reads (anything safe to repeat) on any transient failure, writes only
//! when they surely never arrived — the connection was never made
//! (`tessera_rpc::client::never_sent`) or the node refused the call before
//! proposing it (`Refusal::NotHosted`). A write that may have arrived is
//! never sent twice.

use super::rerouting::epoch_not_match;
use super::{Backends, Prefer};
use crate::deadline::{self, Deadline};
use std::future::Future;
use std::time::Duration;
use tessera_rpc::client::never_sent;
use tessera_rpc::Refusal;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// What a call does to its group, which decides the replica it goes to
/// first and whether it may be sent twice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Changes the group: to the leader, sent again only if it surely never arrived.
    Write,
    /// Safe to repeat (linearizable reads, bumps, keepalives): to the leader,
    /// sent again on any transient failure.
    Read,
    /// A serializable read: learners first, then followers, then the leader.
    Serializable,
}

impl Access {
    fn prefer(self) -> Prefer {
        match self {
            Access::Write | Access::Read => Prefer::Leader,
            Access::Serializable => Prefer::Learner,
        }
    }
}

/// What to do after a replica failed a call.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Answer the failure (it is final, or sending again could apply a write twice).
    Fail,
    /// Try the next replica; `node_down`: the node itself failed (tried last for a while).
    TryAnother { node_down: bool },
}

/// Whether a failed call never reached a group's state machine (safe to
/// send again elsewhere, even a write): the connection was never made, or
/// the node refused it before proposing (it does not host the group).
fn not_delivered(s: &Status) -> bool {
    never_sent(s) || matches!(Refusal::from_status(s), Some(Refusal::NotHosted { .. }))
}

fn next_after(failure: &Status, access: Access) -> Next {
    if epoch_not_match(failure).is_some() {
        return Next::Fail; // route again by the newer map (`rerouting`), not on another replica
    }
    let delivered = !not_delivered(failure);
    let transient = match failure.code() {
        Code::Unavailable | Code::Cancelled => true,
        // An error of etcd's table answered as Unknown (the election
        // service's, as etcd answers them) is the group's answer; any
        // other Unknown is the transport's and may pass.
        Code::Unknown => tessera_rpc::Error::from_status(failure).is_none(),
        _ => false,
    };
    match access {
        Access::Write if delivered => Next::Fail,
        Access::Read | Access::Serializable if delivered && !transient => Next::Fail,
        _ => Next::TryAnother { node_down: !delivered },
    }
}

/// Whether tonic ended the call because the `grpc-timeout` it carried ran
/// out (the client's deadline, passed on).
fn timed_out(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The pause before going over a group's replicas again.
fn backoff(round: u32) -> Duration {
    Duration::from_millis((50 * u64::from(round)).min(500))
}

impl Backends {
    /// Calls `group`, trying its replicas in preference order and again
    /// until `deadline` while the failure is one that can pass. Each attempt
    /// carries the time left as its timeout; when none is left the answer is
    /// etcd's deadline error.
    pub(crate) async fn call<T, R, F, Fut>(
        &self,
        group: u64,
        access: Access,
        deadline: Deadline,
        msg: T,
        f: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut last = None;
        for round in 1.. {
            let r = self.routing()?;
            for (node, ch) in self.targets(&r, group, access.prefer())? {
                let Some(left) = deadline.remaining() else { break };
                let mut req = self.request(&r, group, msg.clone());
                req.set_timeout(left);
                let failure = match deadline.run(f(ch, req)).await {
                    Ok(resp) => return Ok(resp.into_inner()),
                    Err(s) => s,
                };
                match next_after(&failure, access) {
                    Next::Fail if timed_out(&failure) => return Err(deadline::exceeded()),
                    Next::Fail => return Err(failure),
                    Next::TryAnother { node_down } => {
                        if node_down {
                            self.health.mark_down(&node);
                        }
                        tracing::debug!(group, node, error = %failure, "retrying on another replica");
                        last = Some(failure);
                    }
                }
            }
            if deadline.expired() {
                break;
            }
            deadline.sleep(backoff(round)).await;
        }
        tracing::debug!(group, last = ?last, "deadline passed while retrying");
        Err(deadline::exceeded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_rpc::Error;

    #[test]
    fn a_write_is_sent_again_only_when_it_surely_never_arrived() {
        let not_hosted: Status = Error::Refused(Refusal::NotHosted { group: 3 }).into();
        assert_eq!(next_after(&not_hosted, Access::Write), Next::TryAnother { node_down: true });
        for maybe_arrived in
            [Status::unavailable("tcp connect error: Connection refused"), Status::cancelled("x"), Status::unknown("x")]
        {
            assert_eq!(next_after(&maybe_arrived, Access::Write), Next::Fail, "{maybe_arrived:?}");
        }
        let not_leader: Status = Error::Refused(Refusal::NotLeader { leader: 0 }).into();
        assert_eq!(next_after(&not_leader, Access::Write), Next::Fail);
    }

    #[test]
    fn a_read_moves_on_after_any_transient_failure() {
        for access in [Access::Read, Access::Serializable] {
            for transient in [Status::unavailable("x"), Status::cancelled("x"), Status::unknown("x")] {
                assert_eq!(next_after(&transient, access), Next::TryAnother { node_down: false }, "{transient:?}");
            }
            let not_hosted: Status = Error::Refused(Refusal::NotHosted { group: 3 }).into();
            assert_eq!(next_after(&not_hosted, access), Next::TryAnother { node_down: true });
            let compacted: Status = Error::Compacted.into();
            assert_eq!(next_after(&compacted, access), Next::Fail);
            // etcd's election errors are Unknown too, but an answer.
            let no_leader: Status = Error::ElectionNoLeader.into();
            assert_eq!(no_leader.code(), Code::Unknown);
            assert_eq!(next_after(&no_leader, access), Next::Fail);
        }
    }

    #[test]
    fn a_refusal_for_an_older_map_is_routed_again_not_retried() {
        let refused: Status = Error::Refused(Refusal::EpochNotMatch { current: 9 }).into();
        for access in [Access::Write, Access::Read, Access::Serializable] {
            assert_eq!(next_after(&refused, access), Next::Fail);
        }
    }

    #[test]
    fn tonics_own_timeout_is_told_apart_by_type() {
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(timed_out(&expired), "{expired:?}");
        assert!(!timed_out(&Status::cancelled("Timeout expired")));
    }

    #[test]
    fn pauses_grow_and_are_capped() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(4), Duration::from_millis(200));
        assert_eq!(backoff(100), Duration::from_millis(500));
    }
}
