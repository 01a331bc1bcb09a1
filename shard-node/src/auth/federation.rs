//! The federation's auth store on a group. Routers check every call
//! against the federation's store (kept in placement's store) before any
//! group is asked; a group of a federation keeps a copy of that store in
//! its log (`Op::FederationAuth`, installed by the router that changed it
//! before that router answers), and each write a router checked carries
//! who asked and at which auth revision (`Forwarded`). Applied, such a
//! write is refused if the group logged a newer store first — etcd's
//! "revision of auth store is old", so no write checked before an auth
//! change applies after the change was answered — and checked against the
//! user's permissions when the group holds the same revision the router
//! checked at (etcd's applier checks there too). A group that has not yet
//! logged the router's revision takes the router's check. Each node also
//! follows the store in placement's store and installs it on the groups
//! it leads (`install_led`): a group the router's install missed (created
//! after the change, or unreachable then) gets it within seconds.

use crate::auth::AuthStore;
use crate::error::Error;
use crate::node::Node;
use prost::Message;
use shardmap::watcher::{FetchError, Followed};
use std::sync::Arc;
use tessera_proto::tessera::command::command::Op;
use tessera_proto::tessera::command::{AuthState, Forwarded};
use tokio::sync::watch;

pub(crate) const META_FEDERATION_AUTH: &str = "federation-auth";

tokio::task_local! {
    /// The caller a router forwarded with the call being served. A
    /// task-local, as the map epoch (`crate::fence::routed`): it belongs to
    /// the call, not to any one proposal's signature.
    static FORWARDED: Option<Forwarded>;
}

/// Runs `f` as a call a router made for `caller`.
pub async fn forwarded_by<F: std::future::Future>(caller: Option<Forwarded>, f: F) -> F::Output {
    FORWARDED.scope(caller, f).await
}

/// The forwarded caller of the call being served, if any.
pub fn forwarded() -> Option<Forwarded> {
    FORWARDED.try_with(|c| c.clone()).ok().flatten()
}

/// Why a write `caller` sent is refused when applied over `store` (None: applied).
pub fn refusal(store: &AuthStore, caller: Option<&Forwarded>, op: &Op) -> Option<Error> {
    let caller = caller?;
    // Off now (etcd lets it through), or a change this group has not
    // logged yet: the router's check, at a newer revision, stands.
    if !store.enabled() || store.revision() < caller.auth_revision {
        return None;
    }
    if store.revision() > caller.auth_revision {
        return Some(Error::AuthOldRevision);
    }
    let user = caller.user.as_str();
    let checked = match op {
        Op::Put(r) => store.check_put(user, r),
        Op::DeleteRange(r) => store.check_delete(user, r),
        Op::Txn(r) => store.check_txn(user, r),
        // This group's part of a txn across groups: the whole txn, as the
        // router checked it (at the same revision, the same answer).
        Op::TxnPrepare(p) => p.request.as_ref().map_or(Ok(()), |r| store.check_txn(user, r)),
        // A revoke deletes keys on every group: the router checked them all.
        _ => Ok(()),
    };
    checked.err()
}

/// The federation's auth store as placement's store holds it (None
/// until read; never written: nothing to install).
pub(crate) struct FollowedAuthState(pub watch::Sender<Option<AuthState>>);

impl Followed for FollowedAuthState {
    fn key(&self) -> &[u8] {
        shardmap::AUTH_STATE_KEY
    }

    fn take(&mut self, value: &[u8], _cluster: u64) -> Result<(), FetchError> {
        let state = AuthState::decode(value).map_err(|e| FetchError::Malformed(format!("auth state: {e}")))?;
        self.0.send_if_modified(|cur| {
            let newer = cur.as_ref().is_none_or(|c| c.revision < state.revision);
            if newer {
                *cur = Some(state);
            }
            newer
        });
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.is_closed()
    }
}

