//! Prometheus metrics, with etcd's names where the meaning is the same so
//! etcd dashboards and alerts work unchanged. A node hosts replicas of
//! several groups, so every series that belongs to a group carries a
//! `group` label (etcd's `etcd_server_is_leader` would otherwise say 1 on a
//! node that leads one group and follows in others); the node's own disk
//! (one rocksdb, one WAL) is unlabelled. Each replica binds its labels once
//! (`GroupMetrics`), so nothing formats a label on the request path.

use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Histogram, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

macro_rules! per_group {
    ($name:ident, $kind:ident, $register:ident, $metric:literal, $help:literal) => {
        static $name: LazyLock<$kind> =
            LazyLock::new(|| $register!($metric, $help, &["group"]).expect(concat!("register ", $metric)));
    };
}

per_group!(HAS_LEADER, IntGaugeVec, register_int_gauge_vec, "etcd_server_has_leader", "Whether or not a leader exists.");
per_group!(IS_LEADER, IntGaugeVec, register_int_gauge_vec, "etcd_server_is_leader", "Whether or not this member is a leader.");
per_group!(
    LEADER_CHANGES,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_server_leader_changes_seen_total",
    "The number of leader changes seen."
);
per_group!(
    PROPOSALS_PENDING,
    IntGaugeVec,
    register_int_gauge_vec,
    "etcd_server_proposals_pending",
    "The current number of pending proposals to commit."
);
per_group!(
    PROPOSALS_APPLIED,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_server_proposals_applied_total",
    "The total number of consensus proposals applied."
);
per_group!(
    PROPOSALS_FAILED,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_server_proposals_failed_total",
    "The total number of failed proposals seen."
);
per_group!(
    REVISIONS_PASSED,
    IntCounterVec,
    register_int_counter_vec,
    "tessera_server_revisions_passed_total",
    "Writes proposed again because the group passed the revision they carried before applying them."
);
per_group!(KEYS_TOTAL, IntGaugeVec, register_int_gauge_vec, "etcd_debugging_mvcc_keys_total", "Total number of keys.");
per_group!(
    DB_IN_USE,
    IntGaugeVec,
    register_int_gauge_vec,
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "Total size of the underlying database logically in use in bytes."
);
per_group!(WATCHERS, IntGaugeVec, register_int_gauge_vec, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.");
per_group!(
    RANGE_TOTAL,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_mvcc_range_total",
    "Total number of ranges seen by this member."
);
per_group!(
    PUT_TOTAL,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_mvcc_put_total",
    "Total number of puts seen by this member."
);
per_group!(
    DELETE_TOTAL,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_mvcc_delete_total",
    "Total number of deletes seen by this member."
);
per_group!(
    TXN_TOTAL,
    IntCounterVec,
    register_int_counter_vec,
    "etcd_mvcc_txn_total",
    "Total number of txns seen by this member."
);

/// One WAL per node (every group's log shares it).
pub static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets")
    )
    .expect("register etcd_disk_wal_fsync_duration_seconds")
});
/// One rocksdb per node.
pub static DB_TOTAL_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database in bytes.")
        .expect("register etcd_mvcc_db_total_size_in_bytes")
});

/// A group's series, bound to its label.
#[derive(Clone)]
pub struct GroupMetrics {
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_pending: IntGauge,
    pub proposals_applied: IntCounter,
    pub proposals_failed: IntCounter,
    pub revisions_passed: IntCounter,
    pub keys: IntGauge,
    pub db_in_use: IntGauge,
    pub watchers: IntGauge,
    pub ranges: IntCounter,
    pub puts: IntCounter,
    pub deletes: IntCounter,
    pub txns: IntCounter,
}

impl GroupMetrics {
    pub fn new(group: u64) -> Self {
        let g = [group.to_string()];
        let l = [g[0].as_str()];
        GroupMetrics {
            has_leader: HAS_LEADER.with_label_values(&l),
            is_leader: IS_LEADER.with_label_values(&l),
            leader_changes: LEADER_CHANGES.with_label_values(&l),
            proposals_pending: PROPOSALS_PENDING.with_label_values(&l),
            proposals_applied: PROPOSALS_APPLIED.with_label_values(&l),
            proposals_failed: PROPOSALS_FAILED.with_label_values(&l),
            revisions_passed: REVISIONS_PASSED.with_label_values(&l),
            keys: KEYS_TOTAL.with_label_values(&l),
            db_in_use: DB_IN_USE.with_label_values(&l),
            watchers: WATCHERS.with_label_values(&l),
            ranges: RANGE_TOTAL.with_label_values(&l),
            puts: PUT_TOTAL.with_label_values(&l),
            deletes: DELETE_TOTAL.with_label_values(&l),
            txns: TXN_TOTAL.with_label_values(&l),
        }
    }
}

/// Gauges derived from the store, set when `/metrics` is scraped: each
/// group's from its own replica.
pub fn refresh(node: &crate::node::Node) {
    DB_TOTAL_SIZE.set(node.parts.engine.size_on_disk() as i64);
    for r in node.replicas() {
        let g = &r.group;
        g.sm.metrics.keys.set(g.sm.key_count() as i64);
        g.sm.metrics.db_in_use.set(g.sm.size_in_use() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_has_its_own_series() {
        let (a, b) = (GroupMetrics::new(901), GroupMetrics::new(902));
        a.is_leader.set(1);
        b.is_leader.set(0);
        let text = tessera_rpc::endpoints::metrics_text();
        assert!(text.contains("etcd_server_is_leader{group=\"901\"} 1"), "{text}");
        assert!(text.contains("etcd_server_is_leader{group=\"902\"} 0"), "{text}");
    }
}
