//! The admin API's requests and answers, shared by placement (which serves
//! them as JSON over HTTP) and the `tessera` CLI (which sends them).

use serde::{Deserialize, Serialize};
use shardmap::Replica;

/// The first groups of a federation, all on the ring.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InitRequest {
    pub groups: usize,
    pub replicas: usize,
    #[serde(default)]
    pub learners: usize,
}

/// A new group, off the ring.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct GroupAddRequest {
    pub replicas: usize,
    #[serde(default)]
    pub learners: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct GroupAdded {
    pub group: u64,
    pub epoch: u64,
    pub replicas: Vec<Replica>,
}

/// One more learner for a group, on `node` or the least loaded node.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LearnerAddRequest {
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LearnerAdded {
    pub group: u64,
    pub node: String,
    /// Hex, as etcd prints member ids.
    pub member_id: String,
    pub epoch: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReplicaRemoved {
    pub group: u64,
    pub node: String,
    pub epoch: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PinRequest {
    pub prefix: String,
    pub group: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SpreadRequest {
    pub prefix: String,
    pub groups: Vec<u64>,
}

/// What a pin or spread did: `changed` is false when the map already said so.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OwnershipChanged {
    pub prefix: String,
    pub groups: Vec<u64>,
    pub epoch: u64,
    pub changed: bool,
}

/// The body of every refused request.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ErrorBody {
    pub error: String,
    pub kind: crate::error::ErrorKind,
}
