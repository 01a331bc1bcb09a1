//! etcd's Auth service for a group, and who a call comes from: the user of
//! its token (gRPC metadata `token`, or the gateway's `authorization`
//! header), else the common name of its verified client certificate (as
//! etcd with `--client-cert-auth`). Checks run before a call proposes or
//! reads; a write carries the auth revision it was checked at, and is
//! refused if applied after an auth change (`AuthStore::stale`).

use crate::apply::Applied;
use crate::auth::tokens::Tokens;
use crate::auth::{Access, AuthApplied, AuthStore};
use crate::error::{Error, Result};
use crate::group::Group;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tessera_proto::etcdserverpb::auth_server::Auth;
use tessera_proto::etcdserverpb::request_op::Request as TxnOp;
use tessera_proto::etcdserverpb::*;
use tessera_proto::tessera::command::{auth_change::Change, command::Op, AuthChange, SimpleToken};
use tessera_rpc::tls::ClientIdentity;
use tonic::{Request, Response, Status};

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
        let (mut key, mut end) = (name.to_vec(), name.to_vec());
        key.push(b'/');
        end.push(b'/' + 1);
        for a in access {
            self.check(group, &key, &end, *a)?;
        }
        Ok(())
    }

    pub fn put(&self, group: &Group, r: &PutRequest) -> Result<()> {
        self.on(group, |a, u| check_put(a, u, r))
    }

    pub fn delete(&self, group: &Group, r: &DeleteRangeRequest) -> Result<()> {
        self.on(group, |a, u| check_delete(a, u, r))
    }

    pub fn txn(&self, group: &Group, r: &TxnRequest) -> Result<()> {
        self.on(group, |a, u| check_txn(a, u, r))
    }
}

fn check_put(a: &AuthStore, u: &str, r: &PutRequest) -> Result<()> {
    a.permitted(u, &r.key, &[], Access::Write)?;
    if r.prev_kv {
        a.permitted(u, &r.key, &[], Access::Read)?;
    }
    Ok(())
}

fn check_delete(a: &AuthStore, u: &str, r: &DeleteRangeRequest) -> Result<()> {
    a.permitted(u, &r.key, &r.range_end, Access::Write)?;
    if r.prev_kv {
        a.permitted(u, &r.key, &r.range_end, Access::Read)?;
    }
    Ok(())
}

