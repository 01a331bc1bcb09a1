//! A state-machine snapshot is every key of the group's state tables
//! (MVCC revisions, leases, meta, members), length-prefixed:
//! `[u32 BE key len][key][u32 BE value len][value]...`, keys without the
//! group prefix so a snapshot can be installed under another group id.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Result};

/// The group's state tables, read in one scan (one consistent view).
pub fn encode_state(engine: &dyn Engine, keys: &GroupKeys) -> Result<Vec<u8>> {
    let mut out = vec![];
    let (start, _) = keys.table(0);
    let (_, end) = keys.table(0xfe);
    engine.scan(&start, &end, &mut |k, v| {
        if !GroupKeys::STATE_TABLES.contains(&k[8]) {
            return true;
        }
        let k = &k[8..]; // keep the table byte
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
        true
    })?;
    Ok(out)
}

const BACKUP_MAGIC: &[u8; 16] = b"TESSERA-BACKUP-1";

/// A backup file (Maintenance.Snapshot): magic, state length, state, zero
/// padding, and a sha256 of all before it. The padding makes the size
/// 512·n + 32, the shape etcdctl's `snapshot save` checks for.
pub fn encode_backup(state: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = BACKUP_MAGIC.to_vec();
    out.extend_from_slice(&(state.len() as u64).to_be_bytes());
    out.extend_from_slice(state);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The state inside a backup file, after checking its integrity.
pub fn decode_backup(file: &[u8]) -> Result<&[u8]> {
    use sha2::Digest;
    let bad = |why: &str| Error::Internal(format!("not a valid tessera backup: {why}"));
    if file.len() < 32 + 24 || !(file.len() - 32).is_multiple_of(512) {
        return Err(bad("size"));
    }
    let (body, sum) = file.split_at(file.len() - 32);
    if sha2::Sha256::digest(body).as_slice() != sum {
        return Err(bad("sha256 mismatch"));
    }
    if &body[..16] != BACKUP_MAGIC {
        return Err(bad("magic"));
    }
    let len = u64::from_be_bytes(body[16..24].try_into().expect("8 bytes")) as usize;
    body.get(24..24 + len).ok_or_else(|| bad("length"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_round_trip_and_corruption() {
        let state = b"some state".to_vec();
        let file = encode_backup(&state);
        assert_eq!(file.len() % 512, 32, "etcdctl's checksum shape");
        assert_eq!(decode_backup(&file).unwrap(), &state[..]);
        let mut bad = file.clone();
        bad[20] ^= 1;
        assert!(decode_backup(&bad).is_err());
    }
}
