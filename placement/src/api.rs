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

/// Move a prefix (and its subtree) with its data to one group.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MoveRequest {
    pub prefix: String,
    pub group: u64,
    /// Copy at most this many bytes per second (0: as fast as it goes).
    #[serde(default)]
    pub rate_bytes: u64,
}

/// One phase of a move and how long it took.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PhaseTime {
    pub phase: String,
    pub ms: u64,
}

/// What a move did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MoveReport {
    pub prefix: String,
    pub to: u64,
    pub from: Vec<u64>,
    /// "moved", "already" (the map said so), "rolled_back" (with `error`).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The map epoch that gave the prefix to `to`.
    pub epoch: u64,
    /// Live keys moved, stored revisions copied and their bytes.
    pub keys: i64,
    pub revisions: u64,
    pub bytes: u64,
    pub phases: Vec<PhaseTime>,
    /// From the sources' fences to the target's adoption: how long writes
    /// (and reads) under the prefix waited.
    pub write_pause_ms: u64,
    pub copy_mb_per_s: f64,
}

/// A move in flight, as far as its driver has got.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct MoveProgress {
    pub prefix: String,
    pub to: u64,
    pub from: Vec<u64>,
    pub phase: String,
    pub revisions: u64,
    pub bytes: u64,
    /// Live keys staged on the target so far.
    pub keys: i64,
    pub passes: u32,
    pub elapsed_ms: u64,
    /// Driven by this placement (false: recorded in the map, its driver gone).
    pub driven_here: bool,
}

/// Moves in flight and the most recent ones done.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct MovesList {
    pub in_flight: Vec<MoveProgress>,
    pub recent: Vec<MoveReport>,
}

/// Cancel a move (before its cutover committed: it rolls back).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MoveCancelRequest {
    pub prefix: String,
}

/// Size and load of one placement unit on its group (`tessera top`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct UnitRow {
    pub unit: String,
    pub group: u64,
    pub keys: i64,
    pub bytes: u64,
    /// Keys written since the group's replicas started (the most any replica counted).
    pub writes: u64,
    /// Reads served, summed over the group's replicas.
    pub reads: u64,
}

/// Every unit with keys or load, and when it was measured.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct UnitsReport {
    pub epoch: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub units: Vec<UnitRow>,
    /// Groups whose replicas did not all answer (their figures are partial).
    pub partial: Vec<u64>,
}

/// A rebalancing round (`tessera rebalance`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RebalanceRequest {
    /// Plan and explain only.
    #[serde(default)]
    pub dry_run: bool,
    /// Milliseconds between the two samples the write rates come from.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default)]
    pub thresholds: Option<crate::rebalance::Thresholds>,
}

fn default_interval_ms() -> u64 {
    2000
}

/// A unit to move, and why.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlannedMove {
    pub unit: String,
    pub from: u64,
    /// The group it moves to (0 for a split).
    pub to: u64,
    /// A split: the unit's subtrees spread over these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split_over: Vec<u64>,
    pub why: String,
}

/// A round's plan, what it found needs no move, and what was done.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RebalancePlan {
    pub moves: Vec<PlannedMove>,
    pub notes: Vec<String>,
    pub executed: Vec<String>,
}

/// Drain a group (`tessera group drain`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct GroupDrainRequest {
    /// Copy at most this many bytes per second per move (0: as fast as it goes).
    #[serde(default)]
    pub rate_bytes: u64,
}

/// What a drain moved: one move per prefix the group had.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GroupDrained {
    pub group: u64,
    pub moves: Vec<MoveReport>,
    pub epoch: u64,
    /// How long the group refused older maps while it left the ring (ms;
    /// 0: it was not on it).
    #[serde(default)]
    pub ring_flip_ms: u64,
    /// Leases copied to their new homes.
    #[serde(default)]
    pub leases_copied: u64,
}

/// `tessera group join GROUP` (and `group add --ring`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RingJoinRequest {
    /// Copy at most this many bytes per second per move (0: no limit).
    #[serde(default)]
    pub rate_bytes: u64,
}

/// A unit whose keys stay on a group the ring no longer gives it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct KeptUnit {
    pub unit: String,
    pub group: u64,
}

/// What a group's joining the ring did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RingJoined {
    pub group: u64,
    /// The units the ring now gives it, moved with their data.
    pub moves: Vec<MoveReport>,
    /// Units the ring would give it that stay where they are (unit pins:
    /// fewer slashes than the depth, so they cannot move as a prefix).
    pub kept: Vec<KeptUnit>,
    /// How long the ring's groups refused calls routed by the old map.
    pub flip_ms: u64,
    pub epoch: u64,
}

/// `tessera split PREFIX GROUPS`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SplitRequest {
    pub prefix: String,
    pub groups: Vec<u64>,
    #[serde(default)]
    pub rate_bytes: u64,
}

/// What a split did: one move per subtree that went to another group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SplitReport {
    pub prefix: String,
    pub groups: Vec<u64>,
    /// The group the prefix itself (and what was not moved) stays on.
    pub owner: u64,
    pub moves: Vec<MoveReport>,
    /// Subtrees the split left on `owner` (their spread group is it).
    pub stayed: usize,
    /// Keys right under the prefix (no subtree of their own): they stay.
    pub leaves: u64,
    pub epoch: u64,
}

/// `tessera merge PREFIX GROUP`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MergeRequest {
    pub prefix: String,
    pub group: u64,
    #[serde(default)]
    pub rate_bytes: u64,
}

/// What a merge did: the parts under the prefix moved to the group, then
/// the prefix; `pins_dropped` pins under it said nothing the prefix's does not.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MergeReport {
    pub prefix: String,
    pub group: u64,
    pub moves: Vec<MoveReport>,
    pub pins_dropped: usize,
    pub epoch: u64,
}

/// A group taken out of the map.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GroupRemoved {
    pub group: u64,
    pub epoch: u64,
}
