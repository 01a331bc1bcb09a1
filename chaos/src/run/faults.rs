//! Faults injected while the workload runs, chosen from a seed (the kinds
//! take turns; targets and parameters are drawn at random). Each fault
//! is a list of steps applied together, held for a while, then healed in
//! reverse order; one fault heals before the next starts (a `multi` fault
//! is several at once), and all heal before the final read.
//!
//! - kill: kill -9, then start again from the same command line and data;
//! - pause: SIGSTOP, then SIGCONT;
//! - isolate: every packet to and from one process dropped;
//! - split: the processes split in two sides (the clients on one), no packet crosses;
//! - cut: packets from one process (or the clients) to another dropped, one way only;
//! - delay: one process's links, or one pair's, delayed 20–400 ms with jitter;
//! - loss: one process's links, or one pair's, lose 5–40 % of packets;
//! - skew: one process's clock (libfaketime, `clock`) runs 1.25–2× fast for
//!   a while or jumps 1–4 s ahead, then runs at half speed until it is back
//!   on true time (a clock left ahead would stretch the process's waits);
//! - move: the federation changes shape under the load: a workload prefix
//!   moved with its data to another group (the router and every group keep
//!   serving it), or split over every group (its subtrees move), or merged
//!   back onto one once split, or a new group added and put on the ring
//!   with its units (up to two per run; one left off the ring by a crash is
//!   joined by the next); in a third of them placement
//!   is killed at a step of the move (a failpoint), and the placement
//!   started again finishes or rolls it back; in another third a data node
//!   crashes where its replica applies a step of the move (staging, the
//!   target's adoption, a source's release: the leader's replica or a
//!   follower's, as it falls), and the move goes on without it or rolls back;
//! - multi: two or three of the other enabled kinds at once.

use super::cluster::Cluster;
use super::net::Link;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Kill,
    Pause,
    Isolate,
    Split,
    Cut,
    Delay,
    Loss,
    Skew,
    /// A shard-node restarted with a failpoint that crashes it at one step
    /// (raft persist, apply, snapshot, fence, compaction, fsync, a cross-group
    /// txn's prepare or commit), or a router at a step of a cross-group txn
    /// it coordinates.
    Crash,
    /// A shard-node restarted with a slow disk (every fsync delayed).
    Disk,
    /// A prefix of the workloads moved with its data to another group.
    Move,
    Multi,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Isolate,
        FaultKind::Split,
        FaultKind::Cut,
        FaultKind::Delay,
        FaultKind::Loss,
        FaultKind::Skew,
        FaultKind::Crash,
        FaultKind::Disk,
        FaultKind::Move,
        FaultKind::Multi,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Isolate => "isolate",
            FaultKind::Split => "split",
            FaultKind::Cut => "cut",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::Skew => "skew",
            FaultKind::Crash => "crash",
            FaultKind::Disk => "disk",
            FaultKind::Move => "move",
            FaultKind::Multi => "multi",
        }
    }

    /// Needs the run's own network (namespaces and the switch).
    pub fn needs_network(self) -> bool {
        matches!(self, FaultKind::Isolate | FaultKind::Split | FaultKind::Cut | FaultKind::Delay | FaultKind::Loss)
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown fault {s:?} (one of {})", names.join(", ")))
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One injected fault, for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Injected {
    pub kind: FaultKind,
    /// What was done to whom, e.g. "cut router-1→n2".
    pub what: String,
    /// Run clock (ms) when it started and when it healed.
    pub at_ms: u64,
    pub healed_ms: u64,
}

/// A small deterministic generator (xorshift), so a seed replays a run's choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }
}

/// One thing a fault does, and undoes when it heals.
#[derive(Clone, Debug)]
enum Step {
    Kill(usize),
    Pause(usize),
    /// Links between hosts of the network, by host index.
    Links(Vec<(usize, usize, Link)>),
    Rate(usize, f64),
    Jump(usize, f64),
    /// Restarted with these failpoints armed (`FAILPOINTS`); healed by a clean restart.
    Failpoints(usize, String),
    /// Changes the federation's shape around this prefix (`reshape`:
    /// move, split, merge, or a group joining the ring; `pick` chooses);
    /// done while the fault holds.
    Move {
        prefix: &'static str,
        pick: u64,
    },
}