/// Proposes `state` to each group this node leads that logged an older
/// store, without waiting (a group without a quorum must not hold up the
/// others; the caller comes back while one is still behind).
pub(crate) fn install_led(node: &Arc<Node>, state: &AuthState) {
    for r in node.replicas() {
        let group = r.group.clone();
        if !group.status().is_leader || group.sm.federation_auth_revision() >= state.revision {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let revision = state.revision;
            match group.propose(Op::FederationAuth(state)).await.and_then(|out| out.result) {
                Ok(_) => tracing::info!(group = group.id, auth_revision = revision, "federation auth store installed"),
                Err(e) => tracing::debug!(group = group.id, error = %e, "federation auth store not installed yet"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::authpb::{permission::Type, Permission};
    use tessera_proto::etcdserverpb::request_op::Request;
    use tessera_proto::etcdserverpb::{
        AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, PutRequest, RequestOp,
        TxnRequest,
    };
    use tessera_proto::tessera::command::{auth_change::Change, AuthChange, TxnPrepare};

    /// root, and alice who may write under /a/ only; auth on.
    fn store() -> AuthStore {
        let mut s = AuthStore::default();
        let mut apply = |c: Change| s.apply(&AuthChange { change: Some(c) }).unwrap();
        for user in ["root", "alice"] {
            apply(Change::UserAdd(AuthUserAddRequest { name: user.into(), password: "$2b$04$x".into(), ..Default::default() }));
        }
        apply(Change::RoleAdd(AuthRoleAddRequest { name: "root".into() }));
        apply(Change::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }));
        apply(Change::RoleAdd(AuthRoleAddRequest { name: "a".into() }));
        let perm = Permission { perm_type: Type::Readwrite as i32, key: b"/a/".to_vec(), range_end: b"/a0".to_vec() };
        apply(Change::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: "a".into(), perm: Some(perm) }));
        apply(Change::UserGrantRole(AuthUserGrantRoleRequest { user: "alice".into(), role: "a".into() }));
        apply(Change::Enable(Default::default()));
        s
    }

    fn put(key: &str) -> Op {
        Op::Put(PutRequest { key: key.as_bytes().to_vec(), ..Default::default() })
    }

    #[test]
    fn a_write_checked_before_the_store_this_group_logged_is_refused() {
        let s = store();
        let rev = s.revision();
        let at = |auth_revision| Forwarded { user: "alice".into(), auth_revision };
        assert_eq!(refusal(&s, Some(&at(rev)), &put("/a/x")), None);
        assert_eq!(refusal(&s, Some(&at(rev - 1)), &put("/a/x")), Some(Error::AuthOldRevision));
        // Not logged here yet: the router's newer check stands.
        assert_eq!(refusal(&s, Some(&at(rev + 1)), &put("/b/x")), None);
        // Not forwarded (auth off at the router, or the federation's own call).
        assert_eq!(refusal(&s, None, &put("/b/x")), None);
    }

    #[test]
    fn at_the_same_revision_the_group_checks_the_user_itself() {
        let s = store();
        let alice = Forwarded { user: "alice".into(), auth_revision: s.revision() };
        assert_eq!(refusal(&s, Some(&alice), &put("/b/x")), Some(Error::PermissionDenied));
        let nobody = Forwarded { user: String::new(), auth_revision: s.revision() };
        assert_eq!(refusal(&s, Some(&nobody), &put("/a/x")), Some(Error::UserEmpty));
    }

    #[test]
    fn a_part_of_a_txn_across_groups_is_checked_as_the_whole_txn() {
        let s = store();
        let prepare = |keys: &[&str]| {
            let success = keys
                .iter()
                .map(|k| RequestOp {
                    request: Some(Request::RequestPut(PutRequest { key: k.as_bytes().to_vec(), ..Default::default() })),
                })
                .collect();
            Op::TxnPrepare(TxnPrepare { request: Some(TxnRequest { success, ..Default::default() }), ..Default::default() })
        };
        let alice = |auth_revision| Forwarded { user: "alice".into(), auth_revision };
        assert_eq!(refusal(&s, Some(&alice(s.revision())), &prepare(&["/a/x", "/a/y"])), None);
        // This group's part may be /a/x only: the other group's key counts too.
        assert_eq!(refusal(&s, Some(&alice(s.revision())), &prepare(&["/a/x", "/b/y"])), Some(Error::PermissionDenied));
        assert_eq!(refusal(&s, Some(&alice(s.revision() - 1)), &prepare(&["/a/x"])), Some(Error::AuthOldRevision));
    }

    #[test]
    fn nothing_is_checked_while_the_federation_has_auth_off() {
        let mut s = store();
        s.apply(&AuthChange { change: Some(Change::Disable(Default::default())) }).unwrap();
        let old = Forwarded { user: "alice".into(), auth_revision: 1 };
        assert_eq!(refusal(&s, Some(&old), &put("/b/x")), None);
    }
}
