//! An engine in memory, for unit tests of everything above the trait
//! (stores, lease table, raft log, state machine, driver) and the fuzz
//! targets (fuzz/: thousands of state machines a second). Same contract as
//! rocksdb's: atomic batches, consistent scans; `sync` is a no-op.

use super::{BatchOp, Engine, Result, WriteBatch};
use crate::locks::Mutex;
use std::collections::BTreeMap;

pub struct MemoryEngine {
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine { data: Mutex::leaf("memory engine", BTreeMap::new()) }
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.lock().get(key).cloned())
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let data = self.data.lock();
        Ok(keys.iter().map(|k| data.get(k).cloned()).collect())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<()> {
        let mut data = self.data.lock();
        for op in batch.ops {
            match op {
                BatchOp::Put(k, v) => {
                    data.insert(k, v);
                }
                BatchOp::Delete(k) => {
                    data.remove(&k);
                }
                BatchOp::DeleteRange(s, e) => {
                    let doomed: Vec<Vec<u8>> = data.range(s..e).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        data.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        // A copy, so `f` may call the engine (a consistent point in time).
        let items: Vec<(Vec<u8>, Vec<u8>)> =
            self.data.lock().range(start.to_vec()..end.to_vec()).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in items {
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.data.lock().iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn compact_range(&self, _start: &[u8], _end: &[u8]) {}
}
