//! Prometheus metrics, with etcd's names where the meaning is the same so
//! etcd dashboards and alerts work unchanged.

use prometheus::{
    register_histogram, register_int_counter, register_int_gauge, Encoder, Histogram, IntCounter, IntGauge,
    TextEncoder,
};
use std::sync::LazyLock;

pub static HAS_LEADER: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("etcd_server_has_leader", "Whether or not a leader exists.").unwrap());
pub static IS_LEADER: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("etcd_server_is_leader", "Whether or not this member is a leader.").unwrap());
pub static LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_leader_changes_seen_total", "The number of leader changes seen.").unwrap()
});
pub static PROPOSALS_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("etcd_server_proposals_pending", "The current number of pending proposals to commit.").unwrap()
});
pub static PROPOSALS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.")
        .unwrap()
});
pub static PROPOSALS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_proposals_failed_total", "The total number of failed proposals seen.").unwrap()
});
pub static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        prometheus::exponential_buckets(0.001, 2.0, 14).unwrap()
    )
    .unwrap()
});
pub static DB_TOTAL_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database in bytes.").unwrap()
});
pub static KEYS_TOTAL: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("etcd_debugging_mvcc_keys_total", "Total number of keys.").unwrap());
pub static WATCHERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("etcd_debugging_mvcc_watcher_total", "Total number of watchers.").unwrap()
});
pub static RANGE_TOTAL: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("etcd_mvcc_range_total", "Total number of ranges seen by this member.").unwrap());
pub static PUT_TOTAL: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("etcd_mvcc_put_total", "Total number of puts seen by this member.").unwrap());
pub static DELETE_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_mvcc_delete_total", "Total number of deletes seen by this member.").unwrap()
});
pub static TXN_TOTAL: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("etcd_mvcc_txn_total", "Total number of txns seen by this member.").unwrap());

/// The text exposition of every registered metric.
pub fn render() -> String {
    let mut buf = vec![];
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
