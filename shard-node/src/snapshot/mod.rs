//! A state-machine snapshot is every key of the group's state tables
//! (MVCC revisions, leases, meta, members), length-prefixed:
//! `[u32 BE key len][key][u32 BE value len][value]...`, keys without the
//! group prefix so a snapshot can be installed under another group id.
//! A backup file (`encode_backup`) is that, inside a bbolt database that
//! also holds the state as etcd's buckets (`bolt`, `etcd`).

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

pub mod bolt;
mod etcd;

/// The bucket of a backup file holding Tessera's own copy of the state.
const TESSERA_BUCKET: &[u8] = b"tessera";
const STATE_KEY: &[u8] = b"state";
/// Backups written before they were bbolt files (still restored).
const OLD_BACKUP_MAGIC: &[u8; 16] = b"TESSERA-BACKUP-1";

/// A backup file (Maintenance.Snapshot), as etcd's: a bbolt database with
/// etcd's buckets (`etcd`: the live history, leases, auth, meta) for
/// etcd's tools, Tessera's own copy of `state` in bucket `tessera` for
/// `--restore-from`, and a sha256 of it all appended (size 4096·n + 32,
/// the shape etcdctl's `snapshot save` checks for).
pub fn encode_backup(state: &[u8]) -> Result<Vec<u8>> {
    use sha2::Digest;
    let mut buckets = etcd::buckets(entries(state))?;
    buckets.push(bolt::Bucket { name: TESSERA_BUCKET.to_vec(), items: vec![(STATE_KEY.to_vec(), state.to_vec())] });
    let mut out = bolt::write(&buckets);
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
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
    backup_state(body)
}

/// The state inside a backup file's body (without its checksum).
pub fn backup_state(body: &[u8]) -> Result<&[u8]> {
    let bad = |why: String| Error::Internal(format!("not a valid tessera backup: {why}"));
    if let Some(old) = body.strip_prefix(OLD_BACKUP_MAGIC) {
        let len = old.get(..8).map(|l| u64::from_be_bytes(l.try_into().expect("8 bytes")) as usize);
        return len.and_then(|l| old.get(8..8usize.checked_add(l)?)).ok_or_else(|| bad("length".into()));
    }
    match bolt::get(body, TESSERA_BUCKET, STATE_KEY) {
        Ok(Some(state)) => Ok(state),
        Ok(None) => Err(bad("no Tessera state in it (an etcd snapshot? restore it with etcd's tools)".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The (key, value) pairs of a state snapshot, in order.
fn entries(data: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8])>> + Clone {
    let mut rest = data;
    let take = |rest: &mut &'_ [u8]| -> Result<usize> {
        let bad = || Error::Internal("corrupt snapshot".into());
        let len_bytes: [u8; 4] = rest.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        if rest.len() < 4 + len {
            return Err(bad());
        }
        Ok(len)
    };
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut next = || -> Result<(&[u8], &[u8])> {
            let kl = take(&mut rest)?;
            let k = &rest[4..4 + kl];
            rest = &rest[4 + kl..];
            let vl = take(&mut rest)?;
            let v = &rest[4..4 + vl];
            rest = &rest[4 + vl..];
            Ok((k, v))
        };
        let r = next();
        if r.is_err() {
            rest = &[]; // stop after the first error
        }
        Some(r)
    })
}

