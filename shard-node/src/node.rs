//! A shard-node process: one engine, one raft transport, one peer port and
//! one client port shared by every replica it hosts (`replica.rs`).
//!
//! Two modes: standalone (etcd's flags: one group, id 0, bootstrapped from
//! --initial-cluster) and federated (--placement-endpoints: the replicas the
//! shard map assigns to this node, `federation.rs`). Requests on the client
//! port name their group in the `tessera-group` metadata; without it they go
//! to group 0, so etcd clients talk to a standalone node unchanged.

use crate::config::Config;
use crate::group::Group;
use crate::locks::RwLock;
use crate::members::{cluster_id, member_id};
use crate::raft::transport::{GrpcTransport, Mailboxes};
use crate::replica::{Bootstrap, NodeParts, Replica};
use crate::server::peer::PeerService;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::command::MemberContext;
use tessera_proto::tessera::transport::peer_server::PeerServer;
use tessera_rpc::flags::Urls;
use tokio::net::TcpListener;

/// The group a standalone (etcd-style) member serves.
pub const STANDALONE_GROUP: u64 = 0;

pub struct Node {
    pub parts: NodeParts,
    replicas: RwLock<HashMap<u64, Arc<Replica>>>,
    /// Serialises starting and stopping replicas.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
}

impl Node {
    pub fn replica(&self, group: u64) -> Option<Arc<Replica>> {
        self.replicas.read().get(&group).cloned()
    }

    pub fn group(&self, group: u64) -> Option<Arc<Group>> {
        self.replica(group).map(|r| r.group.clone())
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        let mut v: Vec<_> = self.replicas.read().values().cloned().collect();
        v.sort_by_key(|r| r.group.id);
        v
    }

    pub fn mailboxes(&self) -> &Mailboxes {
        &self.parts.mailboxes
    }

    /// Starts a replica unless it runs already.
    pub async fn start_replica(&self, group: u64, boot: Bootstrap) -> anyhow::Result<Arc<Replica>> {
        let _guard = self.lifecycle.lock().await;
        if let Some(r) = self.replica(group) {
            return Ok(r);
        }
        let r = crate::replica::start(&self.parts, group, boot).await?;
        self.replicas.write().insert(group, r.clone());
        Ok(r)
    }

    pub async fn stop_replica(&self, group: u64) {
        let _guard = self.lifecycle.lock().await;
        let r = self.replicas.write().remove(&group);
        if let Some(r) = r {
            r.stop(&self.parts.mailboxes).await;
        }
    }
}

/// A running node: its addresses, its replicas, and how to stop it.
pub struct Running {
    pub client_addrs: Vec<SocketAddr>,
    pub peer_addr: SocketAddr,
    pub node: Arc<Node>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The runtime of raft's network traffic (peer server, peer streams).
    raft_net: NetRuntime,
}

/// A runtime owned by async code: shut down without blocking when dropped.
struct NetRuntime(Option<tokio::runtime::Runtime>);

impl NetRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle().clone()
    }
}

impl Drop for NetRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Running {
    /// Standalone mode's group.
    pub fn group(&self) -> Option<Arc<Group>> {
        self.node.group(STANDALONE_GROUP)
    }

    /// Stops serving, then stops every replica and waits for all of it.
    pub async fn shutdown(mut self) {
        let replicas = self.node.replicas();
        futures::future::join_all(replicas.iter().map(|r| r.hand_off_leadership())).await;
        let _ = self.stop.send(true);
        // Graceful shutdown waits for connections to close, and a watch
        // stream never does on its own: give them a moment, then cut them.
        let grace = tokio::time::Instant::now() + Duration::from_secs(2);
        for mut t in self.tasks.drain(..) {
            if tokio::time::timeout_at(grace, &mut t).await.is_err() {
                t.abort();
            }
        }
        for r in replicas {
            self.node.stop_replica(r.group.id).await;
        }
        self.node.parts.mailboxes.write().clear();
        // Raft's network runtime may still run a peer stream that holds the
        // node (and so the engine): let it finish, off this runtime's workers.
        if let Some(rt) = self.raft_net.0.take() {
            let _ = tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(2))).await;
        }
        // The engine may outlive this call in a task that has not noticed
        // the stop yet: its background threads must not (the process exits
        // next, and rocksdb aborts if they run while it tears down).
        self.node.parts.engine.stop_background_work();
    }
}

