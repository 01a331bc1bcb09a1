//! etcd's Auth service for the federation (`tessera_rpc::auth::service`
//! over this backend): every change is one compare-and-swap of the auth
//! store in placement's store, checked against the state it changes; reads
//! are linearizable reads of it, and it is installed on every group before
//! a change is answered. Authenticate hands out a JWT signed by this
//! router, or a simple token stored for every router.

use super::Gate;
use crate::backends::{Access, Backends};
use crate::deadline::Deadline;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tessera_proto::etcdserverpb::ResponseHeader;
use tessera_proto::tessera::command::{auth_change::Change, AuthChange};
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_rpc::auth::service::AuthBackend;
use tessera_rpc::auth::{simple_token, AuthApplied, AuthStore};
use tessera_rpc::Error;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct FederationAuth {
    pub gate: Arc<Gate>,
    pub backends: Arc<Backends>,
    /// Simple tokens this router handed out.
    pub issued: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl AuthBackend for FederationAuth {
    async fn caller<T: Send + Sync>(&self, req: &Request<T>) -> Result<String, Status> {
        Ok(self.gate.caller(req).await?.user)
    }

    async fn change(&self, change: Change, admin: Option<String>) -> Result<AuthApplied, Status> {
        let change = AuthChange { change: Some(change) };
        let allowed = |store: &AuthStore| admin.as_ref().map_or(Ok(()), |u| store.admin(u));
        let (applied, store) = self.gate.keys.change(&change, allowed).await?;
        install_everywhere(&self.backends, &store).await?;
        Ok(applied)
    }

    async fn read(&self) -> Result<Arc<AuthStore>, Status> {
        self.gate.keys.read().await
    }

    async fn issue_token(&self, user: &str, revision: u64) -> Result<String, Status> {
        if let Some(jwt) = &self.gate.settings.jwt {
            // Signed here, checked by any router with the public key.
            return Ok(jwt
                .sign(user, revision)
                .ok_or_else(|| Error::Internal("this router cannot sign auth tokens (no priv-key in --auth-token)".into()))?);
        }
        let token = simple_token(self.issued.fetch_add(1, Ordering::Relaxed) + 1);
        self.gate.keys.put_token(&token, user, self.gate.settings.token_ttl).await?;
        Ok(token)
    }

    async fn header<T: Send + Sync>(&self, req: &Request<T>) -> Result<ResponseHeader, Status> {
        Ok(self.backends.header(self.backends.now(Deadline::of(req)).await?))
    }

    fn bcrypt_cost(&self) -> u32 {
        self.gate.settings.bcrypt_cost
    }
}

/// Installs `store` on every group before a change is answered: a write
/// checked by a router that had not yet seen the change is then refused by
/// whichever group it reaches (etcd's "revision of auth store is old"), as
/// etcd refuses one applied after the change. A group that cannot be
/// reached fails the change's answer (it is made, as etcd's timed-out
/// requests may be) until the group has it.
async fn install_everywhere(b: &Backends, store: &AuthStore) -> Result<(), Status> {
    let state = store.to_state();
    let groups: Vec<u64> = b.routing()?.map.groups.keys().copied().collect();
    let deadline = Deadline::default_from_now();
    let install = |g: u64| {
        let state = state.clone();
        async move {
            let call = |ch, req| async move { ShardClient::new(ch).install_auth(req).await };
            b.call(g, Access::Read, deadline, state, call).await
        }
    };
    for answer in futures::future::join_all(groups.iter().map(|g| install(*g))).await {
        answer?;
    }
    Ok(())
}
