//! A state-machine snapshot is every key of the group's state tables
//! (MVCC revisions, leases, meta, members), length-prefixed:
//! `[u32 BE key len][key][u32 BE value len][value]...`, keys without the
//! group prefix so a snapshot can be installed under another group id.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Result};

pub fn encode_state(engine: &dyn Engine, keys: &GroupKeys) -> Result<Vec<u8>> {
    let mut out = vec![];
    for t in GroupKeys::STATE_TABLES {
        let (start, end) = keys.table(t);
        engine.scan(&start, &end, &mut |k, v| {
            let k = &k[8..]; // keep the table byte
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
            true
        })?;
    }
    Ok(out)
}

/// Replaces the group's state tables with the snapshot's content in `batch`.
pub fn install_state(keys: &GroupKeys, data: &[u8], batch: &mut WriteBatch) -> Result<()> {
    for t in GroupKeys::STATE_TABLES {
        let (start, end) = keys.table(t);
        batch.delete_range(start, end);
    }
    let prefix = keys.group().to_be_bytes();
    let mut rest = data;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>> {
        let bad = || Error::Internal("corrupt snapshot".into());
        let len_bytes: [u8; 4] = rest.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let v = rest.get(4..4 + len).ok_or_else(bad)?.to_vec();
        *rest = &rest[4 + len..];
        Ok(v)
    };
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        let mut full = prefix.to_vec();
        full.extend_from_slice(&k);
        batch.put(full, v);
    }
    Ok(())
}
