//! Changing the map in placement's store: read it, change a copy, write it
//! back with a compare on its mod revision (retrying when another writer
//! came first). Each change raises the epoch.

use crate::map::ShardMap;
use crate::watcher::{channel, FetchError};
use crate::MAP_KEY;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The change itself was refused (the reason is for the caller's user).
    #[error("{0}")]
    Refused(String),
}

/// Applies `change` to the current map (a default map if none exists) and
/// stores the result if `change` returned true. Returns the stored map.
pub async fn update(url: &str, mut change: impl FnMut(&mut ShardMap) -> Result<bool, String>) -> Result<ShardMap, UpdateError> {
    let mut kv = KvClient::new(channel(url).await?);
    let unreachable = |e: tonic::Status| FetchError::Unreachable(format!("{url}: {}", e.message()));
    loop {
        let resp =
            kv.range(RangeRequest { key: MAP_KEY.to_vec(), ..Default::default() }).await.map_err(unreachable)?.into_inner();
        let (mut map, mod_rev) = match resp.kvs.into_iter().next() {
            Some(kv) => (serde_json::from_slice::<ShardMap>(&kv.value).map_err(FetchError::Decode)?, kv.mod_revision),
            None => (ShardMap::default(), 0),
        };
        if !change(&mut map).map_err(UpdateError::Refused)? {
            return Ok(map);
        }
        map.epoch += 1;
        let value = serde_json::to_vec_pretty(&map).map_err(FetchError::Decode)?;
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: MAP_KEY.to_vec(),
                target_union: Some(TargetUnion::ModRevision(mod_rev)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest { key: MAP_KEY.to_vec(), value, ..Default::default() })),
            }],
            failure: vec![],
        };
        if kv.txn(txn).await.map_err(unreachable)?.into_inner().succeeded {
            return Ok(map);
        }
    }
}
