use shard_node::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    tessera_rpc::process::init_logging(&config.log_level);
    tessera_rpc::process::arm_failpoints(shard_node::failpoints::ALL, shard_node::failpoints::COMPILED_IN)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(shard_node::run(config, tessera_rpc::process::shutdown_signal()))
}
