//! Leases (etcd's lessor): the lease table is replicated state, changed only
//! by applied raft entries; liveness (when a lease expires) is decided by the
//! leader alone, which proposes the revoke through raft.

mod lessor;

pub use lessor::{Lease, Lessor, MAX_LEASE_TTL};
