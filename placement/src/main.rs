//! `placement`: a placement member. Takes a shard-node's etcd flags (its
//! store is a standalone group: 1 or 3 members) and serves the admin API
//! next to the store's etcd API on the client port.

use shard_node::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    shard_node::process::init_logging(&config.log_level);
    if config.federated() {
        anyhow::bail!("placement keeps its own store: --placement-endpoints does not apply");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store_url = config.advertise_client_urls()[0].clone();
        let admin = placement::admin::routes(placement::admin::Admin { store_url });
        let running = shard_node::node::start_with(config, admin).await?;
        shard_node::process::shutdown_signal().await;
        running.shutdown().await;
        anyhow::Ok(())
    })
}
