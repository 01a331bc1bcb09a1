use shard_node::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    shard_node::process::init_logging(&config.log_level);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(shard_node::run(config, shard_node::process::shutdown_signal()))
}