/// The prefixes the workloads write under that a move fault moves:
/// Kubernetes' resources and the etcd load's first units.
const MOVED_PREFIXES: &[&str] =
    &["/registry/pods/", "/registry/configmaps/", "/registry/leases/", "/registry/events/", "/app/u0/", "/app/u1/", "/app/u2/"];

/// Placement's failpoints (placement/src/failpoints.rs): it dies at a step of a move.
const PLACEMENT_CRASH_POINTS: &[&str] = &["move::after_stage", "move::before_commit", "move::after_commit", "move::after_adopt"];

/// shard-node's failpoints (shard-node/src/failpoints.rs; a test checks the
/// lists agree), with the action that crashes there: the steps every write
/// passes crash at a few percent of passes, so soon after the restart;
/// the rare ones (snapshots, fences, compaction) the first time.
const CRASH_POINTS: &[(&str, &str)] = &[
    ("raft::before_persist", "3%panic"),
    ("raft::after_persist", "3%panic"),
    ("raft::before_snapshot_install", "panic"),
    ("raft::after_snapshot_install", "panic"),
    ("raft::before_snapshot_send", "panic"),
    ("apply::before_commit", "3%panic"),
    ("apply::after_commit", "3%panic"),
    ("apply::fence", "panic"),
    ("apply::txn_prepare", "20%panic"),
    ("apply::txn_commit", "20%panic"),
    ("compact::before_delete", "panic"),
    ("compact::after_delete", "panic"),
    ("engine::before_sync", "3%panic"),
];

/// shard-node's failpoints at the steps of a move, which only a move
/// passes (so the move fault arms them, not the crash fault).
const MOVE_CRASH_POINTS: &[&str] = &["apply::move_stage", "apply::move_adopt", "apply::move_release"];

/// A router's crash points: steps of a cross-group txn it coordinates.
const ROUTER_CRASH_POINTS: &[(&str, &str)] =
    &[("cross_txn::after_prepare", "20%panic"), ("cross_txn::before_commit", "20%panic")];

/// Who can be faulted: the system's processes (their names and hosts) and the clients' host.
struct Targets {
    names: Vec<String>,
    hosts: Vec<Option<usize>>,
    client: Option<usize>,
    /// The process whose clock can be skewed (clock::Skewable).
    clocked: Option<usize>,
    /// The shard-nodes (placement's store included), with failpoints.
    nodes: Vec<usize>,
    /// The routers, with failpoints of their own (crash only).
    routers: Vec<usize>,
    /// Placement (a federation's), with its move failpoints.
    placement: Option<usize>,
    /// The shard-nodes that host the data groups (not placement's store).
    data_nodes: Vec<usize>,
}

impl Targets {
    fn of(c: &Cluster) -> Targets {
        Targets {
            names: c.procs.iter().map(|p| p.name.clone()).collect(),
            hosts: c.procs.iter().map(|p| p.host).collect(),
            client: c.net.as_ref().and_then(|n| n.index("client")),
            clocked: c.procs.iter().position(|p| p.clock.is_some()),
            nodes: (0..c.procs.len()).filter(|&i| c.procs[i].args[0].ends_with("shard-node")).collect(),
            routers: (0..c.procs.len()).filter(|&i| c.procs[i].args[0].ends_with("router")).collect(),
            placement: c.procs.iter().position(|p| p.name == "placement"),
            data_nodes: (0..c.procs.len())
                .filter(|&i| c.procs[i].args[0].ends_with("shard-node") && !c.procs[i].name.starts_with("placement-store"))
                .collect(),
        }
    }
    fn host_name(&self, h: usize) -> String {
        if Some(h) == self.client {
            return "clients".into();
        }
        self.hosts.iter().position(|x| *x == Some(h)).map_or(format!("host {h}"), |i| self.names[i].clone())
    }
    /// Every host: processes', then the clients'.
    fn all_hosts(&self) -> Vec<usize> {
        self.hosts.iter().flatten().copied().chain(self.client).collect()
    }
}

