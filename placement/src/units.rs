//! Size and load per placement unit, gathered from every replica of every
//! group (`Shard.Units`): what `tessera top` shows and rebalancing reads.

use crate::api::{UnitRow, UnitsReport};
use crate::error::Result;
use crate::members::group_request;
use crate::ops::Placement;
use std::collections::BTreeMap;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::{UnitsRequest, UnitsResponse};

async fn units_on(dialer: &tessera_rpc::tls::Dialer, url: &str, group: u64, depth: usize) -> Option<UnitsResponse> {
    let ch = shardmap::watcher::channel(url, dialer).await.ok()?;
    let req = group_request(group, UnitsRequest { depth: depth as u32 });
    Some(ShardClient::new(ch).units(req).await.ok()?.into_inner())
}

impl Placement {
    pub async fn units(&self) -> Result<UnitsReport> {
        let map = self.map().await?;
        let mut rows: BTreeMap<(String, u64), UnitRow> = BTreeMap::new();
        let mut partial = vec![];
        for id in map.groups.keys() {
            let urls: Vec<String> = map.replica_urls(*id).into_iter().map(|(_, u)| u.to_string()).collect();
            let answers = futures::future::join_all(urls.iter().map(|u| units_on(self.dialer(), u, *id, map.depth))).await;
            if answers.iter().any(Option::is_none) {
                partial.push(*id);
            }
            for u in answers.into_iter().flatten().flat_map(|a| a.units) {
                let unit = String::from_utf8_lossy(&u.unit).into_owned();
                let row = rows.entry((unit.clone(), *id)).or_insert_with(|| UnitRow { unit, group: *id, ..Default::default() });
                // Replicas agree on what is stored (up to their apply lag)
                // and on writes; each serves its own reads.
                row.keys = row.keys.max(u.keys);
                row.bytes = row.bytes.max(u.bytes);
                row.writes = row.writes.max(u.writes);
                row.reads += u.reads;
            }
        }
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Ok(UnitsReport { epoch: map.epoch, at_ms, units: rows.into_values().collect(), partial })
    }
}