/// Runs a node until `shutdown` completes (the binary passes Ctrl-C;
/// tests boot the same code in-process).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    let removed = async {
        match running.group() {
            Some(g) => {
                let _ = g.raft.removed.subscribe().wait_for(|r| *r).await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = removed => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let dir = config.data_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let engine = crate::engine::open_durable(&dir.join("db"))?;
    let mailboxes: Mailboxes = crate::raft::transport::mailboxes();
    // Raft's traffic between nodes (heartbeats, appends, votes) runs on a
    // runtime of its own: a node whose client-facing runtime is saturated
    // still keeps its leaders' leases and its followers' elections timers.
    let raft_net = NetRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft-net")
            .enable_all()
            .build()
            .context("starting the raft network runtime")?,
    ));
    let raft_net_handle = raft_net.handle();
    let dialer = config.dialer()?;
    let transport = Arc::new(GrpcTransport::new(raft_net_handle.clone(), mailboxes.clone(), dialer.clone()));
    let (client_tls, peer_tls) = serving_tls(&config)?;
    let jwt = config.jwt()?;
    let node = Arc::new(Node {
        parts: NodeParts {
            jwt,
            oracle: config
                .federated()
                .then(|| tessera_rpc::oracle::OracleClient::new(config.placement_endpoints.to_vec(), dialer.clone())),
            dialer,
            config: config.clone(),
            engine,
            mailboxes,
            transport,
        },
        replicas: RwLock::leaf("hosted replicas", HashMap::new()),
        lifecycle: tokio::sync::Mutex::new(()),
    });

    // Bind before any driver runs so peers reach us as soon as we campaign.
    // A std listener, registered with the raft runtime's reactor below.
    let peer_listener = std::net::TcpListener::bind(config.listen_peer_urls.socket_addrs()?[0])?;
    peer_listener.set_nonblocking(true)?;
    let peer_addr = peer_listener.local_addr()?;
    let mut client_listeners = vec![];
    for (u, addr) in config.listen_client_urls.iter().zip(config.listen_client_urls.socket_addrs()?) {
        let tls = if tessera_rpc::flags::is_https(u) { client_tls.clone() } else { None };
        client_listeners.push((TcpListener::bind(addr).await.with_context(|| format!("listening on {u}"))?, tls));
    }
    let client_addrs: Vec<SocketAddr> = client_listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![];
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let peer_svc = PeerService { node: node.clone() };
    let peer_stop = stopped(stop_rx.clone());
    tasks.push(raft_net_handle.spawn(async move {
        let peer_listener = match TcpListener::from_std(peer_listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "peer listener"),
        };
        let peer_server = tonic::transport::Server::builder()
            .add_service(PeerServer::new(peer_svc).max_decoding_message_size(usize::MAX))
            .serve_with_incoming_shutdown(tessera_rpc::serve::incoming(peer_listener, peer_tls), peer_stop);
        if let Err(e) = peer_server.await {
            tracing::error!(error = %e, "peer server failed");
        }
    }));

    let mut standalone = None;
    if config.federated() {
        crate::federation::resume_hosted(&node).await?;
    } else {
        let group = node.start_replica(STANDALONE_GROUP, standalone_bootstrap(&config)?).await?.group.clone();
        standalone = Some(group.clone());
        if config.experimental_initial_corrupt_check {
            if let Err(e) = crate::corruption::initial_check(&group).await {
                let _ = stop_tx.send(true);
                node.stop_replica(STANDALONE_GROUP).await;
                bail!("{e}");
            }
        }
    }

    for (l, tls) in client_listeners {
        let app = crate::server::node_router(node.clone());
        let rx = stop_rx.clone();
        let l = tessera_rpc::authority::ClientListener(l);
        let streams = config.max_concurrent_streams;
        tasks.push(tokio::spawn(async move {
            tessera_rpc::serve::serve_with_streams(l, tls, app, stopped(rx), streams).await;
        }));
    }
    if config.federated() {
        tasks.push(tokio::spawn(crate::federation::run(node.clone(), stop_rx.clone())));
    }
    if let Some(group) = standalone {
        tasks.push(tokio::spawn(announce_ready(group)));
    }

    tracing::info!(name = config.name, client = ?client_addrs, peer = %peer_addr, federated = config.federated(), "shard-node serving");
    Ok(Running { client_addrs, peer_addr, node, stop: stop_tx, tasks, raft_net })
}

/// etcd's two log lines for a member that serves (tools wait for them:
/// etcd's own e2e harness starts "etcd" and reads its output for both), once
/// this member answers linearizable requests.
async fn announce_ready(group: Arc<crate::group::Group>) {
    while tokio::time::timeout(std::time::Duration::from_secs(1), group.read_index()).await.map_or(true, |r| r.is_err()) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::info!(member = format!("{:x}", group.member_id), "published local member to cluster through raft");
    tracing::info!(cluster_version = "3.5", "enabled capabilities for version 3.5");
}

type Tls = Option<Arc<tessera_rpc::tls::ServerTls>>;

/// The client and peer ports' TLS, for their https:// URLs (etcd serves an
/// http:// URL plainly even when certificates are given, and says so).
fn serving_tls(config: &Config) -> anyhow::Result<(Tls, Tls)> {
    let ciphers = config.client_tls.cipher_suites();
    let side = |name: &str, files: tessera_rpc::tls::TlsFiles, listen: &Urls, advertise: &Urls| -> anyhow::Result<Tls> {
        if !listen.any_https() {
            if files.configured() {
                tracing::warn!("{name}: scheme is HTTP while key and cert files are present; ignoring key and cert files");
            }
            return Ok(None);
        }
        let hosts = tessera_rpc::tls::url_hosts(listen.iter().chain(advertise.iter()));
        Ok(tessera_rpc::tls::ServerTls::new(&files, &ciphers, &config.auto_tls_dir(name), &hosts)?)
    };
    Ok((
        side("client", config.client_tls_files(), &config.listen_client_urls, &config.advertise_client_urls)?,
        side("peer", config.peer_tls_files(), &config.listen_peer_urls, &config.initial_advertise_peer_urls)?,
    ))
}

/// Standalone mode: the group from etcd's --initial-cluster flags.
fn standalone_bootstrap(config: &Config) -> anyhow::Result<Bootstrap> {
    let initial = config.initial_members()?;
    if config.initial_cluster_state == "existing" {
        return Ok(Bootstrap::Join { peer_urls: initial.iter().flat_map(|m| m.peer_urls.clone()).collect() });
    }
    let token = &config.initial_cluster_token;
    let my_id = member_id(&config.advertise_peer_urls(), token);
    let members: Vec<MemberContext> = initial
        .iter()
        .map(|m| {
            let id = member_id(&m.peer_urls, token);
            let client_urls = if id == my_id { config.advertise_client_urls.to_vec() } else { vec![] };
            MemberContext { id, name: m.name.clone(), peer_urls: m.peer_urls.clone(), client_urls, is_learner: false }
        })
        .collect();
    let cluster_id = cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
    Ok(Bootstrap::New { member_id: my_id, cluster_id, members, restore_from: config.restore_from.clone() })
}
