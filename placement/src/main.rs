//! `placement`: a placement member. Takes a shard-node's etcd flags (its
//! store is a standalone group: 1 or 3 members) and serves the admin API
//! next to the store's etcd API on the client port.

use shard_node::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},raft=warn", config.log_level))),
        )
        .with_writer(std::io::stderr)
        .init();
    if config.federated() {
        anyhow::bail!("placement keeps its own store: --placement-endpoints does not apply");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store_url = config.advertise_client_urls()[0].clone();
        let admin = placement::admin::routes(placement::admin::Admin { store_url });
        let running = shard_node::node::start_with(config, admin).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        running.shutdown().await;
        anyhow::Ok(())
    })
}
