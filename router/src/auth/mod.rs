//! etcd's auth for the whole federation, enforced by the router. The
//! federation has one auth store (users, roles, permissions, one auth
//! revision) kept in placement's store (`store`) and followed by every
//! router; a router finds who calls (`Gate::caller`: the user of the
//! request's token, else the common name of its verified client
//! certificate, as etcd) and checks each call against the store as it was
//! then, with the same functions a group uses (`tessera_rpc::auth`) — a
//! range over several groups, a merged watch and a cross-group txn are
//! checked whole, before any group is asked. The groups' own auth stays
//! off: their client ports serve routers (see docs/architecture.md).
//! etcd's Auth service for the federation is `service`.
//!
//! Locks: the token cache is a leaf, never held across an await.

mod service;
mod store;

pub use service::FederationAuth;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{AuthKeys, StateRx};
use tessera_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};
use tessera_proto::tessera::command::Forwarded;
use tessera_rpc::auth::jwt::Jwt;
use tessera_rpc::auth::{Access, AuthStore};
use tessera_rpc::tls::ClientIdentity;
use tessera_rpc::Error;
use tonic::{Request, Status};

/// How long a simple token's user is taken from this router's cache
/// before placement's store is asked again (a token ended elsewhere —
/// its user deleted, or a new password — stops working within this).
const TOKEN_RECHECK: Duration = Duration::from_secs(1);

/// How the federation's callers authenticate, from the router's flags.
pub struct Settings {
    /// JWT keys (`--auth-token jwt,...`); None: simple tokens.
    pub jwt: Option<Arc<Jwt>>,
    /// A simple token's life unless used (`--auth-token-ttl`).
    pub token_ttl: Duration,
    /// bcrypt's cost for new passwords (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
}

struct CachedToken {
    user: String,
    lease: i64,
    checked: Instant,
    renewed: Instant,
}

/// The federation's auth store as this router follows it.
pub struct Gate {
    state: StateRx,
    keys: AuthKeys,
    settings: Settings,
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl Gate {
    /// Starts following the auth store in placement's `store`.
    pub fn new(store: shardmap::store::Store, settings: Settings) -> Arc<Gate> {
        let (keys, state) = AuthKeys::follow(store);
        Arc::new(Gate { state, keys, settings, tokens: Mutex::new(HashMap::new()) })
    }

    /// The store as last seen. Until it has been read once nothing is
    /// served: auth may be on.
    fn current(&self) -> Result<Arc<AuthStore>, Status> {
        self.state.borrow().clone().ok_or_else(|| Status::unavailable("tessera: the federation's auth store is not loaded yet"))
    }

    /// Who sent `req`, and the store it is checked against.
    pub async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let store = self.current()?;
        if !store.enabled() {
            return Ok(Caller { user: String::new(), store });
        }
        let meta = req.metadata();
        let token = meta.get("token").or_else(|| meta.get("authorization")).and_then(|t| t.to_str().ok());
        let user = match (token, &self.settings.jwt) {
            (Some(t), Some(jwt)) => {
                let (user, signed_at) = jwt.verify(t).ok_or(Error::InvalidAuthToken)?;
                // etcd: a token signed before an auth change no longer speaks for its user.
                if signed_at < store.revision() {
                    return Err(Error::AuthOldRevision.into());
                }
                user
            }
            (Some(t), None) => self.token_user(t).await?,
            (None, _) => req.extensions().get::<ClientIdentity>().and_then(|i| i.common_name.clone()).unwrap_or_default(),
        };
        Ok(Caller { user, store })
    }

