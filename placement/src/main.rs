//! `placement`: the admin API over placement's store (`--store-endpoints`,
//! any etcd API; `tessera dev` runs a standalone shard-node group for it).

use clap::Parser;
use tessera_rpc::flags::{DialTlsArgs, ServeTlsArgs, Urls};

#[derive(Parser, Debug)]
#[command(name = "placement", version, about = "Tessera placement: the federation's control plane (admin API)")]
struct Config {
    /// URL to serve the admin API on (JSON over HTTP).
    #[arg(long, default_value = "http://127.0.0.1:12380")]
    listen_client_urls: Urls,
    /// Placement's store: etcd client URLs (comma-separated) of the group
    /// that holds the shard map (routers and nodes follow it there too).
    #[arg(long, default_value = "http://127.0.0.1:12379")]
    store_endpoints: Urls,
    /// Seconds between rebalancing rounds (0: only when asked, `tessera rebalance`).
    #[arg(long, default_value_t = 0)]
    rebalance_every: u64,
    /// How far above the mean a group may go before a round moves a unit (0.2: 20 %).
    #[arg(long, default_value_t = 0.2)]
    rebalance_margin: f64,
    /// Bytes the fullest group must hold before sizes are balanced.
    #[arg(long, default_value_t = 64 << 20)]
    rebalance_min_bytes: u64,
    /// Writes per second the busiest group must take before load is balanced.
    #[arg(long, default_value_t = 500.0)]
    rebalance_min_writes: f64,
    /// Serving the admin API over TLS (https:// listen URL).
    #[command(flatten)]
    tls: ServeTlsArgs,
    /// Dialing the store and the groups (https:// URLs).
    #[command(flatten)]
    dial: DialTlsArgs,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tessera_rpc::process::init_logging(&config.log_level);
    tessera_rpc::process::arm_failpoints(placement::failpoints::ALL, placement::failpoints::COMPILED_IN)?;
    if config.store_endpoints.is_empty() {
        anyhow::bail!("--store-endpoints must name at least one member of placement's store");
    }
    let addr = config.listen_client_urls.socket_addrs()?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no listen URL"))?;
    let tls = config.tls.serving(&config.listen_client_urls, "placement", addr.port())?;
    let dialer = config.dial.dialer()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = shardmap::store::Store::new(config.store_endpoints.to_vec(), dialer);
        let placement = placement::Placement::new(store);
        // Moves whose driver died (a placement before this one): finished
        // if committed, else rolled back, once the store and groups answer.
        let settling = placement.clone();
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(200);
            loop {
                match settling.resume_moves().await {
                    Ok(_) => break,
                    Err(e) => tracing::warn!(error = %e, "settling moves left by an earlier placement; trying again"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        });
        let t = placement::rebalance::Thresholds {
            margin: config.rebalance_margin,
            min_bytes: config.rebalance_min_bytes,
            min_writes_per_s: config.rebalance_min_writes,
            max_moves: 1,
        };
        t.validate()?;
        if config.rebalance_every > 0 {
            let every = std::time::Duration::from_secs(config.rebalance_every);
            let p = placement.clone();
            tokio::spawn(async move { p.rebalance_every(every, t).await });
        }
        let probe = placement.clone();
        // Healthy while the store answers.
        let health = tessera_rpc::endpoints::routes(
            move || {
                let p = probe.clone();
                async move { p.map().await.is_ok() }
            },
            || {},
        );
        let app = placement::http::routes(placement).merge(health);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, store = %config.store_endpoints, "placement serving");
        tessera_rpc::serve::serve(
            tessera_rpc::authority::ClientListener(listener),
            tls,
            app,
            tessera_rpc::process::shutdown_signal(),
        )
        .await;
        anyhow::Ok(())
    })
}
