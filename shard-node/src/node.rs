//! Starting and stopping one shard-node member: open the engine, bootstrap
//! or resume the group, run its driver thread, serve the client and peer
//! ports, and shut all of it down cleanly.

use crate::apply::StateMachine;
use crate::config::{socket_addr, split_urls, Config};
use crate::engine::keys::{decode_u64, GroupKeys};
use crate::engine::{Engine, RocksEngine, WriteBatch};
use crate::group::{Group, GroupSettings, Msg};
use crate::hlc::Hlc;
use crate::members::{fnv1a, member_id};
use crate::raft::driver::{Driver, DriverSettings};
use crate::raft::storage::RaftStorage;
use crate::raft::transport::{Mailboxes, Transport};
use crate::server::{peer::PeerService, ClientApi};
use anyhow::{bail, Context};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::command::{command::Op, MemberAttributes, MemberContext};
use tessera_proto::tessera::transport::peer_server::PeerServer;
use tokio::net::TcpListener;

/// The group a standalone (etcd-style) member serves.
pub const STANDALONE_GROUP: u64 = 0;

/// A running member: its addresses and group, and how to stop it.
pub struct Running {
    pub client_addrs: Vec<SocketAddr>,
    pub peer_addr: SocketAddr,
    pub group: Arc<Group>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    driver: Option<std::thread::JoinHandle<()>>,
    mailboxes: Mailboxes,
}

impl Running {
    /// Stops serving, then stops the driver and waits for all of it.
    pub async fn shutdown(mut self) {
        self.hand_off_leadership().await;
        let _ = self.stop.send(true);
        // Graceful shutdown waits for connections to close, and a watch
        // stream never does on its own: give them a moment, then cut them.
        let grace = tokio::time::Instant::now() + Duration::from_secs(2);
        for mut t in self.tasks.drain(..) {
            if tokio::time::timeout_at(grace, &mut t).await.is_err() {
                t.abort();
            }
        }
        self.mailboxes.write().clear();
        let group = self.group.clone();
        if let Some(d) = self.driver.take() {
            let _ = tokio::task::spawn_blocking(move || {
                group.stop();
                d.join()
            })
            .await;
        }
    }
}

impl Running {
    /// A leader going down hands leadership to the most caught-up voter
    /// first, so clients see no election timeout (as etcd on SIGTERM).
    async fn hand_off_leadership(&self) {
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
        tracing::info!(to = format!("{target:x}"), done = self.group.status().leader != me, "leadership handed off");
    }
}

