//! Leases (etcd's lessor): the lease table is replicated state, changed only
//! by applied raft entries (`table`); liveness — when a lease expires — is
//! decided by the leader alone, which proposes the revoke through raft
//! (`liveness`).

mod liveness;
mod table;

pub use liveness::Liveness;
pub use table::{Lease, LeaseTable, MAX_LEASE_TTL};
