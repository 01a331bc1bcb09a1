//! Storage behind a small trait: nothing above this module names rocksdb.
//!
//! One engine holds everything of a node: raft logs, hard states and the
//! state machines of all its groups, each under its own key prefix
//! ([`keys::GroupKeys`]). Sharing one WAL means a synced write (a raft
//! append) also makes every earlier unsynced write (state-machine applies)
//! durable, which is what lets apply skip the fsync.

pub mod keys;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;

use std::path::Path;
use std::sync::Arc;

pub use memory::MemoryEngine;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksEngine;

/// Opens the durable engine a node keeps its groups in: rocksdb, fsynced.
///
/// rocksdb is a default feature so that the fuzz targets, which run the
/// state machine over [`MemoryEngine`], build without its C++ (most of a
/// cold fuzz build); a node built without it cannot start.
pub fn open_durable(path: &Path) -> Result<Arc<dyn Engine>> {
    #[cfg(feature = "rocksdb")]
    return Ok(Arc::new(RocksEngine::open(path)?));
    #[cfg(not(feature = "rocksdb"))]
    return Err(EngineError(format!("cannot open {}: built without the rocksdb feature", path.display())));
}

#[derive(Debug, thiserror::Error)]
#[error("storage engine: {0}")]
pub struct EngineError(pub String);

pub type Result<T> = std::result::Result<T, EngineError>;

/// An ordered set of changes applied atomically by [`Engine::write`].
#[derive(Default, Debug)]
pub struct WriteBatch {
    pub(crate) ops: Vec<BatchOp>,
}

#[derive(Debug)]
pub(crate) enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl WriteBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put(key, value));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(BatchOp::Delete(key));
    }
    /// Deletes every key in `[start, end)`.
    pub fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(BatchOp::DeleteRange(start, end));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Reads all keys from one consistent point in time.
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Applies the batch atomically; `sync` waits for the WAL to reach disk.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()>;
    /// Visits `[start, end)` in key order from one consistent point in time,
    /// until `f` returns false.
    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;
    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> u64;
    /// Rewrites `[start, end)` to reclaim the space of deleted data.
    fn compact_range(&self, start: &[u8], end: &[u8]);
    /// Stops the engine's background work (and waits for what runs) before
    /// the process exits: background threads still running when the
    /// process's static destructors run abort it. Reads and writes still
    /// work afterwards; nothing more happens in the background.
    fn stop_background_work(&self) {}
}