/// Runs a member until `shutdown` completes (the binary passes Ctrl-C;
/// tests boot the same code in-process).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    let mut removed = running.group.removed.subscribe();
    tokio::select! {
        _ = shutdown => {}
        _ = removed.wait_for(|r| *r) => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

fn identity(engine: &dyn Engine, keys: &GroupKeys, name: &str) -> anyhow::Result<Option<u64>> {
    Ok(engine.get(&keys.identity(name))?.map(|v| decode_u64(&v)))
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let dir = config.data_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&dir.join("db"))?);
    let keys = GroupKeys::new(STANDALONE_GROUP);

    let initial = config.initial_members()?;
    let token = &config.initial_cluster_token;
    let ids: Vec<(u64, &crate::config::InitialMember)> =
        initial.iter().map(|m| (member_id(&m.peer_urls, token), m)).collect();
    let my_id_flags = member_id(&config.advertise_peer_urls(), token);

    let sm = Arc::new(StateMachine::open(engine.clone(), keys, config.watch_event_cache_bytes)?);
    let storage = RaftStorage::open(engine.clone(), keys, sm.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Identity is fixed at bootstrap; a restart resumes it whatever the flags say.
    let (member_id, cluster_id) = match (identity(&*engine, &keys, "member_id")?, identity(&*engine, &keys, "cluster_id")?) {
        (Some(m), Some(c)) => (m, c),
        _ if config.initial_cluster_state == "existing" => {
            join_existing(&config, &*engine, &keys, &sm).await?
        }
        _ => {
            let mut sorted: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
            sorted.sort();
            let cluster_id = fnv1a(format!("{sorted:?}{token}").as_bytes());
            let mut batch = WriteBatch::default();
            if !config.restore_from.is_empty() {
                stage_restore(&config.restore_from, &keys, &sm, &mut batch)?;
            }
            let mut cs = raft::prelude::ConfState::default();
            cs.set_voters(sorted.clone());
            storage.bootstrap(&cs, &mut batch);
            batch.put(keys.meta("applied"), crate::raft::storage::INIT_INDEX.to_be_bytes().to_vec());
            for (id, m) in &ids {
                let client_urls = if *id == my_id_flags { config.advertise_client_urls() } else { vec![] };
                sm.upsert_member(
                    MemberContext { id: *id, name: m.name.clone(), peer_urls: m.peer_urls.clone(), client_urls, is_learner: false },
                    &mut batch,
                );
            }
            batch.put(keys.identity("member_id"), my_id_flags.to_be_bytes().to_vec());
            batch.put(keys.identity("cluster_id"), cluster_id.to_be_bytes().to_vec());
            engine.write(batch, true)?;
            sm.reload_after_snapshot()?;
            if !config.restore_from.is_empty() {
                tracing::info!(from = config.restore_from, revision = sm.store.current_revision(), "restored from backup");
            }
            tracing::info!(member = format!("{my_id_flags:x}"), cluster = format!("{cluster_id:x}"), "bootstrapped new cluster");
            (my_id_flags, cluster_id)
        }
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
    let logger = crate::raft::logger::logger(STANDALONE_GROUP, member_id);
    let node = raft::RawNode::new(&raft_cfg, storage.clone(), &logger).map_err(|e| anyhow::anyhow!("raft: {e}"))?;

    let request_timeout = Duration::from_secs(5) + 2 * Duration::from_millis(config.election_timeout);
    let (mb_tx, mb_rx) = std::sync::mpsc::sync_channel::<Msg>(8192);
    let mailboxes: Mailboxes = Arc::new(RwLock::new(HashMap::new()));
    mailboxes.write().insert(STANDALONE_GROUP, mb_tx.clone());
    let transport = Arc::new(Transport::new(tokio::runtime::Handle::current(), mailboxes.clone()));
    for id in sm.members.read().ids() {
        if let Some(url) = sm.members.read().get(id).and_then(|m| m.peer_urls.first().cloned()) {
            transport.set_peer(id, url);
        }
    }
    let group = Arc::new(Group::new(
        STANDALONE_GROUP,
        member_id,
        cluster_id,
        sm.clone(),
        Hlc::new(config.hlc_revisions()),
        GroupSettings { request_timeout, max_request_bytes: config.max_request_bytes, quota_bytes: config.quota_bytes() },
        mb_tx,
    ));
    group.hlc.observe(sm.store.current_revision());

    // Bind before the driver runs so peers reach us as soon as we campaign.
    let peer_listener = TcpListener::bind(socket_addr(&split_urls(&config.listen_peer_urls)[0])?).await?;
    let peer_addr = peer_listener.local_addr()?;
    let mut client_listeners = vec![];
    for u in split_urls(&config.listen_client_urls) {
        client_listeners.push(TcpListener::bind(socket_addr(&u)?).await.with_context(|| format!("listening on {u}"))?);
    }
    let client_addrs: Vec<SocketAddr> = client_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();

    let driver = Driver::new(
        node,
        storage,
        group.clone(),
        mb_rx,
        transport,
        DriverSettings {
            tick,
            election_ticks,
            snapshot_count: config.snapshot_count,
            catchup_entries: config.experimental_snapshot_catchup_entries,
            request_timeout,
        },
    );
    let driver = std::thread::Builder::new().name(format!("raft-{STANDALONE_GROUP}")).spawn(move || driver.run())?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![];
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let peer_svc = PeerService { mailboxes: mailboxes.clone(), group: group.clone() };
    let peer_server = tonic::transport::Server::builder()
        .add_service(PeerServer::new(peer_svc).max_decoding_message_size(usize::MAX))
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(peer_listener), |s| {
                s.inspect(|tcp| {
                    let _ = tcp.set_nodelay(true);
                })
            }),
            stopped(stop_rx.clone()),
        );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = peer_server.await {
            tracing::error!(error = %e, "peer server failed");
        }
    }));

    if config.experimental_initial_corrupt_check {
        if let Err(e) = crate::corruption::initial_check(&group).await {
            let _ = stop_tx.send(true);
            group.stop();
            bail!("{e}");
        }
    }

    // etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
    let min_lease_ttl = (config.election_timeout * 3 / 2).div_ceil(1000) as i64;
    for l in client_listeners {
        let app = ClientApi {
            group: group.clone(),
            max_txn_ops: config.max_txn_ops,
            progress_interval: config.progress_notify_interval()?,
            min_lease_ttl,
        }
        .router();
        let rx = stop_rx.clone();
        let l = crate::server::authority::ClientListener(l);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stopped(rx)).await {
                tracing::error!(error = %e, "client server failed");
            }
        }));
    }

    tasks.push(tokio::spawn(crate::server::lease::run_lease_loops(group.clone(), Duration::from_secs(300), stop_rx.clone())));
    let corrupt_every = crate::config::parse_duration(&config.experimental_corrupt_check_time)?;
    if !corrupt_every.is_zero() {
        tasks.push(tokio::spawn(crate::corruption::run_periodic(group.clone(), corrupt_every, stop_rx.clone())));
    }
    tasks.push(tokio::spawn(publish_attributes(group.clone(), config.name.clone(), config.advertise_client_urls(), stop_rx)));

    tracing::info!(name = config.name, member = format!("{member_id:x}"), client = ?client_addrs, peer = %peer_addr, "shard-node serving");
    Ok(Running { client_addrs, peer_addr, group, stop: stop_tx, tasks, driver: Some(driver), mailboxes })
}

