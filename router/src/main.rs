use clap::Parser;

/// A proxy allocates and frees per request; mimalloc is cheaper at that than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = router::Config::parse();
    tessera_rpc::process::init_logging(&config.log_level);
    tessera_rpc::process::arm_failpoints(router::failpoints::ALL, router::failpoints::COMPILED_IN)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let running = router::start(config).await?;
        tessera_rpc::process::shutdown_signal().await;
        running.shutdown().await;
        anyhow::Ok(())
    })
}
