//! The federation's auth store where it lives: two kinds of keys in
//! placement's store, beside the map. The store itself (users, roles,
//! permissions, enabled, auth revision) is one value, `STATE_KEY`, changed
//! only by compare-and-swap on its mod revision, so every change is one
//! step of one auth revision whichever router made it; every router follows
//! it by watch. Simple tokens are keys under `TOKENS_PREFIX` naming their
//! user, each on a lease of the token's TTL (renewed as the token is used),
//! so any router accepts a token another one handed out.

use prost::Message;
use shardmap::store::{Store, UpdateError};
use shardmap::watcher::{FetchError, Followed};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};
use tessera_proto::tessera::command::{AuthChange, AuthState};
use tessera_rpc::auth::{AuthApplied, AuthStore};
use tessera_rpc::Error;
use tokio::sync::watch;
use tonic::Status;

pub const STATE_KEY: &[u8] = shardmap::AUTH_STATE_KEY;
pub const TOKENS_PREFIX: &[u8] = b"/tessera/auth/tokens/";

pub type StateRx = watch::Receiver<Option<Arc<AuthStore>>>;

/// Placement's store unreachable, or holding what cannot be decoded.
fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("tessera: placement's store (auth): {e}"))
}

fn decode(value: &[u8]) -> Result<AuthStore, FetchError> {
    let state = AuthState::decode(value).map_err(|e| FetchError::Malformed(format!("auth state: {e}")))?;
    Ok(AuthStore::from_state(state))
}

/// The auth state key, followed: the newest auth revision wins.
struct FollowedState(watch::Sender<Option<Arc<AuthStore>>>);

impl Followed for FollowedState {
    fn key(&self) -> &[u8] {
        STATE_KEY
    }

    fn take(&mut self, value: &[u8], _cluster: u64) -> Result<(), FetchError> {
        publish(&self.0, decode(value)?);
        Ok(())
    }

    /// Never written: the empty store (auth off, revision 0).
    fn absent(&mut self) {
        publish(&self.0, AuthStore::default());
    }

    fn done(&self) -> bool {
        self.0.is_closed()
    }
}

/// Publishes `store` unless this router already has its revision (or a newer one).
fn publish(tx: &watch::Sender<Option<Arc<AuthStore>>>, store: AuthStore) {
    if tx.borrow().is_some() {
        fail::fail_point!("auth::publish", |_| ());
    }
    tx.send_if_modified(|cur| {
        if cur.as_ref().is_some_and(|c| c.revision() >= store.revision()) {
            return false;
        }
        tracing::info!(auth_revision = store.revision(), enabled = store.enabled(), "auth store updated");
        *cur = Some(Arc::new(store));
        true
    });
}

#[derive(Clone, Debug)]
pub struct AuthKeys {
    store: Store,
    tx: Arc<watch::Sender<Option<Arc<AuthStore>>>>,
}

impl AuthKeys {
    /// Starts following the auth state in `store`.
    pub fn follow(store: Store) -> (AuthKeys, StateRx) {
        let (tx, rx) = watch::channel(None);
        let keys = AuthKeys { store: store.clone(), tx: Arc::new(tx.clone()) };
        tokio::spawn(shardmap::watcher::follow_key(store.endpoints().to_vec(), store.dialer().clone(), FollowedState(tx)));
        (keys, rx)
    }

    /// The store as it is now (a linearizable read), published to this router.
    pub async fn read(&self) -> Result<Arc<AuthStore>, Status> {
        let (mut kv, url) = self.store.client().await.map_err(unavailable)?;
        let resp = kv
            .range(RangeRequest { key: STATE_KEY.to_vec(), ..Default::default() })
            .await
            .map_err(|e| unavailable(format!("{url}: {}", e.message())))?
            .into_inner();
        let store = match resp.kvs.first() {
            Some(kv) => decode(&kv.value).map_err(unavailable)?,
            None => AuthStore::default(),
        };
        publish(&self.tx, store.clone());
        Ok(Arc::new(store))
    }

