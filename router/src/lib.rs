//! The Tessera router: etcd's v3 API on one address over a federation of
//! raft groups. Stateless: it follows placement's shard map and routes,
//! fans out and merges (`kv`, `watch`, `leases`, `recipes`, `maintenance`
//! over `backends`). Any number may run; each serves every client.

pub mod backends;
pub mod config;
pub mod kv;
pub mod leases;
pub mod maintenance;
pub mod merge;
pub mod metrics;
pub mod recipes;
pub mod watch;

pub use config::Config;

use axum::routing::get;
use backends::Backends;
use shard_node::server::EtcdServices;
use std::net::SocketAddr;
use std::sync::Arc;
use tessera_proto::etcdserverpb::Member;

/// etcd's request limit plus gRPC framing, as on a shard-node.
const MAX_MESSAGE: usize = 1572864 + 512 * 1024;

pub struct Running {
    pub addr: SocketAddr,
    pub backends: Arc<Backends>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    poller: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.poller.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
    }
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let maps = shardmap::watcher::follow(shard_node::config::split_urls(&config.placement_endpoints));
    let backends = Backends::new(maps);
    let poller = tokio::spawn(backends.clone().poll());
    let listener = tokio::net::TcpListener::bind(shard_node::config::socket_addr(&config.listen_client_urls)?).await?;
    let addr = listener.local_addr()?;
    let advertise =
        if config.advertise_client_urls.is_empty() { format!("http://{addr}") } else { config.advertise_client_urls.clone() };
    let member = Member {
        id: shardmap::ring::hash(advertise.as_bytes()),
        name: config.name.clone(),
        peer_ur_ls: vec![],
        client_ur_ls: vec![advertise],
        is_learner: false,
    };
    let progress_interval = shard_node::config::parse_duration(&config.experimental_watch_progress_notify_interval)?;
    let maintenance = maintenance::MaintenanceService {
        backends: backends.clone(),
        member: member.clone(),
        cluster_id: shardmap::ring::hash(config.placement_endpoints.as_bytes()),
    };
    let kv = kv::KvService { backends: backends.clone() };
    let watch = watch::WatchService { backends: backends.clone(), progress_interval };
    let lease = leases::LeaseService { backends: backends.clone() };
    let recipes = recipes::Recipes { backends: backends.clone() };
    let etcd = EtcdServices {
        kv,
        watch,
        lease,
        cluster: maintenance.clone(),
        maintenance,
        lock: recipes.clone(),
        election: recipes,
        max_message: MAX_MESSAGE,
    };
    let health = backends.clone();
    let app = etcd
        .router(|grpc| grpc)
        .route("/metrics", get(|| async { metrics::render() }))
        .route(
            "/health",
            get(move || {
                let ok = health.healthy();
                async move {
                    let code = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                    (code, format!("{{\"health\":\"{ok}\"}}"))
                }
            }),
        )
        .route("/version", get(|| async { shard_node::server::maintenance::version_json() }));
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let listener = shard_node::server::authority::ClientListener(listener);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        shard_node::server::serve::serve(listener, app, shutdown).await;
    });
    tracing::info!(%addr, placement = config.placement_endpoints, "router serving");
    Ok(Running { addr, backends, stop, task, poller })
}
