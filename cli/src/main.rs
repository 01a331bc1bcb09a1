//! `tessera`: a local federation in one command (`tessera dev`) and the
//! admin CLI over placement (status, pin, spread, move, moves, where, top,
//! group add, learner add, replica remove).

mod dev;
mod group;
mod moves;
mod status;
mod top;

use clap::{Parser, Subcommand};
use placement::PlacementClient;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: one etcd endpoint over a federation of raft groups")]
struct Cli {
    /// Placement's admin URL. Default: $TESSERA_PLACEMENT, else that of the
    /// `tessera dev` started from this directory, else of the last one
    /// started on this machine (whatever its --client-port), else http://127.0.0.1:12381.
    #[arg(long, global = true, env = "TESSERA_PLACEMENT")]
    placement: Option<String>,
    /// Print the answer as JSON (for scripts) instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    /// TLS to placement and the groups (https:// URLs); `tessera dev --tls`
    /// federations are found with theirs.
    #[command(flatten)]
    tls: tessera_rpc::flags::DialTlsArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    fn placement(&self) -> anyhow::Result<PlacementClient> {
        let found = dev::Endpoints::find();
        let url = self
            .placement
            .clone()
            .or_else(|| found.as_ref().map(|e| e.placement.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:12381".into());
        // The CLI's own flags, else the certificates of the dev federation found.
        let mut tls = self.tls.clone();
        if tls == Default::default() && self.placement.is_none() {
            if let Some(dev_tls) = found.and_then(|e| e.tls) {
                tls = dev_tls;
            }
        }
        Ok(PlacementClient::new(url).with_dialer(tls.dialer()?))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local federation: placement, shard-nodes and a router.
    Dev(dev::DevArgs),
    /// Groups, replicas (roles, leaders), shard map, keys and bytes per group.
    Status,
    /// Pin a prefix (and its subtree) to a group, moving its data there (as `move`).
    Pin {
        /// The prefix, ending with '/' (e.g. /registry/pods/).
        prefix: String,
        /// The group to own it.
        group: u64,
    },
    /// Spread a prefix's keys over groups by their next segment. Only for prefixes without data yet.
    Spread {
        /// The prefix, ending with '/'.
        prefix: String,
        /// Comma-separated group ids.
        groups: String,
    },
    /// Move a prefix (and its subtree) with its data to a group, online:
    /// writes under it pause only for the cutover. Waits until it is done.
    Move {
        /// The prefix, ending with '/' (e.g. /registry/pods/).
        prefix: String,
        /// The group to move it to.
        group: u64,
        /// Copy at most this many MB per second (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate_mb: f64,
    },
    /// Spread a prefix's subtrees (e.g. the namespaces under
    /// /registry/pods/) over groups with their data: each moves, online, to
    /// the group a spread would give it. Keys right under the prefix, and
    /// subtrees created later, stay with its owner (run it again for those).
    Split {
        /// The prefix, ending with '/' (e.g. /registry/pods/).
        prefix: String,
        /// Comma-separated group ids (at least two; the owner may be one).
        groups: String,
        /// Copy at most this many MB per second per move (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate_mb: f64,
    },
    /// Undo a split: everything under a prefix moves to one group with its
    /// data (the parts first, then the prefix), and the pins under it go.
    Merge {
        /// The prefix, ending with '/'.
        prefix: String,
        /// The group to hold all of it.
        group: u64,
        /// Copy at most this many MB per second per move (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate_mb: f64,
    },
    /// Moves in flight and the most recent ones.
    Moves {
        /// Stop the move of this prefix (it rolls back, unless its cutover committed).
        #[arg(long)]
        cancel: Option<String>,
    },
    /// Moves units from groups above the mean (bytes, then writes/s) to the
    /// emptiest, or splits a unit too hot to move; --dry-run prints the plan and why.
    Rebalance {
        /// Plan and explain only.
        #[arg(long)]
        dry_run: bool,
        /// How far above the mean a group may go (0.2: 20%).
        #[arg(long, default_value_t = 0.2)]
        margin: f64,
        /// MiB the fullest group must hold before sizes are balanced.
        #[arg(long, default_value_t = 64)]
        min_mib: u64,
        /// Writes/s the busiest group must take before load is balanced.
        #[arg(long, default_value_t = 500.0)]
        min_writes: f64,
        /// Moves at most.
        #[arg(long, default_value_t = 1)]
        max_moves: usize,
    },
    /// The hottest and largest placement units: keys, bytes, writes/s and
    /// reads/s per unit and group (rates between two samples).
    Top {
        /// Seconds between the two samples.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Sort by bytes, keys, writes or reads.
        #[arg(long, default_value = "writes")]
        by: String,
        /// Rows to show (0: all).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Which placement unit and group hold a key.
    Where {
        /// The key (e.g. /registry/pods/default/web-0). Named apart from the
        /// global --key (a TLS key file), which would take its value.
        #[arg(value_name = "KEY")]
        lookup: String,
    },
    /// Manage groups.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Manage learners.
    Learner {
        #[command(subcommand)]
        cmd: LearnerCmd,
    },
    /// Manage replicas.
    Replica {
        #[command(subcommand)]
        cmd: ReplicaCmd,
    },
}

#[derive(Subcommand)]
enum ReplicaCmd {
    /// Remove a group's replica from a node (raft member remove, then the
    /// map; the node stops it and deletes its data).
    Remove { group: u64, node: String },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group; waits until it has a leader. Off the ring (give it
    /// prefixes with move, or let the rebalancer), unless --ring.
    Add {
        /// Voters.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Learners (read-only replicas).
        #[arg(long, default_value_t = 0)]
        learners: usize,
        /// Then join the ring with the units it gives the group, moved
        /// online with their data (as `group join`).
        #[arg(long)]
        ring: bool,
        /// With --ring: copy at most this many MB per second per move (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate_mb: f64,
    },
    /// Put a group on the consistent-hash ring: the units the ring then
    /// gives it (~1/N of them) move there online with their data, one move
    /// each, then the ring changes at one fenced map epoch. Run again if cut short.
    Join {
        group: u64,
        /// Copy at most this many MB per second per move (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate_mb: f64,
    },
    /// Give away everything a group holds, with its data: off the ring (its
    /// units move to the groups the ring then names), every prefix pinned to
    /// it to the groups holding the fewest bytes (one move each), the keys
    /// of its unit pins in one last move, its leases copied to their new
    /// homes; then `group remove` takes it out.
    Drain {
        group: u64,
        /// Copy at most this many MB per second per move (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate_mb: f64,
    },
    /// Take a drained group out of the map (it must own nothing and hold no
    /// key); its nodes stop its replicas and delete their data.
    Remove { group: u64 },
    /// etcd's HashKV on every replica of a group: do they hold the same?
    Hashkv {
        group: u64,
        /// The revision to hash at (0: each member's current).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
    /// etcd's Snapshot of a group into a file (a backup of that group).
    Snapshot {
        group: u64,
        /// Where to write it.
        file: String,
    },
    /// etcd's MoveLeader: the group's leadership to its replica on a node.
    MoveLeader {
        group: u64,
        /// The node (as in `tessera status`, e.g. n2).
        node: String,
    },
}

#[derive(Subcommand)]
enum LearnerCmd {
    /// Add a learner to a group (on the least loaded node without one, or --node).
    Add {
        group: u64,
        #[arg(long)]
        node: Option<String>,
    },
}

/// The answer as JSON with --json, else the summary.
fn show<T: serde::Serialize>(json: bool, answer: &T, summary: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        println!("{}", summary(answer));
    }
    Ok(())
}

/// Comma-separated group ids (`1,2,3`).
fn parse_groups(groups: &str) -> anyhow::Result<Vec<u64>> {
    groups
        .split(',')
        .map(|g| g.trim().parse().map_err(|_| anyhow::anyhow!("{g:?} is not a group id (expected e.g. 1,2,3)")))
        .collect()
}

fn ownership(c: &placement::api::OwnershipChanged) -> String {
    let to = c.groups.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    match c.changed {
        true => format!("{} -> group(s) {to} (map epoch {})", c.prefix, c.epoch),
        false => format!("{} is already on group(s) {to} (map epoch {})", c.prefix, c.epoch),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let r: anyhow::Result<()> = async {
        let p = cli.placement()?;
        match cli.cmd {
            Cmd::Dev(a) => dev::run(a).await,
            Cmd::Status => {
                let map = p.map().await?;
                let s = status::collect(p.dialer(), &map).await;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    status::print(&s);
                }
                Ok(())
            }
            Cmd::Pin { prefix, group } => show(json, &p.pin(&prefix, group).await?, ownership),
            Cmd::Move { prefix, group, rate_mb } => {
                let req = placement::api::MoveRequest { prefix, group, rate_bytes: (rate_mb * 1e6) as u64 };
                let report = moves::run(&p, &req, json).await?;
                show(json, &report, moves::summary)
            }
            Cmd::Split { prefix, groups, rate_mb } => {
                let groups = parse_groups(&groups)?;
                let req = placement::api::SplitRequest { prefix, groups, rate_bytes: (rate_mb * 1e6) as u64 };
                let under = req.prefix.clone();
                let split = moves::with_progress(&p, json, p.split(&req), |m| m.prefix.starts_with(&under)).await?;
                show(json, &split, moves::split_summary)
            }
            Cmd::Merge { prefix, group, rate_mb } => {
                let req = placement::api::MergeRequest { prefix, group, rate_bytes: (rate_mb * 1e6) as u64 };
                let under = req.prefix.clone();
                let merged = moves::with_progress(&p, json, p.merge(&req), |m| m.prefix.starts_with(&under)).await?;
                show(json, &merged, moves::merge_summary)
            }
            Cmd::Moves { cancel: Some(prefix) } => {
                p.cancel_move(&prefix).await?;
                show(json, &serde_json::json!({ "cancelled": prefix }), |_| {
                    format!("move of {prefix} cancelled (it rolls back unless its cutover committed)")
                })
            }
            Cmd::Moves { cancel: None } => show(json, &p.moves().await?, moves::list),
            Cmd::Rebalance { dry_run, margin, min_mib, min_writes, max_moves } => {
                let thresholds = placement::rebalance::Thresholds {
                    margin,
                    min_bytes: min_mib << 20,
                    min_writes_per_s: min_writes,
                    max_moves,
                };
                let req = placement::api::RebalanceRequest { dry_run, interval_ms: 2000, thresholds: Some(thresholds) };
                show(json, &p.rebalance(&req).await?, moves::plan)
            }
            Cmd::Top { interval, by, limit } => show(json, &top::run(&p, interval, &by, limit).await?, top::print),
            Cmd::Where { lookup } => {
                let map = p.map().await?;
                show(json, &moves::locate(&map, &lookup), moves::located)
            }
            Cmd::Spread { prefix, groups } => {
                let groups = parse_groups(&groups)?;
                show(json, &p.spread(&prefix, &groups).await?, ownership)
            }
            Cmd::Group { cmd: GroupCmd::Add { replicas, learners, ring: true, rate_mb } } => {
                let added = p.add_group(&placement::api::GroupAddRequest { replicas, learners }).await?;
                group::wait_for_leader(&p, added.group, std::time::Duration::from_secs(60)).await?;
                let joining = p.join_ring(added.group, (rate_mb * 1e6) as u64);
                show(json, &moves::with_progress(&p, json, joining, |m| m.to == added.group).await?, group::joined)
            }
            Cmd::Group { cmd: GroupCmd::Join { group, rate_mb } } => {
                let joining = p.join_ring(group, (rate_mb * 1e6) as u64);
                show(json, &moves::with_progress(&p, json, joining, |m| m.to == group).await?, group::joined)
            }
            Cmd::Group { cmd: GroupCmd::Add { replicas, learners, ring: false, .. } } => {
                let added = p.add_group(&placement::api::GroupAddRequest { replicas, learners }).await?;
                group::wait_for_leader(&p, added.group, std::time::Duration::from_secs(60)).await?;
                show(json, &added, |a| {
                    let nodes: Vec<&str> = a.replicas.iter().map(|r| r.node.as_str()).collect();
                    format!(
                        "group {} created on {} and has a leader (map epoch {}); give it prefixes with `tessera move`",
                        a.group,
                        nodes.join(","),
                        a.epoch
                    )
                })
            }
            Cmd::Group { cmd: GroupCmd::Drain { group, rate_mb } } => {
                let draining = p.drain_group(group, (rate_mb * 1e6) as u64);
                let drained = moves::with_progress(&p, json, draining, |m| m.from.contains(&group)).await?;
                show(json, &drained, |d| {
                    let mut out: Vec<String> = d.moves.iter().map(moves::summary).collect();
                    if d.ring_flip_ms > 0 {
                        out.push(format!("group {} left the ring (older maps refused for {} ms)", d.group, d.ring_flip_ms));
                    }
                    out.push(format!(
                        "group {} drained: {} moves, {} leases copied to their new homes (map epoch {}); `tessera group remove {}` takes it out",
                        d.group,
                        d.moves.len(),
                        d.leases_copied,
                        d.epoch,
                        d.group
                    ));
                    out.join("\n")
                })
            }
            Cmd::Group { cmd: GroupCmd::Remove { group } } => {
                let removed = p.remove_group(group).await?;
                show(json, &removed, |r| {
                    format!(
                        "group {} removed (map epoch {}); its nodes stop its replicas and delete their data",
                        r.group, r.epoch
                    )
                })
            }
            Cmd::Group { cmd: GroupCmd::Hashkv { group, rev } } => {
                let h = group::hashkv(p.dialer(), &p.map().await?, group, rev).await?;
                show(json, &h, group::print_hashes)?;
                if !h.agree {
                    std::process::exit(2);
                }
                Ok(())
            }
            Cmd::Group { cmd: GroupCmd::Snapshot { group, file } } => {
                let saved = group::snapshot(p.dialer(), &p.map().await?, group, &file).await?;
                show(json, &saved, |s| format!("group {}'s snapshot from {}: {} bytes in {}", s.group, s.node, s.bytes, s.file))
            }
            Cmd::Group { cmd: GroupCmd::MoveLeader { group, node } } => {
                let said = group::move_leader(p.dialer(), &p.map().await?, group, &node).await?;
                show(json, &serde_json::json!({ "group": group, "node": node, "result": said }), |_| said.clone())
            }
            Cmd::Learner { cmd: LearnerCmd::Add { group, node } } => {
                let added = p.add_learner(group, node).await?;
                show(json, &added, |a| {
                    format!("learner {} of group {} added on {} (map epoch {})", a.member_id, a.group, a.node, a.epoch)
                })
            }
            Cmd::Replica { cmd: ReplicaCmd::Remove { group, node } } => {
                let removed = p.remove_replica(group, &node).await?;
                show(json, &removed, |r| format!("group {}'s replica on {} removed (map epoch {})", r.group, r.node, r.epoch))
            }
        }
    }
    .await;
    if let Err(e) = r {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
