use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = router::Config::parse();
    shard_node::process::init_logging(&config.log_level);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let running = router::start(config).await?;
        shard_node::process::shutdown_signal().await;
        running.shutdown().await;
        anyhow::Ok(())
    })
}
