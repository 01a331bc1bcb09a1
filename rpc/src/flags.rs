//! Typed values of etcd-style flags, parsed once (by clap from the command
//! line, by serde from an etcd YAML config file) so no code downstream
//! handles their text: comma-separated URL lists and Go-style durations.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(pub String);

/// A comma-separated list of `http://host:port` URLs (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Urls(Vec<String>);

impl Urls {
    pub fn new(urls: Vec<String>) -> Result<Self, FlagError> {
        for u in &urls {
            host_port(u)?;
        }
        Ok(Urls(urls))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.clone()
    }

    /// Whether any of them is `https://` (TLS).
    pub fn any_https(&self) -> bool {
        self.iter().any(is_https)
    }

    /// The addresses to bind or dial, one per URL.
    pub fn socket_addrs(&self) -> Result<Vec<SocketAddr>, FlagError> {
        self.iter().map(socket_addr).collect()
    }
}

impl FromStr for Urls {
    type Err = FlagError;
    fn from_str(s: &str) -> Result<Self, FlagError> {
        Urls::new(s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect())
    }
}

impl fmt::Display for Urls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn host_port(url: &str) -> Result<&str, FlagError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| FlagError(format!("URL {url:?} must start with http:// or https://")))?;
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(hostport),
        _ => Err(FlagError(format!("URL {url:?} must name a host and a port"))),
    }
}

/// Whether `url` is served or dialed with TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// A comma-separated list of names (etcd's `--cipher-suites`).
pub fn name_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
}

/// `http://host:port` → a socket address to bind or dial (IPv4 first).
pub fn socket_addr(url: &str) -> Result<SocketAddr, FlagError> {
    let hostport = host_port(url)?;
    let addrs: Vec<SocketAddr> =
        hostport.to_socket_addrs().map_err(|e| FlagError(format!("cannot resolve {url:?}: {e}")))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| FlagError(format!("cannot resolve {url:?}")))
}

/// A path flag as etcd takes it: empty means unset.
fn path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// etcd's TLS flags for serving clients (shard-nodes, routers and placement
/// take the same ones). Go-style booleans: `--client-cert-auth` or
/// `--client-cert-auth=true`.
#[derive(clap::Args, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServeTlsArgs {
    /// Path to the client server TLS cert file (serve https:// URLs with it).
    #[arg(long, default_value = "")]
    pub cert_file: String,
    /// Path to the client server TLS key file.
    #[arg(long, default_value = "")]
    pub key_file: String,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, default_value = "")]
    pub trusted_ca_file: String,
    /// Enable client cert authentication (callers show a certificate the trusted CA signed).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Client TLS using generated certificates.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Path to the client certificate revocation list file.
    #[arg(long, default_value = "")]
    pub client_crl_file: String,
    /// Comma-separated list of supported TLS 1.2 cipher suites (Go's names; default: all rustls offers).
    #[arg(long, default_value = "")]
    pub cipher_suites: String,
}

impl ServeTlsArgs {
    pub fn files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert_file: path(&self.cert_file),
            key_file: path(&self.key_file),
            trusted_ca_file: path(&self.trusted_ca_file),
            client_cert_auth: self.client_cert_auth,
            crl_file: path(&self.client_crl_file),
            auto_tls: self.auto_tls,
            allowed_cn: None,
            allowed_hostname: None,
        }
    }

    pub fn cipher_suites(&self) -> Vec<String> {
        name_list(&self.cipher_suites)
    }

    /// The TLS of a port serving `listen` (None for an http:// URL), for a
    /// process without a data dir (router, placement): `--auto-tls` keeps its
    /// certificate under the temp dir, named by `who` and the port.
    pub fn serving(
        &self,
        listen: &Urls,
        who: &str,
        port: u16,
    ) -> Result<Option<std::sync::Arc<crate::tls::ServerTls>>, FlagError> {
        let files = self.files();
        if listen.any_https() != files.configured() {
            return Err(FlagError(
                "an https:// --listen-client-urls needs --cert-file/--key-file or --auto-tls, and they need an https:// URL"
                    .into(),
            ));
        }
        let auto_dir = std::env::temp_dir().join(format!("tessera-{who}-{port}-auto-tls"));
        crate::tls::ServerTls::new(&files, &self.cipher_suites(), &auto_dir, &crate::tls::url_hosts(listen.iter()))
            .map_err(|e| FlagError(e.to_string()))
    }
}

/// How a process dialing others proves itself and checks them: etcdctl's
/// (and etcd's gRPC proxy's) `--cacert --cert --key`.
#[derive(clap::Args, Deserialize, serde::Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case")]
pub struct DialTlsArgs {
    /// Verify https:// servers with this CA bundle.
    #[arg(long, global = true, default_value = "")]
    pub cacert: String,
    /// Identify to https:// servers with this TLS certificate file.
    #[arg(long, global = true, default_value = "")]
    pub cert: String,
    /// The key file of --cert.
    #[arg(long, global = true, default_value = "")]
    pub key: String,
    /// Accept any server certificate (testing only).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure_skip_tls_verify: bool,
}

