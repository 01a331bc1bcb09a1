//! The Tessera router: etcd's v3 API on one address over a federation of
//! raft groups. Stateless: it follows placement's shard map and routes,
//! fans out and merges (`kv`, `watch`, `leases`, `recipes`, `maintenance`
//! over `backends`), each client request within one `deadline`. Any number
//! may run; each serves every client.
//!
//! Its library is what the binary and the tests start: `start(Config)`
//! answers a `Running` router; the rest is private.

mod auth;
mod backends;
mod config;
mod cross_txn;
mod deadline;
pub mod failpoints;
mod headers;
mod kv;
mod leases;
mod maintenance;
pub mod metrics;
mod range_stream;
mod ranges;
mod recipes;
mod watch;

pub use backends::Backends;
pub use config::Config;

use std::net::SocketAddr;
use std::sync::Arc;
use tessera_proto::etcdserverpb::Member;
use tessera_rpc::endpoints::{DEFAULT_MAX_REQUEST_BYTES, GRPC_OVERHEAD_BYTES};
use tessera_rpc::EtcdServices;

/// etcd's request limit plus gRPC framing, as on a shard-node.
const MAX_MESSAGE: usize = DEFAULT_MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;

/// A router serving, until `shutdown`.
pub struct Running {
    /// Where it serves clients (the port chosen, for a listen URL with port 0).
    pub addr: SocketAddr,
    /// Its view of the groups (tests read the map it routes by: `routing()`).
    pub backends: Arc<Backends>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    poller: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving; open calls get two seconds to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.poller.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
    }
}

/// Starts a router: follows placement's map and serves `config`'s listen URL.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let dialer = config.dial.dialer()?;
    let maps = shardmap::watcher::follow(config.placement_endpoints.to_vec(), dialer.clone());
    // The revision oracle is served by placement's store, as the map is.
    let oracle = tessera_rpc::oracle::OracleClient::new(config.placement_endpoints.to_vec(), dialer.clone());
    let listener = tokio::net::TcpListener::bind(config.listen_client_urls.socket_addrs()?[0]).await?;
    let addr = listener.local_addr()?;
    let scheme = if config.listen_client_urls.any_https() { "https" } else { "http" };
    let tls = config.tls.serving(&config.listen_client_urls, "router", addr.port())?;
    let advertise = config.advertise_client_urls.first().map_or_else(|| format!("{scheme}://{addr}"), String::from);
    let member = Member {
        id: shardmap::ring::hash(advertise.as_bytes()),
        name: config.name.clone(),
        peer_ur_ls: vec![],
        client_ur_ls: vec![advertise],
        is_learner: false,
    };
    let auth = auth::Gate::new(
        shardmap::store::Store::new(config.placement_endpoints.to_vec(), dialer.clone()),
        config.auth_settings()?,
    );
    let backends = Backends::new(member.id, maps, oracle, dialer);
    // The poller also finishes cross-group txns groups report in doubt.
    let polled = backends.clone();
    let poller = tokio::spawn(async move {
        tokio::join!(polled.clone().poll(), cross_txn::recover(polled));
    });
    let progress_interval = config.experimental_watch_progress_notify_interval.get();
    let maintenance = maintenance::MaintenanceService { backends: backends.clone(), auth: auth.clone(), member: member.clone() };
    let kv = kv::KvService { backends: backends.clone(), auth: auth.clone() };
    let watch = watch::WatchService { backends: backends.clone(), auth: auth.clone(), progress_interval };
    let lease = leases::LeaseService { backends: backends.clone(), auth: auth.clone() };
    let recipes = recipes::Recipes { backends: backends.clone(), auth: auth.clone() };
    let auth = tessera_rpc::auth::service::AuthApi(auth::FederationAuth {
        gate: auth,
        backends: backends.clone(),
        issued: Default::default(),
    });
    let etcd = EtcdServices {
        kv,
        watch,
        lease,
        cluster: maintenance.clone(),
        maintenance,
        auth,
        lock: recipes.clone(),
        election: recipes,
        max_message: MAX_MESSAGE,
    };
    let health = backends.clone();
    let app = etcd.router(|grpc| grpc).merge(tessera_rpc::endpoints::routes(move || std::future::ready(health.healthy()), || {}));
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let listener = tessera_rpc::authority::ClientListener(listener);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        tessera_rpc::serve::serve(listener, tls, app, shutdown).await;
    });
    tracing::info!(%addr, placement = %config.placement_endpoints, "router serving");
    Ok(Running { addr, backends, stop, task, poller })
}
