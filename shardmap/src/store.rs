//! The map in placement's store (any etcd API: a standalone Tessera group
//! in `tessera dev`): read it, or change a copy and write it back with a
//! compare on its mod revision, retrying when another writer came first.
//! Each change raises the epoch.

use crate::map::ShardMap;
use crate::watcher::{channel, FetchError};
use crate::MAP_KEY;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error(transparent)]
    Store(#[from] FetchError),
    /// The change itself was refused (the caller's reason).
    #[error("{0}")]
    Refused(E),
}

/// Placement's store, reached through any of its members.
#[derive(Clone, Debug)]
pub struct Store {
    endpoints: Vec<String>,
    dialer: tessera_rpc::tls::Dialer,
}

impl Store {
    pub fn new(endpoints: Vec<String>, dialer: tessera_rpc::tls::Dialer) -> Self {
        Store { endpoints, dialer }
    }

    /// How this process reaches the store (and the nodes).
    pub fn dialer(&self) -> &tessera_rpc::tls::Dialer {
        &self.dialer
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn kv(&self) -> Result<(KvClient<Channel>, &str), FetchError> {
        let (ch, url) = self.channel().await?;
        Ok((KvClient::new(ch), url))
    }

    /// The current map (a default one if none is stored yet) and its mod
    /// revision. A map without a cluster id takes the store's.
    async fn current(&self, kv: &mut KvClient<Channel>, url: &str) -> Result<(ShardMap, i64), FetchError> {
        let resp = kv
            .range(RangeRequest { key: MAP_KEY.to_vec(), ..Default::default() })
            .await
            .map_err(|e| FetchError::Unreachable(format!("{url}: {}", e.message())))?
            .into_inner();
        let store_cluster = resp.header.map_or(0, |h| h.cluster_id);
        let (mut map, rev) = match resp.kvs.into_iter().next() {
            Some(kv) => (serde_json::from_slice::<ShardMap>(&kv.value)?, kv.mod_revision),
            None => (ShardMap::default(), 0),
        };
        if map.cluster_id == 0 {
            map.cluster_id = store_cluster;
        }
        Ok((map, rev))
    }

    /// The map as the store has it now (linearizable).
    pub async fn read(&self) -> Result<ShardMap, FetchError> {
        let (mut kv, url) = self.kv().await?;
        Ok(self.current(&mut kv, url).await?.0)
    }

    /// Applies `change` to the current map and stores the result if
    /// `change` returned true. Returns the stored map.
    pub async fn update<E>(&self, mut change: impl FnMut(&mut ShardMap) -> Result<bool, E>) -> Result<ShardMap, UpdateError<E>> {
        let (mut kv, url) = self.kv().await?;
        loop {
            let (mut map, mod_rev) = self.current(&mut kv, url).await?;
            if !change(&mut map).map_err(UpdateError::Refused)? {
                return Ok(map);
            }
            map.epoch += 1;
            let value = serde_json::to_vec_pretty(&map).map_err(FetchError::Decode)?;
            if swap(&mut kv, url, MAP_KEY, mod_rev, value).await? {
                return Ok(map);
            }
        }
    }

    /// Compare-and-swap of any key of the store: `change` gets its value
    /// (None: absent) and answers the new one (None: leave it); retried
    /// when another writer came first. Answers what `change` answered last.
    pub async fn update_key<E, R>(
        &self,
        key: &[u8],
        mut change: impl FnMut(Option<&[u8]>) -> Result<(Option<Vec<u8>>, R), E>,
    ) -> Result<R, UpdateError<E>> {
        let (mut kv, url) = self.kv().await?;
        loop {
            let resp = kv
                .range(RangeRequest { key: key.to_vec(), ..Default::default() })
                .await
                .map_err(|e| FetchError::Unreachable(format!("{url}: {}", e.message())))?
                .into_inner();
            let current = resp.kvs.first();
            let (value, answer) = change(current.map(|kv| kv.value.as_slice())).map_err(UpdateError::Refused)?;
            let Some(value) = value else { return Ok(answer) };
            if swap(&mut kv, url, key, current.map_or(0, |kv| kv.mod_revision), value).await? {
                return Ok(answer);
            }
        }
    }

    /// A channel to the first of the store's members that answers, and its URL.
    pub async fn channel(&self) -> Result<(Channel, &str), FetchError> {
        let mut last = FetchError::Unreachable("no store endpoint given".into());
        for url in &self.endpoints {
            match channel(url, &self.dialer).await {
                Ok(ch) => return Ok((ch, url)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A client of one of the store's members, and its URL.
    pub async fn client(&self) -> Result<(KvClient<Channel>, String), FetchError> {
        let (kv, url) = self.kv().await?;
        Ok((kv, url.to_string()))
    }
}

/// Puts `value` at `key` if the key's mod revision is still `mod_rev` (0: absent).
async fn swap(kv: &mut KvClient<Channel>, url: &str, key: &[u8], mod_rev: i64, value: Vec<u8>) -> Result<bool, FetchError> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::ModRevision(mod_rev)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(OpRequest::RequestPut(PutRequest { key: key.to_vec(), value, ..Default::default() })),
        }],
        failure: vec![],
    };
    let done = kv.txn(txn).await.map_err(|e| FetchError::Unreachable(format!("{url}: {}", e.message())))?;
    Ok(done.into_inner().succeeded)
}