/// Announces this member's name and client URLs through raft once a leader
/// exists (etcd's publish), so MemberList shows them on every member.
async fn publish_attributes(group: Arc<Group>, name: String, client_urls: Vec<String>, mut stop: tokio::sync::watch::Receiver<bool>) {
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
async fn join_existing(config: &Config, engine: &dyn Engine, keys: &GroupKeys, sm: &StateMachine) -> anyhow::Result<(u64, u64)> {
    let mine = config.advertise_peer_urls();
    let mut last_err = String::from("no other member in --initial-cluster");
    for m in config.initial_members()? {
        if m.peer_urls.iter().any(|u| mine.contains(u)) {
            continue;
        }
        for url in &m.peer_urls {
            let resp = async {
                let mut c = tessera_proto::tessera::transport::peer_client::PeerClient::connect(url.clone()).await?;
                anyhow::Ok(c.members(tessera_proto::tessera::transport::MembersRequest {}).await?.into_inner())
            }
            .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last_err = format!("{url}: {e}");
                    continue;
                }
            };
            let me = resp
                .members
                .iter()
                .find(|x| x.peer_urls.iter().any(|u| mine.contains(u)))
                .ok_or_else(|| anyhow::anyhow!("this member ({}) is not in the group: add it with `etcdctl member add` first", mine.join(",")))?;
            let mut batch = WriteBatch::default();
            for member in &resp.members {
                sm.upsert_member(member.clone(), &mut batch);
            }
            batch.put(keys.identity("member_id"), me.id.to_be_bytes().to_vec());
            batch.put(keys.identity("cluster_id"), resp.cluster_id.to_be_bytes().to_vec());
            engine.write(batch, true)?;
            tracing::info!(member = format!("{:x}", me.id), "joining existing group");
            return Ok((me.id, resp.cluster_id));
        }
    }
    bail!("cannot reach the group to join: {last_err}")
}

/// Puts a backup's state into `batch` as the start of a new group: its
/// data and leases, none of its members, alarms or log position.
fn stage_restore(path: &str, keys: &GroupKeys, sm: &StateMachine, batch: &mut WriteBatch) -> anyhow::Result<()> {
    let file = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let state = crate::raft::snapshot::decode_backup(&file)?;
    sm.stage_snapshot(state, batch)?;
    let (start, end) = keys.table(b'n');
    batch.delete_range(start, end);
    batch.delete(keys.meta("alarms"));
    Ok(())
}