fn both_ways(a: &[usize], b: &[usize], link: Link) -> Vec<(usize, usize, Link)> {
    let mut v = vec![];
    for &x in a {
        for &y in b {
            v.push((x, y, link));
            v.push((y, x, link));
        }
    }
    v
}

/// Plans one fault of `kind`: its steps, how long it holds and what it is.
fn plan(kind: FaultKind, t: &Targets, kinds: &[FaultKind], rng: &mut Rng) -> (Vec<Step>, Duration, String) {
    let n = t.names.len() as u64;
    let p = rng.below(n) as usize;
    let name = t.names[p].clone();
    let host = t.hosts[p];
    let ms = |rng: &mut Rng, lo, hi| Duration::from_millis(rng.range(lo, hi));
    // A process, or a pair of hosts, for delay and loss.
    let links = |rng: &mut Rng, link: Link| -> (Vec<(usize, usize, Link)>, String) {
        let all = t.all_hosts();
        let h = host.unwrap_or(0);
        if rng.chance(50) {
            let others: Vec<usize> = all.iter().copied().filter(|&x| x != h).collect();
            (both_ways(&[h], &others, link), name.clone())
        } else {
            let others: Vec<usize> = all.iter().copied().filter(|&x| x != h).collect();
            let o = others[rng.below(others.len() as u64) as usize];
            (both_ways(&[h], &[o], link), format!("{name}↔{}", t.host_name(o)))
        }
    };
    match kind {
        FaultKind::Kill => (vec![Step::Kill(p)], ms(rng, 500, 3000), format!("kill {name}")),
        FaultKind::Pause => (vec![Step::Pause(p)], ms(rng, 500, 3000), format!("pause {name}")),
        FaultKind::Isolate => {
            let h = host.unwrap_or(0);
            let others: Vec<usize> = t.all_hosts().into_iter().filter(|&x| x != h).collect();
            let drop = Link { drop: true, ..Link::default() };
            (vec![Step::Links(both_ways(&[h], &others, drop))], ms(rng, 1000, 5000), format!("isolate {name}"))
        }
        FaultKind::Split => {
            let mut sides = (vec![], vec![]);
            // A random non-trivial bipartition: bit i of the mask puts process i on side b.
            let mask = 1 + rng.below((1u64 << n.min(20)) - 2);
            for (i, h) in t.hosts.iter().enumerate() {
                let side = if mask >> i & 1 == 1 { &mut sides.1 } else { &mut sides.0 };
                side.extend(*h);
            }
            let with_clients = if rng.chance(50) { &mut sides.0 } else { &mut sides.1 };
            with_clients.extend(t.client);
            let drop = Link { drop: true, ..Link::default() };
            let names = |side: &[usize]| side.iter().map(|&h| t.host_name(h)).collect::<Vec<_>>().join(",");
            let what = format!("split {{{}}} | {{{}}}", names(&sides.0), names(&sides.1));
            (vec![Step::Links(both_ways(&sides.0, &sides.1, drop))], ms(rng, 1000, 5000), what)
        }
        FaultKind::Cut => {
            let all = t.all_hosts();
            let from = all[rng.below(all.len() as u64) as usize];
            let rest: Vec<usize> = all.iter().copied().filter(|&x| x != from).collect();
            let to = rest[rng.below(rest.len() as u64) as usize];
            let what = format!("cut {}→{}", t.host_name(from), t.host_name(to));
            (vec![Step::Links(vec![(from, to, Link { drop: true, ..Link::default() })])], ms(rng, 1000, 5000), what)
        }
        FaultKind::Delay => {
            let d = ms(rng, 20, 400);
            let link = Link { delay: d, jitter: d / 4, ..Link::default() };
            let (l, who) = links(rng, link);
            (vec![Step::Links(l)], ms(rng, 1000, 5000), format!("delay {who} {}ms", d.as_millis()))
        }
        FaultKind::Loss => {
            let pct = rng.range(5, 40);
            let (l, who) = links(rng, Link { loss: pct as f64 / 100.0, ..Link::default() });
            (vec![Step::Links(l)], ms(rng, 1000, 5000), format!("loss {who} {pct}%"))
        }
        FaultKind::Skew => {
            let Some(p) = t.clocked else { return (vec![], Duration::ZERO, "skew (no clock to skew)".into()) };
            let name = &t.names[p];
            if rng.chance(40) {
                let secs = rng.range(1, 5) as f64;
                (vec![Step::Jump(p, secs)], ms(rng, 200, 1000), format!("skew {name} jump +{secs}s"))
            } else {
                let rates = [1.25, 1.5, 2.0];
                let r = rates[rng.below(rates.len() as u64) as usize];
                (vec![Step::Rate(p, r)], ms(rng, 1000, 2500), format!("skew {name} x{r}"))
            }
        }
        FaultKind::Crash | FaultKind::Disk => {
            if t.nodes.is_empty() {
                return (vec![], Duration::ZERO, format!("{kind} (no shard-node)"));
            }
            if kind == FaultKind::Crash && !t.routers.is_empty() && rng.chance(25) {
                let p = t.routers[rng.below(t.routers.len() as u64) as usize];
                let (point, action) = ROUTER_CRASH_POINTS[rng.below(ROUTER_CRASH_POINTS.len() as u64) as usize];
                let spec = format!("{point}={action}");
                let what = format!("{kind} {} ({spec})", t.names[p]);
                return (vec![Step::Failpoints(p, spec)], ms(rng, 1000, 4000), what);
            }
            let p = t.nodes[rng.below(t.nodes.len() as u64) as usize];
            let spec = if kind == FaultKind::Crash {
                let (point, action) = CRASH_POINTS[rng.below(CRASH_POINTS.len() as u64) as usize];
                format!("{point}={action}")
            } else {
                format!("engine::before_sync=sleep({})", rng.range(20, 300))
            };
            let what = format!("{kind} {} ({spec})", t.names[p]);
            (vec![Step::Failpoints(p, spec)], ms(rng, 1000, 4000), what)
        }
        FaultKind::Move => {
            let Some(pl) = t.placement else { return (vec![], Duration::ZERO, "move (no placement)".into()) };
            let prefix = MOVED_PREFIXES[rng.below(MOVED_PREFIXES.len() as u64) as usize];
            let mut steps = vec![];
            let mut what = format!("move {prefix}");
            match rng.below(3) {
                0 => {
                    let point = PLACEMENT_CRASH_POINTS[rng.below(PLACEMENT_CRASH_POINTS.len() as u64) as usize];
                    steps.push(Step::Failpoints(pl, format!("{point}=panic")));
                    what.push_str(&format!(" (placement dies at {point})"));
                }
                1 if !t.data_nodes.is_empty() => {
                    let node = t.data_nodes[rng.below(t.data_nodes.len() as u64) as usize];
                    let point = MOVE_CRASH_POINTS[rng.below(MOVE_CRASH_POINTS.len() as u64) as usize];
                    steps.push(Step::Failpoints(node, format!("{point}=panic")));
                    what.push_str(&format!(" ({} dies at {point})", t.names[node]));
                }
                _ => {}
            }
            steps.push(Step::Move { prefix, pick: rng.next_u64() });
            (steps, ms(rng, 200, 1500), what)
        }
        FaultKind::Multi => {
            let pool: Vec<FaultKind> = kinds.iter().copied().filter(|k| *k != FaultKind::Multi).collect();
            let pool = if pool.is_empty() { vec![FaultKind::Kill, FaultKind::Pause] } else { pool };
            let count = rng.range(2, 4);
            let (mut steps, mut hold, mut what) = (vec![], Duration::ZERO, vec![]);
            for _ in 0..count {
                let k = pool[rng.below(pool.len() as u64) as usize];
                let (s, h, w) = plan(k, t, kinds, rng);
                steps.extend(s);
                hold = hold.max(h);
                what.push(w);
            }
            (steps, hold, what.join(" + "))
        }
    }
}

