//! One replica of one raft group on this node: open or bootstrap its state,
//! run its driver thread and its background loops, and stop it. A node
//! hosts any number of these over one engine and one transport (`node.rs`).

use crate::config::Config;
use crate::engine::keys::{decode_u64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::group::{Group, GroupSettings};
use crate::locks::Mutex;
use crate::raft::driver::{Driver, DriverSettings};
use crate::raft::storage::RaftStorage;
use crate::raft::transport::Mailboxes;
use crate::raft::{Msg, RaftHandle, Transport};
use crate::server::ClientApi;
use crate::state::StateMachine;
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::command::{command::Op, MemberAttributes, MemberContext};

/// How a replica gets its identity the first time it starts here.
pub enum Bootstrap {
    /// A new group with these initial members (voters and learners).
    New { member_id: u64, cluster_id: u64, members: Vec<MemberContext>, restore_from: String },
    /// A member already added to a running group: learn the id from a peer
    /// (by our peer URLs) and wait for the leader's snapshot.
    Join { peer_urls: Vec<String> },
    /// Only resume from data already here.
    Resume,
}

/// What every replica on a node shares.
pub struct NodeParts {
    pub config: Config,
    pub engine: Arc<dyn Engine>,
    pub mailboxes: Mailboxes,
    pub transport: Arc<dyn Transport>,
    /// The federation's revision oracle (None: a standalone node).
    pub oracle: Option<Arc<tessera_rpc::oracle::OracleClient>>,
    /// How this node dials others (`Config::dialer`).
    pub dialer: tessera_rpc::tls::Dialer,
    /// JWT auth tokens, its keys read once at start (`Config::jwt`); None: simple tokens.
    pub jwt: Option<Arc<crate::auth::jwt::Jwt>>,
}

pub struct Replica {
    pub group: Arc<Group>,
    /// This group's etcd gRPC services (the node dispatches by group).
    pub api: axum::Router,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    driver: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// This start of the replica: one more than the last (fsynced before any
/// proposal). Proposals are numbered from `incarnation << 32`, so a number
/// never repeats across restarts: an entry this member proposed before a
/// crash can still be applied after it, and one whose number a new proposal
/// reused would answer that proposal with another entry's result (a chaos
/// run under slow disks saw a put acknowledged at a revision that was not
/// its own).
fn next_incarnation(engine: &dyn Engine, keys: &GroupKeys) -> anyhow::Result<u64> {
    let key = keys.identity("incarnation");
    let next = engine.get(&key)?.map(|v| decode_u64(&v)).transpose()?.unwrap_or(0) + 1;
    let mut batch = WriteBatch::default();
    batch.put(key, next.to_be_bytes().to_vec());
    engine.write(batch, true)?;
    Ok(next)
}

fn identity(engine: &dyn Engine, keys: &GroupKeys, name: &str) -> anyhow::Result<Option<u64>> {
    Ok(engine.get(&keys.identity(name))?.map(|v| decode_u64(&v)).transpose()?)
}

/// Whether this node has data for `group` (it hosted it before).
pub fn has_identity(engine: &dyn Engine, group: u64) -> bool {
    identity(engine, &GroupKeys::new(group), "member_id").ok().flatten().is_some()
}

/// Opens (bootstrapping or joining first if need be) and starts a replica.
pub async fn start(parts: &NodeParts, group_id: u64, boot: Bootstrap) -> anyhow::Result<Arc<Replica>> {
    let config = &parts.config;
    let engine = parts.engine.clone();
    let keys = GroupKeys::new(group_id);
    let sm = Arc::new(StateMachine::open(engine.clone(), keys, config.watch_event_cache_bytes)?);
    let storage = RaftStorage::open(engine.clone(), keys, sm.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Identity is fixed at bootstrap; a restart resumes it whatever the flags say.
    let (member_id, cluster_id) = match (identity(&*engine, &keys, "member_id")?, identity(&*engine, &keys, "cluster_id")?) {
        (Some(m), Some(c)) => (m, c),
        _ => match boot {
            Bootstrap::Resume => bail!("no data for group {group_id} here"),
            Bootstrap::Join { peer_urls } => {
                join_existing(group_id, &peer_urls, &config.advertise_peer_urls(), &*engine, &keys, &sm).await?
            }
            Bootstrap::New { member_id, cluster_id, members, restore_from } => {
                let mut batch = WriteBatch::default();
                if !restore_from.is_empty() {
                    stage_restore(&restore_from, &keys, &sm, &mut batch)?;
                }
                let mut cs = raft::prelude::ConfState::default();
                let mut voters: Vec<u64> = members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
                let mut learners: Vec<u64> = members.iter().filter(|m| m.is_learner).map(|m| m.id).collect();
                voters.sort();
                learners.sort();
                cs.set_voters(voters);
                cs.set_learners(learners);
                storage.bootstrap(&cs, &mut batch);
                batch.put(keys.meta("applied"), crate::raft::storage::INIT_INDEX.to_be_bytes().to_vec());
                for m in members {
                    sm.upsert_member(m, &mut batch);
                }
                batch.put(keys.identity("member_id"), member_id.to_be_bytes().to_vec());
                batch.put(keys.identity("cluster_id"), cluster_id.to_be_bytes().to_vec());
                engine.write(batch, true)?;
                sm.reload()?;
                if !restore_from.is_empty() {
                    tracing::info!(from = restore_from, revision = sm.current_revision(), "restored from backup");
                }
                tracing::info!(
                    group = group_id,
                    member = format!("{member_id:x}"),
                    cluster = format!("{cluster_id:x}"),
                    "bootstrapped new group"
                );
                (member_id, cluster_id)
            }
        },
    };

    // Applies are written before the hard state carrying the commit index
    // that covers them; after a crash in between, applied can be ahead of
    // the persisted commit. Only committed entries are ever applied, so the
    // commit index can safely be raised to it.
    if storage.hard_state().get_commit() < sm.applied_index() {
        let mut batch = WriteBatch::default();
        storage.set_commit(sm.applied_index(), &mut batch);
        engine.write(batch, true)?;
    }

    let tick = Duration::from_millis(config.heartbeat_interval);
    let election_ticks = (config.election_timeout / config.heartbeat_interval) as usize;
    let raft_cfg = raft::Config {
        id: member_id,
        election_tick: election_ticks,
        heartbeat_tick: 1,
        applied: sm.applied_index(),
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    };
    raft_cfg.validate().map_err(|e| anyhow::anyhow!("raft config: {e}"))?;
    let logger = crate::raft::logger::logger(group_id, member_id);
    let node = raft::RawNode::new(&raft_cfg, storage.clone(), &logger).map_err(|e| anyhow::anyhow!("raft: {e}"))?;

    let request_timeout = Duration::from_secs(5) + 2 * Duration::from_millis(config.election_timeout);
    let (mb_tx, mb_rx) = std::sync::mpsc::sync_channel::<Msg>(8192);
    for m in sm.members().all() {
        if let Some(url) = m.peer_urls.first() {
            parts.transport.set_peer(m.id, url.clone());
        }
    }
    let first_seq = next_incarnation(&*engine, &keys)? << 32;
    let handle = Arc::new(RaftHandle::new(group_id, member_id, mb_tx.clone(), first_seq));
    let group = Arc::new(Group::new(
        cluster_id,
        sm.clone(),
        parts.oracle.clone(),
        GroupSettings {
            request_timeout,
            max_request_bytes: config.max_request_bytes,
            quota_bytes: config.quota_bytes(),
            dialer: parts.dialer.clone(),
            jwt: parts.jwt.clone(),
            strict_reconfig_check: config.strict_reconfig_check,
        },
        handle.clone(),
    ));
    parts.mailboxes.write().insert(group_id, mb_tx);

    let driver = Driver::new(
        node,
        storage,
        sm.clone(),
        handle,
        mb_rx,
        parts.transport.clone(),
        DriverSettings {
            tick,
            election_ticks,
            snapshot_count: config.snapshot_count,
            catchup_entries: config.experimental_snapshot_catchup_entries,
            request_timeout,
        },
    );
    let driver = std::thread::Builder::new().name(format!("raft-{group_id}")).spawn(move || driver.run())?;

    // etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
    let min_lease_ttl = (config.election_timeout * 3 / 2).div_ceil(1000) as i64;
    let api = ClientApi {
        group: group.clone(),
        max_txn_ops: config.max_txn_ops,
        progress_interval: config.progress_notify_interval(),
        min_lease_ttl,
        serve_oracle: config.revision_oracle,
        bcrypt_cost: config.auth.bcrypt_cost,
    }
    .grpc_router();
    sm.tokens.lock().set_ttl(config.auth.token_ttl());

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![];
    if let Some(oracle) = parts.oracle.clone() {
        // Data written before this group joined the timeline (or by a
        // version that counted revisions itself) must not be above it.
        let rev = sm.current_revision();
        tasks.push(tokio::spawn(async move {
            while oracle.observe(rev).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    tasks.push(tokio::spawn(crate::compactor::run(sm.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(crate::server::lease::run_lease_loops(group.clone(), Duration::from_secs(300), stop_rx.clone())));
    let corrupt_every = config.experimental_corrupt_check_time.get();
    if !corrupt_every.is_zero() {
        tasks.push(tokio::spawn(crate::corruption::run_periodic(group.clone(), corrupt_every, stop_rx.clone())));
    }
    tasks.push(tokio::spawn(publish_attributes(
        group.clone(),
        config.name.clone(),
        config.advertise_client_urls.to_vec(),
        stop_rx,
    )));
    Ok(Arc::new(Replica {
        group,
        api,
        stop,
        tasks: Mutex::leaf("replica tasks", tasks),
        driver: Mutex::leaf("replica driver", Some(driver)),
    }))
}

impl Replica {
    /// A leader going down hands leadership to the most caught-up voter
    /// first, so clients see no election timeout (as etcd on SIGTERM).
    pub async fn hand_off_leadership(&self) {
        let st = self.group.status();
        let me = self.group.member_id;
        if !st.is_leader {
            return;
        }
        let target = st.progress.iter().filter(|(id, _)| *id != me && st.voters.contains(id)).max_by_key(|(_, m)| *m);
        let Some((target, _)) = target else { return };
        if self.group.send(Msg::TransferLeader(*target)).is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.group.settings.request_timeout / 2;
        while tokio::time::Instant::now() < deadline && self.group.status().leader == me {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            group = self.group.id,
            to = format!("{target:x}"),
            done = self.group.status().leader != me,
            "leadership handed off"
        );
    }

    /// Stops the background loops and the driver, and waits for them.
    pub async fn stop(&self, mailboxes: &Mailboxes) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
        }
        mailboxes.write().remove(&self.group.id);
        let driver = self.driver.lock().take();
        let group = self.group.clone();
        if let Some(d) = driver {
            let _ = tokio::task::spawn_blocking(move || {
                group.stop();
                d.join()
            })
            .await;
        }
    }
}

/// Announces this member's name and client URLs through raft once a leader
/// exists (etcd's publish), so MemberList shows them on every member.
async fn publish_attributes(
    group: Arc<Group>,
    name: String,
    client_urls: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let attrs = MemberAttributes { id: group.member_id, name, client_urls };
    loop {
        tokio::select! {
            r = group.propose(Op::Publish(attrs.clone())) => if r.is_ok() { return },
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A new member of a running group: learns its id and the group from a
/// peer (it must have been added with `etcdctl member add` first), then
/// starts with an empty log; the leader catches it up with a snapshot.
async fn join_existing(
    group_id: u64,
    peer_urls: &[String],
    mine: &[String],
    engine: &dyn Engine,
    keys: &GroupKeys,
    sm: &StateMachine,
) -> anyhow::Result<(u64, u64)> {
    let mut last_err = String::from("no other member to ask");
    for url in peer_urls.iter().filter(|u| !mine.contains(u)) {
        let resp = async {
            let mut c = tessera_proto::tessera::transport::peer_client::PeerClient::connect(url.clone()).await?;
            let req = tessera_proto::tessera::transport::MembersRequest { group_id };
            anyhow::Ok(c.members(req).await?.into_inner())
        }
        .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                last_err = format!("{url}: {e}");
                continue;
            }
        };
        let me = resp.members.iter().find(|x| x.peer_urls.iter().any(|u| mine.contains(u))).ok_or_else(|| {
            anyhow::anyhow!("this member ({}) is not in the group: add it with `etcdctl member add` first", mine.join(","))
        })?;
        let mut batch = WriteBatch::default();
        for member in &resp.members {
            sm.upsert_member(member.clone(), &mut batch);
        }
        batch.put(keys.identity("member_id"), me.id.to_be_bytes().to_vec());
        batch.put(keys.identity("cluster_id"), resp.cluster_id.to_be_bytes().to_vec());
        engine.write(batch, true)?;
        tracing::info!(group = group_id, member = format!("{:x}", me.id), "joining existing group");
        return Ok((me.id, resp.cluster_id));
    }
    bail!("cannot reach the group to join: {last_err}")
}

/// Puts a backup's state into `batch` as the start of a new group: its
/// data and leases, none of its members, alarms or log position.
fn stage_restore(path: &str, keys: &GroupKeys, sm: &StateMachine, batch: &mut WriteBatch) -> anyhow::Result<()> {
    let file = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let state = crate::snapshot::decode_backup(&file)?;
    sm.stage_snapshot(state, batch)?;
    let (start, end) = keys.table(b'n');
    batch.delete_range(start, end);
    batch.delete(keys.meta("alarms"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;

    #[test]
    fn each_start_numbers_its_proposals_past_every_earlier_one() {
        let engine = MemoryEngine::default();
        let keys = GroupKeys::new(7);
        let first = next_incarnation(&engine, &keys).unwrap();
        let second = next_incarnation(&engine, &keys).unwrap();
        assert_eq!((first, second), (1, 2));
        // A start may propose up to 2^32 times before its numbers reach the next start's.
        assert!(first << 32 < second << 32);
        assert_eq!(next_incarnation(&engine, &GroupKeys::new(8)).unwrap(), 1, "per group");
    }
}
