//! Configuration of a shard-node, with etcd's flag names so etcd runbooks
//! carry over. Clap holds the defaults; a YAML `--config-file` (etcd's keys)
//! replaces the flags as in etcd.

use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tessera_rpc::flags::{socket_addr, FlagError, Interval, ServeTlsArgs, Urls};
use tessera_rpc::tls::{ClientFiles, Dialer, TlsFiles};

#[derive(Parser, Deserialize, Debug, Clone)]
#[command(
    name = "shard-node",
    version,
    about = "A Tessera shard node: one member of an etcd-compatible raft group",
    args_override_self = true
)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: <name>.tessera).
    #[arg(long, default_value = "")]
    pub data_dir: String,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: Urls,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: Urls,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: Urls,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: Urls,
    /// Initial cluster configuration for bootstrapping: name=peerURL,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// 'new' to bootstrap a cluster, 'existing' to join one.
    #[arg(long, default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token, part of the member and cluster ids.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries kept in the raft log before it is compacted.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Entries kept after a compaction so slow followers catch up without a snapshot.
    #[arg(long, default_value_t = 5000)]
    pub experimental_snapshot_catchup_entries: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1572864)]
    pub max_request_bytes: usize,
    /// Maximum concurrent streams each client connection may open (etcd's
    /// default: unlimited).
    #[arg(long, default_value_t = tessera_rpc::serve::MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise an alarm when the backend size exceeds this (0 = 2 GiB default).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Duration of periodic watch progress notifications (e.g. 10m, 5s).
    #[arg(long, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: Interval,
    /// Additional URLs to serve /metrics and /health on.
    #[arg(long, default_value = "")]
    pub listen_metrics_urls: Urls,
    /// Serve the federation's revision oracle from this group (placement's
    /// store does): one timeline of revisions for every group.
    #[arg(long, default_value_t = false)]
    pub revision_oracle: bool,
    /// Bytes of recent watch events kept in memory for fast fan-out; watchers
    /// further behind read history from disk.
    #[arg(long, default_value_t = 64 << 20)]
    pub watch_event_cache_bytes: usize,
    /// Bootstrap a new group from a backup file written by `etcdctl snapshot
    /// save` (only on an empty data dir, with --initial-cluster-state new).
    #[arg(long, default_value = "")]
    pub restore_from: String,
    /// Compare this member's data with its peers' before serving, and refuse
    /// to start if it diverges. A Go-style boolean, as etcd's: bare
    /// `--experimental-initial-corrupt-check` means true.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,
    /// Refuse membership changes that would leave too few started or
    /// connected voters for a quorum (etcd's; a Go-style boolean).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,
    /// How often the leader compares every member's data (0s = never).
    #[arg(long, default_value = "1m")]
    pub experimental_corrupt_check_time: Interval,
    /// Path to a YAML configuration file (etcd's keys); flags are then ignored.
    #[arg(long)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Placement's client URLs (comma-separated). Set, this node joins a
    /// federation: it registers with placement and hosts the replicas the
    /// shard map assigns to it (--initial-cluster and friends are unused).
    #[arg(long, default_value = "")]
    pub placement_endpoints: Urls,
    /// Auth: etcd's --auth-token, --auth-token-ttl, --bcrypt-cost.
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: tessera_rpc::flags::AuthArgs,
    /// Client TLS: etcd's --cert-file, --key-file, --trusted-ca-file,
    /// --client-cert-auth, --auto-tls, --client-crl-file, --cipher-suites.
    #[command(flatten)]
    #[serde(flatten)]
    pub client_tls: ServeTlsArgs,
    /// Peer TLS: etcd's --peer-* flags.
    #[command(flatten)]
    #[serde(flatten)]
    pub peer_tls: PeerTlsArgs,
    /// etcd's config-file form of the client TLS flags.
    #[arg(skip)]
    pub client_transport_security: Option<TransportSecurity>,
    /// etcd's config-file form of the peer TLS flags.
    #[arg(skip)]
    pub peer_transport_security: Option<TransportSecurity>,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// etcd's peer TLS flags.