fn apply(c: &mut Cluster, id: u64, step: &Step) -> anyhow::Result<()> {
    match *step {
        Step::Kill(i) => c.kill(i),
        Step::Pause(i) => c.signal(i, libc::SIGSTOP),
        Step::Links(ref l) => c.net.as_ref().map_or((), |n| n.set(id, l.clone())),
        Step::Rate(i, r) => c.procs[i].clock.as_mut().map_or(Ok(()), |k| k.set_rate(r))?,
        Step::Jump(i, s) => c.procs[i].clock.as_mut().map_or(Ok(()), |k| k.jump(s))?,
        Step::Failpoints(i, ref spec) => {
            c.kill(i);
            c.start_with(i, &[("FAILPOINTS", spec)])?;
        }
        Step::Move { .. } => {} // async: `reshape`
    }
    Ok(())
}

/// Groups a run may add to the ring (beyond those it started with).
const MAX_JOINS: usize = 2;
/// Groups this run added.
static GROUPS_ADDED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Whether a group left (drained and removed) in this run: one may.
static GROUP_LEFT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Changes the federation's shape through placement's admin API, chosen by
/// `pick`: merges `prefix` onto one group if it was split, else (one time
/// in six, while fewer than `MAX_JOINS` groups were added) puts a group on
/// the ring — one left off it by an interrupted join first —, else splits
/// `prefix` over every group (one time in three) or moves it with its data
/// to a group that does not own it. Once per run (one time in six, with
/// three groups or more) the first group on the ring — the one holding the
/// shallow units and most lease homes — drains and is removed; a drain cut
/// short is run again first. What happened, for the report.
async fn reshape(admin: &placement::PlacementClient, prefix: &str, pick: u64) -> String {
    let reshaped = async {
        // Placement may have just been restarted (with a failpoint): ready first.
        let mut map = admin.map().await;
        for _ in 0..100 {
            if map.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            map = admin.map().await;
        }
        let map = map?;
        let groups: Vec<u64> = map.groups.keys().copied().filter(|g| !map.draining_groups.contains(g)).collect();
        let split_before = map.pins.keys().chain(map.spreads.keys()).any(|p| shardmap::strictly_under(p, prefix));
        if split_before {
            let to = groups[(pick % groups.len() as u64) as usize];
            let r = admin.merge(&placement::api::MergeRequest { prefix: prefix.into(), group: to, rate_bytes: 0 }).await?;
            return Ok(format!("merged onto group {to}: {} moves, {} pins dropped", r.moves.len(), r.pins_dropped));
        }
        let draining = map.draining_groups.iter().next().copied();
        let leaves = pick % 6 == 3 && groups.len() > 2 && !GROUP_LEFT.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(group) = draining.or(map.ring.first().copied().filter(|_| leaves)) {
            let d = admin.drain_group(group, 0).await?;
            admin.remove_group(group).await?;
            GROUP_LEFT.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(format!(
                "group {group} left: {} moves, off the ring in {} ms, {} leases copied, removed",
                d.moves.len(),
                d.ring_flip_ms,
                d.leases_copied
            ));
        }
        let off_ring = groups.iter().copied().find(|g| !map.ring.contains(g));
        let added = GROUPS_ADDED.load(std::sync::atomic::Ordering::Relaxed);
        if pick.is_multiple_of(6) && (off_ring.is_some() || added < MAX_JOINS) {
            let group = match off_ring {
                Some(g) => g,
                None => {
                    let first = map.groups.values().next().map_or(1, |g| g.replicas.iter().filter(|r| !r.learner).count());
                    let g = admin.add_group(&placement::api::GroupAddRequest { replicas: first, learners: 0 }).await?.group;
                    GROUPS_ADDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    g
                }
            };
            let j = admin.join_new_group(group, 0, 20).await?;
            return Ok(format!("group {group} joined the ring: {} units moved, flip {} ms", j.moves.len(), j.flip_ms));
        }
        if pick % 3 == 1 && groups.len() > 1 {
            let r = admin
                .split(&placement::api::SplitRequest { prefix: prefix.into(), groups: groups.clone(), rate_bytes: 0 })
                .await?;
            return Ok(format!("split over {groups:?}: {} subtrees moved, {} stayed", r.moves.len(), r.stayed));
        }
        let owner = map.clone().routing().groups_for_range(prefix.as_bytes(), &shardmap::prefix_end(prefix.as_bytes()));
        let others: Vec<u64> = groups.iter().copied().filter(|g| !owner.contains(g)).collect();
        let Some(to) = others.get((pick / 6 % others.len().max(1) as u64) as usize) else {
            return Ok::<_, placement::PlacementError>("no other group".to_string());
        };
        let r = admin.move_prefix(&placement::api::MoveRequest { prefix: prefix.into(), group: *to, rate_bytes: 0 }).await?;
        Ok(format!("moved to group {to}: {} keys, paused {} ms", r.keys, r.write_pause_ms))
    };
    match tokio::time::timeout(Duration::from_secs(120), reshaped).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "timed out".into(),
    }
}

