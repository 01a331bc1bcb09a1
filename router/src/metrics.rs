//! The router's Prometheus metrics.

use prometheus::{register_histogram, register_int_counter, register_int_gauge, Histogram, IntCounter, IntGauge};
use std::sync::LazyLock;

pub(crate) static RANGE_GROUPS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!("tessera_router_range_groups", "Groups a range request touched.", vec![1.0, 2.0, 3.0, 5.0, 8.0, 16.0])
        .unwrap()
});
pub(crate) static WATCH_GROUPS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!("tessera_router_watch_groups", "Groups a watcher merges.", vec![1.0, 2.0, 3.0, 5.0, 8.0, 16.0]).unwrap()
});
pub static REROUTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tessera_router_reroutes_total", "Calls routed again after a group refused an older shard map.")
        .unwrap()
});
pub(crate) static WATCH_EVENTS: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("tessera_router_watch_events_total", "Events delivered to watchers.").unwrap());
pub(crate) static WATCH_HOLD: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tessera_router_watch_hold_seconds",
        "How long a merged watch held events back until every group it merges had confirmed their revision.",
        prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap()
    )
    .unwrap()
});
pub(crate) static CROSS_TXNS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tessera_router_cross_group_txns_total", "Transactions across groups committed.").unwrap()
});
pub(crate) static CROSS_TXN_CONFLICTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tessera_router_cross_group_txn_conflicts_total",
        "Attempts of transactions across groups aborted because another held a group."
    )
    .unwrap()
});
pub(crate) static CROSS_TXNS_FINISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tessera_router_cross_group_txns_recovered_total",
        "Transactions across groups left in doubt by a lost coordinator and finished by this router."
    )
    .unwrap()
});
/// chaos/ reads it after a run: nothing may stay in doubt once recovery ran.
pub static CROSS_TXNS_IN_DOUBT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tessera_router_cross_group_txns_in_doubt",
        "Groups that, at their last poll, held a transaction across groups prepared for long (its coordinator may be gone)."
    )
    .unwrap()
});
pub(crate) static LEASES_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tessera_router_leases_expired_total", "Expired leases this router revoked on every group at once.")
        .unwrap()
});
