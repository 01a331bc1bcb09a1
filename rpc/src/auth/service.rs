//! etcd's Auth service, once, over where an auth store lives
//! (`AuthBackend`): a group's (changes through its raft log) or the
//! federation's (changes by compare-and-swap in placement's store, at a
//! router). What etcd decides per request is here: who may change or read
//! what (the root role while auth is on; a user may read itself and its
//! roles), empty names, passwords hashed with bcrypt before anything
//! leaves the server, Authenticate's checks.

use super::{AuthApplied, AuthStore};
use crate::errors::Error;
use std::sync::Arc;
use tessera_proto::etcdserverpb::auth_server::Auth;
use tessera_proto::etcdserverpb::*;
use tessera_proto::tessera::command::auth_change::Change;
use tonic::{Request, Response, Status};

/// Where an auth store lives, and how its server answers.
#[tonic::async_trait]
pub trait AuthBackend: Clone + Send + Sync + 'static {
    /// Who sent `req` (empty: nobody; anyone while auth is off).
    async fn caller<T: Send + Sync>(&self, req: &Request<T>) -> Result<String, Status>;
    /// Applies `change`; with `admin`, only if that user may (etcd's root
    /// role, checked against the store the change applies to).
    async fn change(&self, change: Change, admin: Option<String>) -> Result<AuthApplied, Status>;
    /// The store as it is now (a linearizable read).
    async fn read(&self) -> Result<Arc<AuthStore>, Status>;
    /// A token for `user`, who just showed its password, at auth revision `revision`.
    async fn issue_token(&self, user: &str, revision: u64) -> Result<String, Status>;
    /// The header of an answer to `req`.
    async fn header<T: Send + Sync>(&self, req: &Request<T>) -> Result<ResponseHeader, Status>;
    /// bcrypt's cost for new passwords (etcd's --bcrypt-cost).
    fn bcrypt_cost(&self) -> u32;
}

/// etcd's Auth service over `B`.
#[derive(Clone)]
pub struct AuthApi<B>(pub B);

type Answer<T> = Result<Response<T>, Status>;

impl<B: AuthBackend> AuthApi<B> {
    /// Applies `change`, by an admin while auth is on.
    async fn change<T: Send + Sync>(&self, req: &Request<T>, change: Change) -> Result<AuthApplied, Status> {
        let user = self.0.caller(req).await?;
        self.0.change(change, Some(user)).await
    }