/// Undoes a step; a skewed clock first runs slow for the time returned, then `settle`s.
fn heal(c: &mut Cluster, id: u64, step: &Step) -> anyhow::Result<Duration> {
    match *step {
        Step::Kill(i) => c.start(i)?,
        // Down by its failpoint or not: restarted without it.
        Step::Failpoints(i, _) => {
            c.kill(i);
            c.start(i)?;
        }
        Step::Pause(i) => c.signal(i, libc::SIGCONT),
        Step::Links(_) => c.net.as_ref().map_or((), |n| n.clear(id)),
        Step::Move { .. } => {}
        Step::Rate(i, _) | Step::Jump(i, _) => {
            return Ok(c.procs[i].clock.as_mut().map_or(Ok(Duration::ZERO), |k| k.recover())?)
        }
    }
    Ok(Duration::ZERO)
}

fn settle(c: &mut Cluster, step: &Step) -> anyhow::Result<()> {
    if let Step::Rate(i, _) | Step::Jump(i, _) = *step {
        c.procs[i].clock.as_mut().map_or(Ok(()), |k| k.settle())?;
    }
    Ok(())
}

/// Injects faults of `kinds`, one every `every`, until `stop`.
pub async fn inject(
    cluster: Arc<Mutex<Cluster>>,
    kinds: Vec<FaultKind>,
    every: Duration,
    mut rng: Rng,
    clock: impl Fn() -> u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Injected> {
    let mut done = vec![];
    if kinds.is_empty() {
        return done;
    }
    let lock = || cluster.lock().unwrap_or_else(|p| p.into_inner());
    let targets = Targets::of(&lock());
    // The kinds take turns (from a seeded start), so a short run still meets each.
    let first = rng.below(kinds.len() as u64) as usize;
    for id in 1u64.. {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
        let kind = kinds[(first + id as usize - 1) % kinds.len()];
        let (steps, hold, mut what) = plan(kind, &targets, &kinds, &mut rng);
        let at_ms = clock() / 1_000_000;
        for s in &steps {
            if let Err(e) = apply(&mut lock(), id, s) {
                tracing::error!(fault = what, error = %e, "could not apply");
            }
        }
        let admin = lock().placement.clone().map(placement::PlacementClient::new);
        for s in &steps {
            if let (Step::Move { prefix, pick }, Some(admin)) = (s, &admin) {
                let outcome = reshape(admin, prefix, *pick).await;
                what.push_str(&format!(": {outcome}"));
            }
        }
        tracing::info!(fault = what, ?hold, "fault");
        // Heals early when the run stops, so the final read sees a whole system.
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = stop.changed() => {}
        }
        let mut recovery = Duration::ZERO;
        for s in steps.iter().rev() {
            match heal(&mut lock(), id, s) {
                Ok(d) => recovery = recovery.max(d),
                Err(e) => tracing::error!(fault = what, error = %e, "could not heal"),
            }
        }
        if !recovery.is_zero() {
            tokio::time::sleep(recovery).await;
            for s in &steps {
                if let Err(e) = settle(&mut lock(), s) {
                    tracing::error!(fault = what, error = %e, "could not settle the clock");
                }
            }
        }
        done.push(Injected { kind, what, at_ms, healed_ms: clock() / 1_000_000 });
        if *stop.borrow() {
            break;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_crash_points_are_shard_nodes_failpoints() {
        let mut ours: Vec<&str> = super::CRASH_POINTS.iter().map(|(p, _)| *p).collect();
        ours.extend(super::MOVE_CRASH_POINTS);
        let mut theirs = shard_node::failpoints::ALL.to_vec();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_placement_crash_points_are_placements_failpoints() {
        assert_eq!(super::PLACEMENT_CRASH_POINTS, placement::failpoints::ALL);
    }
}