    /// Applies `change` to the stored state if `allowed` (checked against
    /// the state it applies to), as one compare-and-swap; publishes the result.
    pub async fn change(
        &self,
        change: &AuthChange,
        allowed: impl Fn(&AuthStore) -> Result<(), Error>,
    ) -> Result<(AuthApplied, Arc<AuthStore>), Status> {
        let outcome = self
            .store
            .update_key(STATE_KEY, |value| {
                let mut store = match value {
                    Some(v) => decode(v).map_err(unavailable)?,
                    None => AuthStore::default(),
                };
                allowed(&store).map_err(Status::from)?;
                let applied = store.apply(change).map_err(Status::from)?;
                let unchanged = applied == AuthApplied::Done && value.is_some_and(|v| *v == store.to_state().encode_to_vec());
                let new_value = (!unchanged).then(|| store.to_state().encode_to_vec());
                Ok((new_value, (applied, store)))
            })
            .await;
        let (applied, store) = match outcome {
            Ok(done) => done,
            Err(UpdateError::Refused(e)) => return Err(e),
            Err(UpdateError::Store(e)) => return Err(unavailable(e)),
        };
        publish(&self.tx, store.clone());
        if let AuthApplied::UserChanged(user) = &applied {
            self.drop_tokens(user).await?;
        }
        Ok((applied, Arc::new(store)))
    }

    /// Stores a simple token for `user`, living `ttl` unless used.
    pub async fn put_token(&self, token: &str, user: &str, ttl: Duration) -> Result<(), Status> {
        let (mut kv, url) = self.store.client().await.map_err(unavailable)?;
        let gone = |e: Status| unavailable(format!("{url}: {}", e.message()));
        let mut leases = LeaseClient::new(self.channel().await?);
        let lease = leases
            .lease_grant(LeaseGrantRequest { ttl: ttl.as_secs().max(1) as i64, id: 0 })
            .await
            .map_err(&gone)?
            .into_inner()
            .id;
        let key = [TOKENS_PREFIX, token.as_bytes()].concat();
        kv.put(PutRequest { key, value: user.as_bytes().to_vec(), lease, ..Default::default() }).await.map_err(&gone)?;
        Ok(())
    }

    /// The user a live token was handed to, and its lease.
    pub async fn token(&self, token: &str) -> Result<Option<(String, i64)>, Status> {
        let (mut kv, url) = self.store.client().await.map_err(unavailable)?;
        let key = [TOKENS_PREFIX, token.as_bytes()].concat();
        let resp = kv
            .range(RangeRequest { key, ..Default::default() })
            .await
            .map_err(|e| unavailable(format!("{url}: {}", e.message())))?
            .into_inner();
        Ok(resp.kvs.first().map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease)))
    }

    /// Renews a token's life (its lease) once.
    pub async fn renew(&self, lease: i64) -> Result<(), Status> {
        let mut leases = LeaseClient::new(self.channel().await?);
        let one = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
        let mut answers = leases.lease_keep_alive(one).await.map_err(|e| unavailable(e.message()))?.into_inner();
        let _ = answers.message().await;
        Ok(())
    }

    /// Ends every token of `user` (deleted, or given a new password).
    async fn drop_tokens(&self, user: &str) -> Result<(), Status> {
        let (mut kv, url) = self.store.client().await.map_err(unavailable)?;
        let gone = |e: Status| unavailable(format!("{url}: {}", e.message()));
        let end = prefix_end(TOKENS_PREFIX);
        let all = kv
            .range(RangeRequest { key: TOKENS_PREFIX.to_vec(), range_end: end, ..Default::default() })
            .await
            .map_err(&gone)?
            .into_inner();
        for t in all.kvs.iter().filter(|kv| kv.value == user.as_bytes()) {
            kv.delete_range(DeleteRangeRequest { key: t.key.clone(), ..Default::default() }).await.map_err(&gone)?;
        }
        Ok(())
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, Status> {
        self.store.channel().await.map(|(ch, _)| ch).map_err(unavailable)
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