    /// A linearizable read of the store, by an admin (or `also`'s exception).
    async fn read<T: Send + Sync, R>(
        &self,
        req: &Request<T>,
        also: impl Fn(&AuthStore, &str) -> bool,
        f: impl FnOnce(&AuthStore) -> Result<R, Error>,
    ) -> Result<R, Status> {
        let store = self.0.read().await?;
        if store.enabled() {
            let user = self.0.caller(req).await?;
            if !also(&store, &user) {
                store.admin(&user)?;
            }
        }
        Ok(f(&store)?)
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.0.bcrypt_cost();
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn header<T: Send + Sync>(&self, req: &Request<T>) -> Result<Option<ResponseHeader>, Status> {
        Ok(Some(self.0.header(req).await?))
    }
}

#[tonic::async_trait]
impl<B: AuthBackend> Auth for AuthApi<B> {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Answer<AuthEnableResponse> {
        // Enabling needs no caller (auth is off until it is on).
        self.0.change(Change::Enable(AuthEnableRequest {}), None).await?;
        Ok(Response::new(AuthEnableResponse { header: self.header(&req).await? }))
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Answer<AuthDisableResponse> {
        self.change(&req, Change::Disable(AuthDisableRequest {})).await?;
        Ok(Response::new(AuthDisableResponse { header: self.header(&req).await? }))
    }

    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> Answer<AuthStatusResponse> {
        let store = self.0.read().await?;
        let header = self.header(&req).await?;
        Ok(Response::new(AuthStatusResponse { header, enabled: store.enabled(), auth_revision: store.revision() }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Answer<AuthenticateResponse> {
        let r = req.get_ref();
        let store = self.0.read().await?;
        if !store.enabled() {
            return Err(Error::AuthNotEnabled.into());
        }
        let hash = store.password_hash(&r.name)?.ok_or(Error::AuthFailed)?;
        let password = r.password.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !ok {
            return Err(Error::AuthFailed.into());
        }
        let token = self.0.issue_token(&r.name, store.revision()).await?;
        Ok(Response::new(AuthenticateResponse { header: self.header(&req).await?, token }))
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
        Ok(Response::new(AuthUserAddResponse { header: self.header(&req).await? }))
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Answer<AuthUserGetResponse> {
        let name = req.get_ref().name.clone();
        // A user may read itself.
        let roles = self.read(&req, |_, u| u == name, |a| Ok(a.user(&name)?.roles.clone())).await?;
        Ok(Response::new(AuthUserGetResponse { header: self.header(&req).await?, roles }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Answer<AuthUserListResponse> {
        let users = self.read(&req, |_, _| false, |a| Ok(a.user_names())).await?;
        Ok(Response::new(AuthUserListResponse { header: self.header(&req).await?, users }))
    }

    async fn user_delete(&self, req: Request<AuthUserDeleteRequest>) -> Answer<AuthUserDeleteResponse> {
        self.change(&req, Change::UserDelete(req.get_ref().clone())).await?;
        Ok(Response::new(AuthUserDeleteResponse { header: self.header(&req).await? }))
    }

    async fn user_change_password(&self, req: Request<AuthUserChangePasswordRequest>) -> Answer<AuthUserChangePasswordResponse> {
        let mut r = req.get_ref().clone();
        if r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        self.change(&req, Change::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header: self.header(&req).await? }))
    }

    async fn user_grant_role(&self, req: Request<AuthUserGrantRoleRequest>) -> Answer<AuthUserGrantRoleResponse> {
        self.change(&req, Change::UserGrantRole(req.get_ref().clone())).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header: self.header(&req).await? }))
    }

    async fn user_revoke_role(&self, req: Request<AuthUserRevokeRoleRequest>) -> Answer<AuthUserRevokeRoleResponse> {
        self.change(&req, Change::UserRevokeRole(req.get_ref().clone())).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header: self.header(&req).await? }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Answer<AuthRoleAddResponse> {
        self.change(&req, Change::RoleAdd(req.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleAddResponse { header: self.header(&req).await? }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Answer<AuthRoleGetResponse> {
        let role = req.get_ref().role.clone();
        // A user may read the roles it has.
        let has = |a: &AuthStore, u: &str| a.user(u).is_ok_and(|x| x.roles.contains(&role));
        let perm = self.read(&req, has, |a| Ok(a.role(&role)?.key_permission.clone())).await?;
        Ok(Response::new(AuthRoleGetResponse { header: self.header(&req).await?, perm }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Answer<AuthRoleListResponse> {
        let roles = self.read(&req, |_, _| false, |a| Ok(a.role_names())).await?;
        Ok(Response::new(AuthRoleListResponse { header: self.header(&req).await?, roles }))
    }

    async fn role_delete(&self, req: Request<AuthRoleDeleteRequest>) -> Answer<AuthRoleDeleteResponse> {
        self.change(&req, Change::RoleDelete(req.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header: self.header(&req).await? }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Answer<AuthRoleGrantPermissionResponse> {
        if req.get_ref().perm.is_none() {
            return Err(Error::PermissionNotGiven.into());
        }
        self.change(&req, Change::RoleGrantPermission(req.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header: self.header(&req).await? }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Answer<AuthRoleRevokePermissionResponse> {
        self.change(&req, Change::RoleRevokePermission(req.get_ref().clone())).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header: self.header(&req).await? }))
    }
}
