//! Real processes on loopback for integration tests, and what tests share
//! around them. Every process a test starts here dies with the test
//! process (PR_SET_PDEATHSIG), and nothing here stops a process it did not
//! start.
//!
//! - `bins`: the workspace's binaries and the etcd tools scripts/test.sh installs.
//! - `net`: a loopback address of a test's own.
//! - `group`: a shard-node group (etcd flags), `etcd`: real etcd beside it.
//! - `federation`: a whole federation through `tessera dev`.
//! - `load`: a write load for fault tests; `writer`: one that checks each
//!   put's prev_kv; `proxy`: a TCP proxy that holds traffic.
//! - `auth`: etcd's auth session and scenarios, asked the same of any server.
//! - `recipes`, `json_http`: client scenarios and a raw HTTP client;
//!   `range_stream`: etcd 3.7's RangeStream asked the same of any server.

pub mod auth;
pub mod bins;
pub mod etcd;
pub mod federation;
pub mod group;
pub mod json_http;
pub mod load;
pub mod net;
pub mod proxy;
pub mod range_stream;
pub mod recipes;
pub mod txn;
pub mod wait;
pub mod writer;

pub use federation::Federation;
pub use group::Cluster;
