//! `tessera`: a local federation in one command (`tessera dev`) and the
//! admin CLI over placement (status, pin, spread, group add, learner add,
//! replica remove).

mod dev;
mod http;
mod status;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: one etcd endpoint over a federation of raft groups")]
struct Cli {
    /// Placement's client URL (admin commands).
    #[arg(long, global = true, default_value = "http://127.0.0.1:12379", env = "TESSERA_PLACEMENT")]
    placement: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local federation: placement, shard-nodes and a router.
    Dev(dev::DevArgs),
    /// Groups, replicas (roles, leaders), shard map, keys and bytes per group.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Pin a prefix (and its subtree) to a group. Only for prefixes without data yet.
    Pin { prefix: String, group: u64 },
    /// Spread a prefix's keys over groups by their next segment. Only for prefixes without data yet.
    Spread {
        prefix: String,
        /// Comma-separated group ids.
        groups: String,
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
    /// Create a group (off the ring: give it prefixes with pin or spread).
    Add {
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 0)]
        learners: usize,
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

fn show(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let p = &cli.placement;
    let r: anyhow::Result<()> = async {
        match cli.cmd {
            Cmd::Dev(a) => dev::run(a).await,
            Cmd::Status { json } => {
                let (map, _) = shardmap::watcher::fetch(p).await?;
                let s = status::collect(&map).await;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    status::print(&s);
                }
                Ok(())
            }
            Cmd::Pin { prefix, group } => {
                show(
                    &http::call(p, "PUT", "/tessera/v1/pins", Some(serde_json::json!({"prefix": prefix, "group": group})))
                        .await?,
                );
                Ok(())
            }
            Cmd::Spread { prefix, groups } => {
                let groups: Vec<u64> = groups.split(',').map(|g| g.trim().parse()).collect::<Result<_, _>>()?;
                show(
                    &http::call(p, "PUT", "/tessera/v1/spreads", Some(serde_json::json!({"prefix": prefix, "groups": groups})))
                        .await?,
                );
                Ok(())
            }
            Cmd::Group { cmd: GroupCmd::Add { replicas, learners } } => {
                show(
                    &http::call(
                        p,
                        "POST",
                        "/tessera/v1/groups",
                        Some(serde_json::json!({"replicas": replicas, "learners": learners})),
                    )
                    .await?,
                );
                Ok(())
            }
            Cmd::Learner { cmd: LearnerCmd::Add { group, node } } => {
                let path = format!("/tessera/v1/groups/{group}/learners");
                show(&http::call(p, "POST", &path, Some(serde_json::json!({ "node": node }))).await?);
                Ok(())
            }
            Cmd::Replica { cmd: ReplicaCmd::Remove { group, node } } => {
                show(&http::call(p, "DELETE", &format!("/tessera/v1/groups/{group}/replicas/{node}"), None).await?);
                Ok(())
            }
        }
    }
    .await;
    if let Err(e) = r {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
