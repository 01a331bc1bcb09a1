use shard_node::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    tessera_rpc::process::init_logging(&config.log_level);
    shard_node::failpoints::setup()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(shard_node::run(config, tessera_rpc::process::shutdown_signal()))
}