    /// The user of a simple token (cached briefly), its life renewed as etcd's.
    async fn token_user(&self, token: &str) -> Result<String, Status> {
        let now = Instant::now();
        let renew = {
            let mut cache = self.tokens.lock();
            match cache.get_mut(token) {
                Some(c) if now.duration_since(c.checked) < TOKEN_RECHECK => {
                    let due = now.duration_since(c.renewed) > self.settings.token_ttl / 3;
                    if due {
                        c.renewed = now;
                    }
                    let user = c.user.clone();
                    (due, c.lease, Some(user))
                }
                _ => (false, 0, None),
            }
        };
        if let (due, lease, Some(user)) = renew {
            if due {
                let keys = self.keys.clone();
                tokio::spawn(async move {
                    if let Err(e) = keys.renew(lease).await {
                        tracing::debug!(error = %e, "auth token not renewed");
                    }
                });
            }
            return Ok(user);
        }
        let (user, lease) = self.keys.token(token).await?.ok_or(Error::InvalidAuthToken)?;
        let mut cache = self.tokens.lock();
        if cache.len() > 100_000 {
            cache.retain(|_, c| now.duration_since(c.checked) < TOKEN_RECHECK);
        }
        cache.insert(token.to_string(), CachedToken { user: user.clone(), lease, checked: now, renewed: now });
        Ok(user)
    }
}

tokio::task_local! {
    /// The caller of the client call being served, passed to the groups
    /// with every call made for it (`Backends::request`). A task-local, as
    /// the call's identity belongs to the whole call and not to each of the
    /// functions routing it.
    static ACTING_FOR: Forwarded;
}

/// The caller the current call is made for, if a service said so.
pub(crate) fn acting_for() -> Option<Forwarded> {
    ACTING_FOR.try_with(|f| f.clone()).ok()
}

impl Gate {
    /// Runs a write `caller` asked for: each group it reaches is told who
    /// asked and the auth revision they were checked at, and refuses the
    /// write if it logged a newer auth store first (`crate::auth::federation`
    /// on the node). Such a refusal means this router is behind: it reads
    /// the store again so the client's retry is checked by the new one.
    pub async fn write_for<R>(&self, caller: &Caller, f: impl Future<Output = Result<R, Status>>) -> Result<R, Status> {
        let Some(forwarded) = caller.forwarded() else { return f.await };
        let out = ACTING_FOR.scope(forwarded, f).await;
        if let Err(s) = &out {
            if Error::from_status(s) == Some(Error::AuthOldRevision) {
                if let Err(e) = self.keys.read().await {
                    tracing::debug!(error = %e, "auth store not read again after a group's newer one");
                }
            }
        }
        out
    }
}

/// The caller of one request, and the auth store it is checked against.
#[derive(Clone)]
pub struct Caller {
    /// Empty: nobody (checks answer etcd's "user name is empty").
    user: String,
    store: Arc<AuthStore>,
}

impl Caller {
    pub fn check(&self, key: &[u8], range_end: &[u8], access: Access) -> Result<(), Status> {
        Ok(self.store.permitted(&self.user, key, range_end, access)?)
    }

    /// etcd's admin-only calls (the root role).
    pub fn admin(&self) -> Result<(), Status> {
        Ok(self.store.admin(&self.user)?)
    }

    pub fn put(&self, r: &PutRequest) -> Result<(), Status> {
        Ok(self.store.check_put(&self.user, r)?)
    }

    pub fn delete(&self, r: &DeleteRangeRequest) -> Result<(), Status> {
        Ok(self.store.check_delete(&self.user, r)?)
    }

    pub fn txn(&self, r: &TxnRequest) -> Result<(), Status> {
        Ok(self.store.check_txn(&self.user, r)?)
    }

    pub fn recipe(&self, name: &[u8], access: &[Access]) -> Result<(), Status> {
        Ok(self.store.check_recipe(&self.user, name, access)?)
    }

    /// Whether anything is checked (auth on).
    pub fn checked(&self) -> bool {
        self.store.enabled()
    }

    /// What the groups are told of this caller (None while the federation
    /// never had an auth store: nothing to be newer than).
    fn forwarded(&self) -> Option<Forwarded> {
        (self.store.revision() > 0).then(|| Forwarded { user: self.user.clone(), auth_revision: self.store.revision() })
    }
}