/// Replaces the group's state tables with the snapshot's content in `batch`.
pub fn install_state(keys: &GroupKeys, data: &[u8], batch: &mut WriteBatch) -> Result<()> {
    for t in GroupKeys::STATE_TABLES {
        let (start, end) = keys.table(t);
        batch.delete_range(start, end);
    }
    let prefix = keys.group().to_be_bytes();
    for e in entries(data) {
        let (k, v) = e?;
        let mut full = prefix.to_vec();
        full.extend_from_slice(k);
        batch.put(full, v.to_vec());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tessera_proto::mvccpb::KeyValue;

    /// A state snapshot of `entries` (table byte first).
    fn state(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![];
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    fn revision(main: i64, sub: i64, kv: KeyValue) -> (Vec<u8>, Vec<u8>) {
        let mut k = vec![b'r'];
        k.extend_from_slice(&main.to_be_bytes());
        k.extend_from_slice(&sub.to_be_bytes());
        (k, kv.encode_to_vec())
    }

    fn sample() -> Vec<u8> {
        let kv = |key: &str, rev: i64, version: i64| KeyValue {
            key: key.into(),
            create_revision: if version > 0 { 2 } else { 0 },
            mod_revision: rev,
            version,
            value: if version > 0 { format!("v{rev}").into_bytes() } else { vec![] },
            lease: 0,
        };
        let mut lease = vec![b'l'];
        lease.extend_from_slice(&7i64.to_be_bytes());
        let ttl: Vec<u8> = [60i64.to_be_bytes(), 0i64.to_be_bytes()].concat();
        state(&[
            (lease, ttl),
            ([&b"m"[..], b"applied"].concat(), 42u64.to_be_bytes().to_vec()),
            ([&b"m"[..], b"compact_rev"].concat(), 2i64.to_be_bytes().to_vec()),
            revision(2, 0, kv("a", 2, 1)),
            revision(3, 0, kv("b", 3, 1)),
            revision(4, 0, kv("a", 4, 0)), // a deleted
        ])
    }

    #[test]
    fn a_backup_is_etcds_bbolt_file_with_the_state_beside() {
        let state = sample();
        let file = encode_backup(&state).unwrap();
        assert_eq!(file.len() % 512, 32, "etcdctl's checksum shape");
        assert_eq!(decode_backup(&file).unwrap(), &state[..]);
        let buckets = bolt::read_all(&file[..file.len() - 32]).unwrap();
        let keys: Vec<&[u8]> = buckets[&b"key"[..]].iter().map(|(k, _)| k.as_slice()).collect();
        let rev = |main: i64, tomb: bool| {
            let mut k = main.to_be_bytes().to_vec();
            k.push(b'_');
            k.extend_from_slice(&0i64.to_be_bytes());
            if tomb {
                k.push(b't');
            }
            k
        };
        assert_eq!(keys, [rev(2, false), rev(3, false), rev(4, true)]);
        let meta = &buckets[&b"meta"[..]];
        assert!(meta.contains(&(b"consistent_index".to_vec(), 42u64.to_be_bytes().to_vec())), "{meta:?}");
        assert!(meta.contains(&(b"finishedCompactRev".to_vec(), rev(2, false))), "{meta:?}");
        assert_eq!(buckets[&b"lease"[..]][0].0, 7i64.to_be_bytes());
        assert_eq!(buckets[&b"auth"[..]][0], (b"authEnabled".to_vec(), vec![0]));
        for name in ["alarm", "authRoles", "authUsers", "members", "members_removed", "tessera"] {
            assert!(buckets.contains_key(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_corrupt_backup_is_refused() {
        let file = encode_backup(&sample()).unwrap();
        let mut bad = file.clone();
        bad[20] ^= 1;
        assert!(decode_backup(&bad).is_err());
        // Without the checksum: the body is checked as a bbolt file.
        let body = &file[..file.len() - 32];
        let mut cut = body.to_vec();
        cut.truncate(body.len() - bolt::PAGE_SIZE);
        assert!(backup_state(&cut).is_err());
        assert!(encode_backup(b"not a state").is_err());
    }

    #[test]
    fn backups_of_the_old_format_still_restore() {
        use sha2::Digest;
        let state = sample();
        let mut old = OLD_BACKUP_MAGIC.to_vec();
        old.extend_from_slice(&(state.len() as u64).to_be_bytes());
        old.extend_from_slice(&state);
        old.resize(old.len().div_ceil(512) * 512, 0);
        let sum = sha2::Sha256::digest(&old);
        old.extend_from_slice(&sum);
        assert_eq!(decode_backup(&old).unwrap(), &state[..]);
    }
}