/// etcd's checkTxnReqsPermission: compares read, each branch's ops as themselves.
fn check_txn(a: &AuthStore, u: &str, r: &TxnRequest) -> Result<()> {
    for c in &r.compare {
        a.permitted(u, &c.key, &c.range_end, Access::Read)?;
    }
    for op in r.success.iter().chain(r.failure.iter()).filter_map(|o| o.request.as_ref()) {
        match op {
            TxnOp::RequestRange(x) => a.permitted(u, &x.key, &x.range_end, Access::Read)?,
            TxnOp::RequestPut(x) => check_put(a, u, x)?,
            TxnOp::RequestDeleteRange(x) => check_delete(a, u, x)?,
            TxnOp::RequestTxn(x) => check_txn(a, u, x)?,
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct AuthService {
    pub group: Arc<Group>,
    /// bcrypt's cost for new passwords (etcd's --bcrypt-cost).
    pub bcrypt_cost: u32,
    /// Tokens this member handed out (the number after the dot).
    pub issued: Arc<AtomicU64>,
}

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.group.header(self.group.sm.current_revision()))
    }

    /// Proposes `change` (by an admin while auth is on).
    async fn change<T>(&self, req: &Request<T>, change: Change) -> Result<AuthApplied> {
        Caller::of(&self.group, req)?.admin(&self.group)?;
        self.apply(change).await
    }

    async fn apply(&self, change: Change) -> Result<AuthApplied> {
        let out = self.group.propose(Op::Auth(AuthChange { change: Some(change) })).await?;
        match out.result? {
            Applied::Auth(a) => Ok(a),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}"))),
        }
    }

    /// A linearizable read of the store, by an admin (or `also`'s exception).
    async fn read<T, R>(
        &self,
        req: &Request<T>,
        also: impl Fn(&AuthStore, &str) -> bool,
        f: impl FnOnce(&AuthStore) -> Result<R>,
    ) -> Result<R> {
        self.group.read_index().await?;
        let caller = Caller::of(&self.group, req)?;
        self.group.sm.auth(|a| {
            if caller.revision != 0 && !also(a, &caller.user) {
                a.admin(&caller.user)?;
            }
            f(a)
        })
    }

    async fn hash(&self, password: String) -> Result<String> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Answer<AuthEnableResponse> {
        // Enabling needs no caller (auth is off until it is on).
        self.apply(Change::Enable(req.into_inner())).await?;
        Ok(Response::new(AuthEnableResponse { header: self.header() }))
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Answer<AuthDisableResponse> {
        self.change(&req, Change::Disable(AuthDisableRequest {})).await?;
        Ok(Response::new(AuthDisableResponse { header: self.header() }))
    }

    async fn auth_status(&self, _req: Request<AuthStatusRequest>) -> Answer<AuthStatusResponse> {
        self.group.read_index().await?;
        let (enabled, auth_revision) = self.group.sm.auth(|a| (a.enabled(), a.revision()));
        Ok(Response::new(AuthStatusResponse { header: self.header(), enabled, auth_revision }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Answer<AuthenticateResponse> {
        let r = req.into_inner();
        let (enabled, hash) = self.group.sm.auth(|a| (a.enabled(), a.password_hash(&r.name)));
        if !enabled {
            return Err(Error::AuthNotEnabled.into());
        }
        let hash = hash?.ok_or(Error::AuthFailed)?;
        let password = r.password.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !ok {
            return Err(Error::AuthFailed.into());
        }
        if let Some(jwt) = &self.group.settings.jwt {
            // Signed here, checked by any member: nothing to replicate.
            let revision = self.group.sm.auth(|a| a.revision());
            let token = jwt
                .sign(&r.name, revision)
                .ok_or_else(|| Error::Internal("this member cannot sign auth tokens (no priv-key in --auth-token)".into()))?;
            return Ok(Response::new(AuthenticateResponse { header: self.header(), token }));
        }
        let token = Tokens::mint(self.issued.fetch_add(1, Ordering::Relaxed) + 1);
        match self.apply(Change::Authenticate(SimpleToken { name: r.name, token })).await? {
            AuthApplied::Token { token, .. } => Ok(Response::new(AuthenticateResponse { header: self.header(), token })),
            other => Err(Error::Internal(format!("unexpected auth result {other:?}")).into()),
        }
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Answer<AuthUserAddResponse> {
        let mut r = req.get_ref().clone();
        if r.name.is_empty() {
            return Err(Error::UserEmpty.into());
        }
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        self.change(&req, Change::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse { header: self.header() }))
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Answer<AuthUserGetResponse> {
        let name = req.get_ref().name.clone();
        // A user may read itself.
        let roles = self.read(&req, |_, u| u == name, |a| Ok(a.user(&name)?.roles.clone())).await?;
        Ok(Response::new(AuthUserGetResponse { header: self.header(), roles }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Answer<AuthUserListResponse> {
        let users = self.read(&req, |_, _| false, |a| Ok(a.user_names())).await?;
        Ok(Response::new(AuthUserListResponse { header: self.header(), users }))
    }

    async fn user_delete(&self, req: Request<AuthUserDeleteRequest>) -> Answer<AuthUserDeleteResponse> {
        let r = req.get_ref().clone();
        self.change(&req, Change::UserDelete(r)).await?;
        Ok(Response::new(AuthUserDeleteResponse { header: self.header() }))
    }

    async fn user_change_password(&self, req: Request<AuthUserChangePasswordRequest>) -> Answer<AuthUserChangePasswordResponse> {
        let mut r = req.get_ref().clone();
        if r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        self.change(&req, Change::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header: self.header() }))
    }

    async fn user_grant_role(&self, req: Request<AuthUserGrantRoleRequest>) -> Answer<AuthUserGrantRoleResponse> {
        let r = req.get_ref().clone();
        self.change(&req, Change::UserGrantRole(r)).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header: self.header() }))
    }

    async fn user_revoke_role(&self, req: Request<AuthUserRevokeRoleRequest>) -> Answer<AuthUserRevokeRoleResponse> {
        let r = req.get_ref().clone();
        self.change(&req, Change::UserRevokeRole(r)).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header: self.header() }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Answer<AuthRoleAddResponse> {
        let r = req.get_ref().clone();
        self.change(&req, Change::RoleAdd(r)).await?;
        Ok(Response::new(AuthRoleAddResponse { header: self.header() }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Answer<AuthRoleGetResponse> {
        let role = req.get_ref().role.clone();
        // A user may read the roles it has.
        let has = |a: &AuthStore, u: &str| a.user(u).is_ok_and(|x| x.roles.contains(&role));
        let perm = self.read(&req, has, |a| Ok(a.role(&role)?.key_permission.clone())).await?;
        Ok(Response::new(AuthRoleGetResponse { header: self.header(), perm }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Answer<AuthRoleListResponse> {
        let roles = self.read(&req, |_, _| false, |a| Ok(a.role_names())).await?;
        Ok(Response::new(AuthRoleListResponse { header: self.header(), roles }))
    }

    async fn role_delete(&self, req: Request<AuthRoleDeleteRequest>) -> Answer<AuthRoleDeleteResponse> {
        let r = req.get_ref().clone();
        self.change(&req, Change::RoleDelete(r)).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header: self.header() }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Answer<AuthRoleGrantPermissionResponse> {
        let r = req.get_ref().clone();
        if r.perm.is_none() {
            return Err(Error::PermissionNotGiven.into());
        }
        self.change(&req, Change::RoleGrantPermission(r)).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header: self.header() }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Answer<AuthRoleRevokePermissionResponse> {
        let r = req.get_ref().clone();
        self.change(&req, Change::RoleRevokePermission(r)).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header: self.header() }))
    }
}