impl DialTlsArgs {
    pub fn files(&self) -> crate::tls::ClientFiles {
        crate::tls::ClientFiles {
            ca_file: path(&self.cacert),
            cert_file: path(&self.cert),
            key_file: path(&self.key),
            insecure_skip_verify: self.insecure_skip_tls_verify,
        }
    }

    /// The dialer these flags describe (plain when none is given).
    pub fn dialer(&self) -> Result<crate::tls::Dialer, crate::tls::TlsError> {
        let files = self.files();
        if files == Default::default() {
            return Ok(crate::tls::Dialer::plain());
        }
        crate::tls::Dialer::new(&files, &[])
    }
}

/// A Go-style duration as etcd's flags take it: "250ms", "5s", "10m", "1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interval(pub Duration);

impl Interval {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Interval {
    type Err = FlagError;
    fn from_str(s: &str) -> Result<Self, FlagError> {
        let bad = || FlagError(format!("invalid duration {s:?} (use e.g. 250ms, 5s, 10m, 1h)"));
        let t = s.trim();
        let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: u64 = num.parse().map_err(|_| bad())?;
        Ok(Interval(match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        }))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_parse_and_refuse_what_cannot_be_served() {
        let u: Urls = " http://127.0.0.1:2379, http://localhost:22379/ ".parse().unwrap();
        assert_eq!(u.to_vec(), vec!["http://127.0.0.1:2379", "http://localhost:22379/"]);
        assert_eq!(u.to_string(), "http://127.0.0.1:2379,http://localhost:22379/");
        assert!(u.socket_addrs().unwrap().iter().all(|a| a.ip().is_loopback()));
        assert!("".parse::<Urls>().unwrap().is_empty());
        assert!("https://127.0.0.1:2379".parse::<Urls>().unwrap().any_https());
        assert!(!u.any_https());
        assert!("ftp://127.0.0.1:2379".parse::<Urls>().is_err());
        assert!("http://127.0.0.1".parse::<Urls>().is_err());
        assert!("127.0.0.1:2379".parse::<Urls>().is_err());
    }

    #[test]
    fn durations_as_etcd_writes_them() {
        for (text, d) in
            [("250ms", Duration::from_millis(250)), ("5s", Duration::from_secs(5)), ("10m", Duration::from_secs(600))]
        {
            let i: Interval = text.parse().unwrap();
            assert_eq!(i.get(), d);
            assert_eq!(i.to_string(), text);
        }
        assert_eq!("0s".parse::<Interval>().unwrap().get(), Duration::ZERO);
        assert!("5".parse::<Interval>().is_err());
        assert!("5d".parse::<Interval>().is_err());
        assert!("ms".parse::<Interval>().is_err());
    }
}

/// etcd's auth flags (shard-nodes and routers take the same ones).
#[derive(clap::Args, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case")]
pub struct AuthArgs {
    /// Auth token type: 'simple', or 'jwt,pub-key=PATH,priv-key=PATH,sign-method=ES256|RS256|...,ttl=5m'.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Time (seconds) of a simple auth token's life, renewed by each use.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost for hashing auth passwords (4..=31).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,
}

impl Default for AuthArgs {
    fn default() -> Self {
        AuthArgs { auth_token: "simple".into(), auth_token_ttl: 300, bcrypt_cost: 10 }
    }
}

impl AuthArgs {
    /// Checks the values (the key files are read once, by `jwt`).
    pub fn validate(&self) -> Result<(), String> {
        self.auth_token.parse::<crate::auth::jwt::TokenKind>()?;
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(format!("--bcrypt-cost {} is out of range (4..=31)", self.bcrypt_cost));
        }
        if self.auth_token_ttl == 0 {
            return Err("--auth-token-ttl must be at least 1 second".into());
        }
        Ok(())
    }

    /// The JWT signer/verifier `--auth-token jwt,...` asks for (None: simple tokens).
    pub fn jwt(&self) -> Result<Option<std::sync::Arc<crate::auth::jwt::Jwt>>, String> {
        use crate::auth::jwt::{Jwt, TokenKind};
        match self.auth_token.parse::<TokenKind>()? {
            TokenKind::Simple => Ok(None),
            TokenKind::Jwt { pub_key, priv_key, sign_method, ttl } => {
                Ok(Some(std::sync::Arc::new(Jwt::load(&pub_key, priv_key.as_deref(), &sign_method, ttl)?)))
            }
        }
    }

    pub fn token_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.auth_token_ttl.max(1))
    }
}
