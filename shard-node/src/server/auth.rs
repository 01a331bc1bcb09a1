//! etcd's Auth service for a group, and who a call comes from: the user of
//! its token (gRPC metadata `token`, or the gateway's `authorization`
//! header), else the common name of its verified client certificate (as
//! etcd with `--client-cert-auth`). Checks run before a call proposes or
//! reads; a write carries the auth revision it was checked at, and is
//! refused if applied after an auth change (`AuthStore::stale`).

use crate::apply::Applied;
use crate::auth::{Access, AuthApplied, AuthStore};
use crate::error::{Error, Result};
use crate::group::Group;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tessera_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, ResponseHeader, TxnRequest};
use tessera_proto::tessera::command::{auth_change::Change, command::Op, AuthChange, SimpleToken};
use tessera_rpc::auth::service::AuthBackend;
use tessera_rpc::tls::ClientIdentity;
use tonic::{Request, Status};

/// The caller of one request, as the auth store saw it then.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Empty: nobody (checks answer etcd's "user name is empty").
    pub user: String,
    /// The auth revision checked at (0: auth off, nothing checked).
    pub revision: u64,
}

impl Caller {
    /// Who sent `req` to `group` (nobody to check while auth is off).
    pub fn of<T>(group: &Group, req: &Request<T>) -> Result<Caller> {
        let revision = group.sm.auth_gate();
        if revision == 0 {
            return Ok(Caller { user: String::new(), revision: 0 });
        }
        let meta = req.metadata();
        let token = meta.get("token").or_else(|| meta.get("authorization")).and_then(|t| t.to_str().ok());
        let user = match (token, &group.settings.jwt) {
            (Some(t), Some(jwt)) => {
                let (user, signed_at) = jwt.verify(t).ok_or(Error::InvalidAuthToken)?;
                // etcd: a token signed before an auth change no longer speaks for its user.
                if signed_at < revision {
                    return Err(Error::AuthOldRevision);
                }
                user
            }
            (Some(t), None) => group.sm.tokens.lock().user(t).ok_or(Error::InvalidAuthToken)?,
            (None, _) => req.extensions().get::<ClientIdentity>().and_then(|i| i.common_name.clone()).unwrap_or_default(),
        };
        Ok(Caller { user, revision })
    }

    fn on(&self, group: &Group, f: impl FnOnce(&AuthStore, &str) -> Result<()>) -> Result<()> {
        if self.revision == 0 {
            return Ok(());
        }
        group.sm.auth(|a| f(a, &self.user))
    }

    pub fn check(&self, group: &Group, key: &[u8], range_end: &[u8], access: Access) -> Result<()> {
        self.on(group, |a, u| a.permitted(u, key, range_end, access))
    }

    /// etcd's admin-only calls (the root role).
    pub fn admin(&self, group: &Group) -> Result<()> {
        self.on(group, |a, u| a.admin(u))
    }

    /// etcd's lock and election recipes work on `<name>/...` as the caller.
    pub fn recipe(&self, group: &Group, name: &[u8], access: &[Access]) -> Result<()> {
        self.on(group, |a, u| a.check_recipe(u, name, access))
    }

    pub fn put(&self, group: &Group, r: &PutRequest) -> Result<()> {
        self.on(group, |a, u| a.check_put(u, r))?;
        if r.lease != 0 {
            self.lease_puts(group, r.lease)?;
        }
        Ok(())
    }

    /// etcd's checkLeasePuts: whoever revokes lease `id`, or attaches a key
    /// to it, must be allowed to write every key it holds (a revoke deletes
    /// them all).
    pub fn lease_puts(&self, group: &Group, id: i64) -> Result<()> {
        if self.revision == 0 {
            return Ok(());
        }
        let keys = group.sm.lease_time_to_live(id, true).map(|t| t.keys).unwrap_or_default();
        self.on(group, |a, u| keys.iter().try_for_each(|k| a.permitted(u, k, &[], Access::Write)))
    }

    pub fn delete(&self, group: &Group, r: &DeleteRangeRequest) -> Result<()> {
        self.on(group, |a, u| a.check_delete(u, r))
    }

    pub fn txn(&self, group: &Group, r: &TxnRequest) -> Result<()> {
        self.on(group, |a, u| a.check_txn(u, r))
    }
}

/// etcd's Auth service for a group (`tessera_rpc::auth::service` over
/// this backend): changes go through the group's raft log.
#[derive(Clone)]
pub struct GroupAuth {
    pub group: Arc<Group>,
    /// bcrypt's cost for new passwords (etcd's --bcrypt-cost).
    pub bcrypt_cost: u32,
    /// Tokens this member handed out (the number after the dot).
    pub issued: Arc<AtomicU64>,
}

impl GroupAuth {
    async fn apply(&self, change: Change) -> Result<AuthApplied> {
        let out = self.group.propose(Op::Auth(AuthChange { change: Some(change) })).await?;
        match out.result? {
            Applied::Auth(a) => Ok(a),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl AuthBackend for GroupAuth {
    async fn caller<T: Send + Sync>(&self, req: &Request<T>) -> std::result::Result<String, Status> {
        Ok(Caller::of(&self.group, req)?.user)
    }

    async fn change(&self, change: Change, admin: Option<String>) -> std::result::Result<AuthApplied, Status> {
        if let Some(user) = admin {
            self.group.sm.auth(|a| a.admin(&user))?;
        }
        Ok(self.apply(change).await?)
    }

    async fn read(&self) -> std::result::Result<Arc<AuthStore>, Status> {
        self.group.read_index().await?;
        Ok(Arc::new(self.group.sm.auth(|a| a.clone())))
    }

    async fn issue_token(&self, user: &str, revision: u64) -> std::result::Result<String, Status> {
        if let Some(jwt) = &self.group.settings.jwt {
            // Signed here, checked by any member: nothing to replicate.
            return Ok(jwt
                .sign(user, revision)
                .ok_or_else(|| Error::Internal("this member cannot sign auth tokens (no priv-key in --auth-token)".into()))?);
        }
        let token = tessera_rpc::auth::simple_token(self.issued.fetch_add(1, Ordering::Relaxed) + 1);
        match self.apply(Change::Authenticate(SimpleToken { name: user.to_string(), token })).await? {
            AuthApplied::Token { token, .. } => Ok(token),
            other => Err(Error::Internal(format!("unexpected auth result {other:?}")).into()),
        }
    }

    async fn header<T: Send + Sync>(&self, _req: &Request<T>) -> std::result::Result<ResponseHeader, Status> {
        Ok(self.group.header(self.group.sm.current_revision()))
    }

    fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }
}
