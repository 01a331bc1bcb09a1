//! The router's configuration (etcd's flag names where they mean the same).

use clap::Parser;
use tessera_rpc::flags::{AuthArgs, DialTlsArgs, Interval, ServeTlsArgs, Urls};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "router",
    version,
    about = "Tessera router: one etcd v3 endpoint over a federation of raft groups",
    args_override_self = true
)]
pub struct Config {
    /// Name, shown as the member name in MemberList.
    #[arg(long, default_value = "router")]
    pub name: String,
    /// URL to listen on for etcd clients (gRPC, /health, /version, /metrics).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: Urls,
    /// Client URL advertised in MemberList (default: the listen URL).
    #[arg(long, default_value = "")]
    pub advertise_client_urls: Urls,
    /// Placement's client URLs (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:12379")]
    pub placement_endpoints: Urls,
    /// Duration of periodic watch progress notifications (e.g. 10m, 5s).
    #[arg(long, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: Interval,
    /// Auth: etcd's --auth-token, --auth-token-ttl, --bcrypt-cost (every
    /// router of a federation verifies the others' JWTs with the same public key).
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Serving clients over TLS (https:// listen URL).
    #[command(flatten)]
    pub tls: ServeTlsArgs,
    /// Dialing the nodes and placement's store (https:// URLs), as etcd's gRPC proxy.
    #[command(flatten)]
    pub dial: DialTlsArgs,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["router"])
    }
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.placement_endpoints.is_empty() {
            anyhow::bail!("--placement-endpoints must name at least one placement member");
        }
        if self.listen_client_urls.iter().count() != 1 {
            anyhow::bail!("--listen-client-urls must name exactly one URL");
        }
        self.listen_client_urls.socket_addrs()?;
        self.tls.files().validate("client")?;
        // The key files are read once, when the router starts (`auth_settings`).
        self.auth.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// How callers authenticate (the JWT keys read from their files).
    pub(crate) fn auth_settings(&self) -> anyhow::Result<crate::auth::Settings> {
        Ok(crate::auth::Settings {
            jwt: self.auth.jwt().map_err(anyhow::Error::msg)?,
            token_ttl: self.auth.token_ttl(),
            bcrypt_cost: self.auth.bcrypt_cost,
        })
    }
}
