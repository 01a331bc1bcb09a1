//! Key layout in the engine. Every key of a group starts with the group's
//! 8-byte id, then a one-byte table tag:
//!
//! ```text
//! [group][b'L'][index u64 BE]          raft log entry
//! [group][b'H']                        raft hard state
//! [group][b'T']                        raft log truncated state (index, term)
//! [group][b'C']                        raft conf state
//! [group][b'r'][main i64 BE][sub i64 BE] MVCC value at revision (state machine)
//! [group][b'l'][lease id i64 BE]       lease (state machine)
//! [group][b'm'][name]                  state-machine meta (applied index, ...)
//! [group][b'n'][member id u64 BE]      group member (state machine)
//! [group][b'I'][name]                  this member's identity (never in a snapshot)
//! ```
//!
//! State-machine tables are lowercase and contiguous only in the sense that a
//! snapshot copies exactly [`GroupKeys::STATE_TABLES`].

#[derive(Clone, Copy, Debug)]
pub struct GroupKeys {
    group: u64,
}

impl GroupKeys {
    pub const STATE_TABLES: [u8; 4] = [b'r', b'l', b'm', b'n'];

    pub fn new(group: u64) -> Self {
        Self { group }
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    fn key(&self, table: u8, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + rest.len());
        k.extend_from_slice(&self.group.to_be_bytes());
        k.push(table);
        k.extend_from_slice(rest);
        k
    }

    /// `[start, end)` covering every key of the group (all tables).
    pub fn all(&self) -> (Vec<u8>, Vec<u8>) {
        let end = self.group.checked_add(1).map_or_else(|| vec![0xff; 9], |g| g.to_be_bytes().to_vec());
        (self.group.to_be_bytes().to_vec(), end)
    }

    /// `[start, end)` covering one whole table.
    pub fn table(&self, table: u8) -> (Vec<u8>, Vec<u8>) {
        (self.key(table, &[]), self.key(table + 1, &[]))
    }

    /// Strips the group prefix and table byte from a key of `table`.
    pub fn suffix<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        &key[9..]
    }

    pub fn raft_entry(&self, index: u64) -> Vec<u8> {
        self.key(b'L', &index.to_be_bytes())
    }
    pub fn hard_state(&self) -> Vec<u8> {
        self.key(b'H', &[])
    }
    pub fn truncated_state(&self) -> Vec<u8> {
        self.key(b'T', &[])
    }
    pub fn conf_state(&self) -> Vec<u8> {
        self.key(b'C', &[])
    }
    pub fn revision(&self, main: i64, sub: i64) -> Vec<u8> {
        let mut rest = [0u8; 16];
        rest[..8].copy_from_slice(&main.to_be_bytes());
        rest[8..].copy_from_slice(&sub.to_be_bytes());
        self.key(b'r', &rest)
    }
    pub fn lease(&self, id: i64) -> Vec<u8> {
        self.key(b'l', &id.to_be_bytes())
    }
    pub fn meta(&self, name: &str) -> Vec<u8> {
        self.key(b'm', name.as_bytes())
    }
    /// This member's own identity (member id, cluster id): deliberately not
    /// a state table, so installing a peer's snapshot never overwrites it.
    pub fn identity(&self, name: &str) -> Vec<u8> {
        self.key(b'I', name.as_bytes())
    }
    pub fn member(&self, id: u64) -> Vec<u8> {
        self.key(b'n', &id.to_be_bytes())
    }
}

/// A stored integer: exactly 8 bytes, big-endian. Anything else is
/// corruption (or a snapshot not written by a member), never a panic.
pub fn decode_u64(b: &[u8]) -> super::Result<u64> {
    <[u8; 8]>::try_from(b).map(u64::from_be_bytes).map_err(|_| corrupt_integer(b))
}

/// `decode_u64`, signed.
pub fn decode_i64(b: &[u8]) -> super::Result<i64> {
    <[u8; 8]>::try_from(b).map(i64::from_be_bytes).map_err(|_| corrupt_integer(b))
}

/// The two integers of a 16-byte suffix or value (a revision, a lease's
/// TTLs, a truncated log's index and term).
pub fn decode_pair(b: &[u8]) -> super::Result<(i64, i64)> {
    match b.len() {
        16 => Ok((decode_i64(&b[..8])?, decode_i64(&b[8..])?)),
        _ => Err(corrupt_integer(b)),
    }
}

fn corrupt_integer(b: &[u8]) -> super::EngineError {
    super::EngineError(format!("corrupt stored integer ({} bytes)", b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_integers_of_another_length_are_corruption_not_a_panic() {
        assert_eq!(decode_u64(&7u64.to_be_bytes()).unwrap(), 7);
        assert_eq!(decode_i64(&(-7i64).to_be_bytes()).unwrap(), -7);
        assert!(decode_u64(&[1, 2, 3]).is_err());
        assert!(decode_i64(&[0; 9]).is_err());
        let pair = [5i64.to_be_bytes(), 6i64.to_be_bytes()].concat();
        assert_eq!(decode_pair(&pair).unwrap(), (5, 6));
        assert!(decode_pair(&pair[..15]).is_err());
    }
}