#[derive(clap::Args, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case")]
pub struct PeerTlsArgs {
    /// Path to the peer server TLS cert file.
    #[arg(long, default_value = "")]
    pub peer_cert_file: String,
    /// Path to the peer server TLS key file.
    #[arg(long, default_value = "")]
    pub peer_key_file: String,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, default_value = "")]
    pub peer_trusted_ca_file: String,
    /// Enable peer client cert authentication.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Peer TLS using self-generated certificates.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Path to the peer certificate revocation list file.
    #[arg(long, default_value = "")]
    pub peer_crl_file: String,
    /// Allowed CN for inter peer authentication.
    #[arg(long, default_value = "")]
    pub peer_cert_allowed_cn: String,
    /// Allowed TLS hostname for inter peer authentication.
    #[arg(long, default_value = "")]
    pub peer_cert_allowed_hostname: String,
}

/// `client-transport-security:` / `peer-transport-security:` in etcd's YAML.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case")]
pub struct TransportSecurity {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    pub crl_file: String,
    pub allowed_cn: String,
    pub allowed_hostname: String,
}

fn path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["shard-node"])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl From<FlagError> for ConfigError {
    fn from(e: FlagError) -> Self {
        ConfigError(e.0)
    }
}

/// One member of --initial-cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Config {
    /// Flags, or the config file they name.
    pub fn load() -> Result<Self, ConfigError> {
        let flags = Config::parse();
        match &flags.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
                let mut c: Config = serde_yaml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
                if let Some(t) = c.client_transport_security.take() {
                    c.client_tls = ServeTlsArgs {
                        cert_file: t.cert_file,
                        key_file: t.key_file,
                        trusted_ca_file: t.trusted_ca_file,
                        client_cert_auth: t.client_cert_auth,
                        auto_tls: t.auto_tls,
                        client_crl_file: t.crl_file,
                        cipher_suites: c.client_tls.cipher_suites.clone(),
                    };
                }
                if let Some(t) = c.peer_transport_security.take() {
                    c.peer_tls = PeerTlsArgs {
                        peer_cert_file: t.cert_file,
                        peer_key_file: t.key_file,
                        peer_trusted_ca_file: t.trusted_ca_file,
                        peer_client_cert_auth: t.client_cert_auth,
                        peer_auto_tls: t.auto_tls,
                        peer_crl_file: t.crl_file,
                        peer_cert_allowed_cn: t.allowed_cn,
                        peer_cert_allowed_hostname: t.allowed_hostname,
                    };
                }
                Ok(c)
            }
            None => Ok(flags),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        if self.data_dir.is_empty() {
            PathBuf::from(format!("{}.tessera", self.name))
        } else {
            PathBuf::from(&self.data_dir)
        }
    }

    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let mut members: Vec<InitialMember> = vec![];
        for part in self.initial_cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) =
                part.split_once('=').ok_or_else(|| ConfigError(format!("--initial-cluster entry {part:?} is not name=url")))?;
            socket_addr(url)?;
            match members.iter_mut().find(|m| m.name == name) {
                Some(m) => m.peer_urls.push(url.to_string()),
                None => members.push(InitialMember { name: name.to_string(), peer_urls: vec![url.to_string()] }),
            }
        }
        Ok(members)
    }

    pub fn advertise_peer_urls(&self) -> Vec<String> {
        self.initial_advertise_peer_urls.to_vec()
    }

    /// etcd's default quota is 2 GiB; 0 means the default.
    pub fn quota_bytes(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            2 << 30
        } else {
            self.quota_backend_bytes
        }
    }

    /// The client port's TLS files (served on its https:// URLs).
    pub fn client_tls_files(&self) -> TlsFiles {
        self.client_tls.files()
    }

    /// The peer port's TLS files.
    pub fn peer_tls_files(&self) -> TlsFiles {
        let p = &self.peer_tls;
        TlsFiles {
            cert_file: path(&p.peer_cert_file),
            key_file: path(&p.peer_key_file),
            trusted_ca_file: path(&p.peer_trusted_ca_file),
            client_cert_auth: p.peer_client_cert_auth,
            crl_file: path(&p.peer_crl_file),
            auto_tls: p.peer_auto_tls,
            allowed_cn: (!p.peer_cert_allowed_cn.is_empty()).then(|| p.peer_cert_allowed_cn.clone()),
            allowed_hostname: (!p.peer_cert_allowed_hostname.is_empty()).then(|| p.peer_cert_allowed_hostname.clone()),
        }
    }

    /// How this node dials others (peers, placement's store, peers' client
    /// ports for corruption checks): with its peer certificate, verifying
    /// with the peer CA (auto-TLS peers are not verified, as in etcd).
    pub fn dialer(&self) -> Result<Dialer, ConfigError> {
        let p = self.peer_tls_files();
        if !p.configured() && p.trusted_ca_file.is_none() {
            return Ok(Dialer::plain());
        }
        let files = ClientFiles {
            ca_file: p.trusted_ca_file.clone(),
            cert_file: p.cert_file.clone(),
            key_file: p.key_file.clone(),
            insecure_skip_verify: p.auto_tls && p.cert_file.is_none(),
        };
        Dialer::new(&files, &self.client_tls.cipher_suites()).map_err(|e| ConfigError(e.to_string()))
    }

    /// The JWT signer/verifier `--auth-token jwt,...` asks for (None: simple tokens).
    pub fn jwt(&self) -> Result<Option<std::sync::Arc<crate::auth::jwt::Jwt>>, ConfigError> {
        self.auth.jwt().map_err(ConfigError)
    }

    /// Where --auto-tls and --peer-auto-tls keep their certificates (etcd's place).
    pub fn auto_tls_dir(&self, side: &str) -> PathBuf {
        self.data_dir().join("fixtures").join(side)
    }

    pub fn federated(&self) -> bool {
        !self.placement_endpoints.is_empty()
    }

    pub fn progress_notify_interval(&self) -> Duration {
        self.experimental_watch_progress_notify_interval.get()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError("--name must not be empty".into()));
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if !matches!(self.initial_cluster_state.as_str(), "new" | "existing") {
            return Err(ConfigError(format!(
                "--initial-cluster-state must be 'new' or 'existing', got {:?}",
                self.initial_cluster_state
            )));
        }
        if self.revision_oracle && self.federated() {
            return Err(ConfigError("--revision-oracle is served by a standalone group (placement's store)".into()));
        }
        if self.max_request_bytes == 0 || self.max_txn_ops == 0 {
            return Err(ConfigError("--max-request-bytes and --max-txn-ops must be positive".into()));
        }
        if self.listen_client_urls.is_empty() || self.listen_peer_urls.is_empty() {
            return Err(ConfigError("--listen-client-urls and --listen-peer-urls must name at least one URL".into()));
        }
        self.listen_client_urls.socket_addrs()?;
        self.listen_peer_urls.socket_addrs()?;
        for (side, urls, files, flags) in [
            ("client", &self.listen_client_urls, self.client_tls_files(), "--cert-file, --key-file"),
            ("peer", &self.listen_peer_urls, self.peer_tls_files(), "--peer-cert-file, --peer-key-file"),
        ] {
            if let Some(u) = urls.iter().find(|u| tessera_rpc::flags::is_https(u)) {
                if !files.configured() {
                    return Err(ConfigError(format!(
                        "TLS key/cert ({flags}) must be provided for {side} url {u} with HTTPS scheme"
                    )));
                }
            }
            files.validate(side).map_err(|e| ConfigError(e.to_string()))?;
        }
        tessera_rpc::tls::crypto(&self.client_tls.cipher_suites()).map_err(|e| ConfigError(e.to_string()))?;
        // The key files are read once, when the node starts (`jwt`).
        self.auth.validate().map_err(ConfigError)?;
        if self.federated() {
            return Ok(());
        }
        let members = self.initial_members()?;
        let me = members
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| ConfigError(format!("--initial-cluster has no entry for this member's --name {:?}", self.name)))?;
        let mut mine = me.peer_urls.clone();
        let mut adv = self.advertise_peer_urls();
        mine.sort();
        adv.sort();
        if mine != adv {
            return Err(ConfigError(format!(
                "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                self.name,
                mine.join(","),
                adv.join(",")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Config {
        Config::parse_from([
            "shard-node",
            "--name",
            "n1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:12380",
            "--initial-cluster",
            "n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380",
        ])
    }

    #[test]
    fn etcd_flags_parse_and_validate() {
        let c = three();
        c.validate().unwrap();
        assert_eq!(c.initial_members().unwrap().len(), 3);
        assert_eq!(c.data_dir(), PathBuf::from("n1.tessera"));
    }

    #[test]
    fn rejects_what_etcd_rejects() {
        let mut c = three();
        c.name = "n9".into();
        assert!(c.validate().unwrap_err().0.contains("no entry"));
        let mut c = three();
        c.election_timeout = 200;
        assert!(c.validate().is_err());
        let mut c = three();
        c.initial_cluster_state = "old".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn typed_flags_parse_once() {
        let c = Config::parse_from(["shard-node", "--experimental-watch-progress-notify-interval", "250ms"]);
        assert_eq!(c.progress_notify_interval(), Duration::from_millis(250));
        assert!(Config::try_parse_from(["shard-node", "--experimental-watch-progress-notify-interval", "ten"]).is_err());
        assert!(Config::try_parse_from(["shard-node", "--listen-client-urls", "127.0.0.1:2379"]).is_err());
        let yaml: Config =
            serde_yaml::from_str("name: y\nlisten-client-urls: http://127.0.0.1:3379\nexperimental-corrupt-check-time: 5s")
                .unwrap();
        assert_eq!(yaml.listen_client_urls.first(), Some("http://127.0.0.1:3379"));
        assert_eq!(yaml.experimental_corrupt_check_time.get(), Duration::from_secs(5));
    }

    /// etcd's booleans are Go's: a bare flag means true, `=false` turns it off
    /// (etcd's own e2e harness passes `--experimental-initial-corrupt-check` bare).
    #[test]
    fn boolean_flags_are_gos() {
        let bare = Config::parse_from(["shard-node", "--experimental-initial-corrupt-check", "--name", "x"]);
        assert!(bare.experimental_initial_corrupt_check);
        assert_eq!(bare.name, "x");
        let off = Config::parse_from(["shard-node", "--experimental-initial-corrupt-check=false"]);
        assert!(!off.experimental_initial_corrupt_check);
        assert!(bare.strict_reconfig_check, "on unless turned off");
        assert!(!Config::parse_from(["shard-node", "--strict-reconfig-check=false"]).strict_reconfig_check);
        // As Go's flag package: a flag given twice takes its last value
        // (etcd's e2e harness passes --client-cert-auth twice with a CRL).
        let twice = Config::parse_from(["shard-node", "--client-cert-auth", "--client-cert-auth", "--name", "a", "--name", "b"]);
        assert!(twice.client_tls.client_cert_auth);
        assert_eq!(twice.name, "b");
        let auth = Config::parse_from(["shard-node", "--bcrypt-cost=4", "--auth-token-ttl", "9"]);
        assert_eq!((auth.auth.bcrypt_cost, auth.auth.auth_token_ttl, auth.auth.auth_token.as_str()), (4, 9, "simple"));
    }
}
