use super::{BatchOp, Engine, EngineError, Result, WriteBatch};
use std::path::Path;

/// The rocksdb engine: WAL on, fsync on sync writes.
pub struct RocksEngine {
    db: rocksdb::DB,
}

fn err(e: rocksdb::Error) -> EngineError {
    EngineError(e.into_string())
}

impl RocksEngine {
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // Unsynced applies ride on the next synced raft append; a crash
        // before it replays them from the log.
        opts.set_manual_wal_flush(false);
        let db = rocksdb::DB::open(&opts, path).map_err(err)?;
        Ok(Self { db })
    }
}

impl Engine for RocksEngine {
    fn stop_background_work(&self) {
        self.db.cancel_all_background_work(true);
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(err)
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let snap = self.db.snapshot();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        self.db.multi_get_opt(keys, &ro).into_iter().map(|r| r.map_err(err)).collect()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(k, v) => wb.put(k, v),
                BatchOp::Delete(k) => wb.delete(k),
                BatchOp::DeleteRange(s, e) => wb.delete_range(s, e),
            }
        }
        if sync {
            fail::fail_point!("engine::before_sync");
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(err)
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(start);
        while it.valid() {
            let (k, v) = (it.key().unwrap_or_default(), it.value().unwrap_or_default());
            if !f(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(err)
    }

    fn size_on_disk(&self) -> u64 {
        let live = self.db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
        let mem = self.db.property_int_value("rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
        live + mem
    }

    fn compact_range(&self, start: &[u8], end: &[u8]) {
        self.db.compact_range(Some(start), Some(end));
    }
}
