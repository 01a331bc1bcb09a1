//! TLS as etcd does it, for every port Tessera serves and every connection
//! it makes: `https://` URLs, `--cert-file/--key-file` (served), a trusted
//! CA with `--client-cert-auth` (callers must show a certificate it signed),
//! `--client-crl-file`, `--auto-tls` (a self-signed certificate generated in
//! the data dir; peers then skip verification, as etcd's do), and
//! `--cipher-suites` (Go's names for TLS 1.2 suites; TLS 1.3 stays on).
//!
//! rustls with our own acceptor and connector rather than tonic's TLS: the
//! served certificate is reloaded when its files change (etcd reloads on
//! every handshake; a certificate rotation must not need a restart), an
//! auto-TLS peer is dialed without verification, and the caller's
//! certificate (its common name, etcd's identity for auth) reaches the
//! request handlers as a `ClientIdentity` extension.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("unexpected TLS cipher suite {0:?}")]
    CipherSuite(String),
    #[error("{0}")]
    Config(String),
}

/// One side's TLS flags (etcd's client `--cert-file ...` or the peer
/// `--peer-cert-file ...` set), as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// Generate a self-signed certificate (in `auto_dir`) when none is given.
    pub auto_tls: bool,
    /// Accept only client certificates with this subject common name
    /// (etcd's `--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    /// Accept only client certificates valid for this host name (etcd's
    /// `--peer-cert-allowed-hostname`: the certificate's DNS or IP names).
    pub allowed_hostname: Option<String>,
}

impl TlsFiles {
    /// Whether these flags ask for TLS at all.
    pub fn configured(&self) -> bool {
        self.cert_file.is_some() || self.auto_tls
    }

    /// Checks the combinations etcd refuses, before anything starts.
    pub fn validate(&self, side: &str) -> Result<(), TlsError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(TlsError::Config(format!("{side}: a certificate file needs its key file and the other way round")));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() && !self.auto_tls {
            return Err(TlsError::Config(format!("{side}: client certificate authentication needs a trusted CA file")));
        }
        // etcd would take these and check nothing on its server side
        // without client certificate authentication: refused instead.
        if (self.allowed_cn.is_some() || self.allowed_hostname.is_some()) && !self.client_cert_auth {
            return Err(TlsError::Config(format!(
                "{side}: an allowed common name or host name needs client certificate authentication"
            )));
        }
        if self.allowed_cn.is_some() && self.allowed_hostname.is_some() {
            // etcd 3.4's "AllowedCN and AllowedHostname are mutually exclusive".
            return Err(TlsError::Config(format!("{side}: the allowed common name and host name are mutually exclusive")));
        }
        Ok(())
    }
}

/// What a caller showed in the TLS handshake, on every request of its
/// connection (a request extension); absent on a plain connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The verified client certificate's subject common name (etcd's user
    /// name for a certificate-authenticated caller).
    pub common_name: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Parse { path: path.to_path_buf(), msg: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Parse { path: path.to_path_buf(), msg: e.to_string() })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| TlsError::Parse { path: path.to_path_buf(), msg: e.to_string() })?;
    }
    Ok(roots)
}

/// Go's names of the TLS 1.2 suites rustls offers.
fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use provider::cipher_suite::*;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// The crypto provider with `--cipher-suites` applied (empty: all of them).
pub fn crypto(cipher_suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut p = provider::default_provider();
    if !cipher_suites.is_empty() {
        let mut chosen: Vec<_> = p.cipher_suites.iter().copied().filter(|s| s.tls13().is_some()).collect();
        for name in cipher_suites {
            chosen.push(cipher_suite(name).ok_or_else(|| TlsError::CipherSuite(name.clone()))?);
        }
        p.cipher_suites = chosen;
    }
    Ok(Arc::new(p))
}

/// Writes a self-signed certificate for `hosts` into `dir` (etcd's
/// `--auto-tls`: `cert.pem`, `key.pem`), unless one is there already, and
/// returns the files.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let io = |source| TlsError::Read { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let gen = |e: rcgen::Error| TlsError::Config(format!("generating a self-signed certificate: {e}"));
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names).map_err(gen)?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes()).map_err(io)?;
    std::fs::write(&cert_path, cert.pem()).map_err(io)?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    io::Write::write_all(&mut f, data)
}

/// The host names and addresses of `urls`, for a generated certificate.
pub fn url_hosts<'a>(urls: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut hosts = vec![];
    for u in urls {
        let rest = u.split_once("://").map_or(u, |(_, r)| r).trim_end_matches('/');
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() || host == "0.0.0.0" || host == "::" { "localhost" } else { host };
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
        }
    }
    hosts
}

// ---------------------------------------------------------------- serving

/// A port's TLS: builds rustls' configuration from the files and rebuilds
/// it when they change (checked at most once a second, on accept).
pub struct ServerTls {
    source: Source,
    current: parking_lot::Mutex<Loaded>,
}

/// What a port's rustls configuration is built from.
struct Source {
    files: TlsFiles,
    cert: PathBuf,
    key: PathBuf,
    crypto: Arc<CryptoProvider>,
}

struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    stamps: Vec<Option<SystemTime>>,
    checked: std::time::Instant,
}

impl ServerTls {
    /// `None` when `files` ask for no TLS. `auto_dir` is where `--auto-tls`
    /// keeps its certificate, made for `hosts`.
    pub fn new(
        files: &TlsFiles,
        cipher_suites: &[String],
        auto_dir: &Path,
        hosts: &[String],
    ) -> Result<Option<Arc<Self>>, TlsError> {
        if !files.configured() {
            return Ok(None);
        }
        files.validate("TLS")?;
        let (cert, key) = match (&files.cert_file, &files.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => self_signed(auto_dir, hosts)?,
        };
        let source = Source { files: files.clone(), cert, key, crypto: crypto(cipher_suites)? };
        let loaded = Loaded { stamps: source.stamps(), acceptor: source.build()?, checked: std::time::Instant::now() };
        Ok(Some(Arc::new(ServerTls { source, current: parking_lot::Mutex::new(loaded) })))
    }

    /// The acceptor for the files as they are now.
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut cur = self.current.lock();
        if cur.checked.elapsed() >= Duration::from_secs(1) {
            cur.checked = std::time::Instant::now();
            let stamps = self.source.stamps();
            if stamps != cur.stamps {
                match self.source.build() {
                    Ok(a) => {
                        tracing::info!(cert = %self.source.cert.display(), "TLS certificate files changed: reloaded");
                        cur.acceptor = a;
                        cur.stamps = stamps;
                    }
                    // Half-written files during a rotation: keep serving the old ones.
                    Err(e) => tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones"),
                }
            }
        }
        cur.acceptor.clone()
    }

    /// The TLS handshake on an accepted connection, and who the caller is.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<(tokio_rustls::server::TlsStream<IO>, ClientIdentity)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor().accept(io).await?;
        let common_name = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c));
        Ok((stream, ClientIdentity { common_name }))
    }
}

impl Source {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.files.trusted_ca_file.as_ref(), self.files.crl_file.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }

    fn build(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(self.crypto.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.files.trusted_ca_file, self.files.client_cert_auth) {
            (Some(ca), true) => {
                let mut v =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), self.crypto.clone());
                if let Some(crl) = &self.files.crl_file {
                    v = v.with_crls(crls(crl)?);
                }
                let inner = v.build().map_err(|e| TlsError::Config(e.to_string()))?;
                let allowed = Allowed { cn: self.files.allowed_cn.clone(), hostname: self.files.allowed_hostname.clone() };
                builder.with_client_cert_verifier(Arc::new(TrustedSelfSigned { inner, roots: certs(ca)?, allowed }))
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| TlsError::Parse { path: self.key.clone(), msg: e.to_string() })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// The revocation lists in `path`: PEM blocks, or one DER list (etcd's
/// x509.ParseCRL takes either; its own test fixture is DER).
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path)?;
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Parse { path: path.to_path_buf(), msg: e.to_string() })
}

/// The DNS names and IP addresses a certificate is valid for.
fn alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return vec![] };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return vec![] };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A failed TLS handshake as etcd (Go's crypto/tls) words it where the
/// other side refused it — "remote error: tls: bad certificate" — so log
/// alerts written for etcd keep working; any other error as its chain reads.
pub fn handshake_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![];
    let mut cur = Some(e);
    while let Some(err) = cur {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            // io::Error's source() skips the error it wraps.
            err.downcast_ref::<io::Error>().and_then(io::Error::get_ref).and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return format!("remote error: tls: {}", go_alert_text(*alert));
        }
        chain.push(err.to_string());
        cur = err.source();
    }
    chain.dedup();
    chain.join(": ")
}

/// Go's text for a TLS alert (crypto/tls alert.go).
fn go_alert_text(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::CloseNotify => "close notify",
        A::UnexpectedMessage => "unexpected message",
        A::BadRecordMac => "bad record MAC",
        A::HandshakeFailure => "handshake failure",
        A::BadCertificate => "bad certificate",
        A::UnsupportedCertificate => "unsupported certificate",
        A::CertificateRevoked => "revoked certificate",
        A::CertificateExpired => "expired certificate",
        A::CertificateUnknown => "unknown certificate",
        A::IllegalParameter => "illegal parameter",
        A::UnknownCA => "unknown certificate authority",
        A::AccessDenied => "access denied",
        A::DecodeError => "error decoding message",
        A::DecryptError => "error decrypting message",
        A::ProtocolVersion => "protocol version not supported",
        A::InsufficientSecurity => "insufficient security level",
        A::InternalError => "internal error",
        A::CertificateRequired => "certificate required",
        A::NoApplicationProtocol => "no application protocol",
        other => return format!("{other:?}"),
    }
    .to_string()
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

// ---------------------------------------------------------------- dialing

/// The TLS a process uses when it connects (etcd's `--cacert --cert --key`,
/// or a node's peer files): for `https://` URLs only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (`--insecure-skip-tls-verify`; auto-TLS peers).
    pub insecure_skip_verify: bool,
}

/// How this process connects to the others: plain for `http://` URLs, TLS
/// with its client configuration for `https://`. Cheap to clone.
#[derive(Clone, Default)]
pub struct Dialer {
    /// For gRPC (ALPN h2).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// For the HTTP/1.1 exchanges (health, placement's admin API).
    http1: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.tls.is_some() { "Dialer(tls)" } else { "Dialer(plain)" })
    }
}

impl Dialer {
    /// A dialer for `http://` URLs only (an `https://` one fails to verify).
    pub fn plain() -> Self {
        Dialer::default()
    }

    pub fn new(files: &ClientFiles, cipher_suites: &[String]) -> Result<Self, TlsError> {
        if files.cert_file.is_some() != files.key_file.is_some() {
            return Err(TlsError::Config("a client certificate needs its key and the other way round".into()));
        }
        let crypto = crypto(cipher_suites)?;
        let builder = rustls::ClientConfig::builder_with_provider(crypto.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if files.insecure_skip_verify {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(SkipVerify(crypto)))
        } else {
            match &files.ca_file {
                Some(ca) => builder.with_root_certificates(roots(ca)?),
                None => builder.with_root_certificates(rustls::RootCertStore::empty()),
            }
        };
        let mut config = match (&files.cert_file, &files.key_file) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(certs(c)?, key(k)?)
                .map_err(|e| TlsError::Parse { path: k.clone(), msg: e.to_string() })?,
            _ => builder.with_no_client_auth(),
        };
        let mut http1 = config.clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Dialer { tls: Some(Arc::new(config)), http1: Some(Arc::new(http1)) })
    }

    /// Whether `https://` URLs can be dialed.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A channel to `endpoint` that connects on first use.
    pub fn lazy(&self, endpoint: tonic::transport::Endpoint) -> tonic::transport::Channel {
        endpoint.connect_with_connector_lazy(Connector { tls: self.tls.clone() })
    }

    /// A channel to `endpoint`, connected now.
    pub async fn connect(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(Connector { tls: self.tls.clone() }).await
    }

    /// A connection for one HTTP/1.1 exchange with the server at `url`
    /// (`http[s]://host:port[/]` or `host:port`), and the `Host` to send.
    pub async fn http1(&self, url: &str) -> io::Result<(Box<dyn Io>, String)> {
        let (https, host, port) = split_url(url)?;
        let io = stream(self.http1.clone(), &host, port, https).await?;
        Ok((io, format!("{host}:{port}")))
    }
}

/// `http[s]://host:port[/...]` or `host:port` → (https, host, port).
fn split_url(url: &str) -> io::Result<(bool, String, u16)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad URL {url:?}"));
    let https = url.starts_with("https://");
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or_default();
    let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((https, host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

/// A TCP connection to `host:port`, with TLS when `tls` (server name: the host).
async fn stream(config: Option<Arc<rustls::ClientConfig>>, host: &str, port: u16, tls: bool) -> io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let config = config.unwrap_or_else(|| Arc::new(no_roots()));
    let name = ServerName::try_from(host.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(go_worded)?;
    Ok(Box::new(GoWorded(tls)))
}

/// A TLS error in Go's words (`handshake_error`), carried as text: h2 keeps
/// only the text of an I/O error, and with TLS 1.3 a server refusing our
/// certificate shows only on the first read, inside h2.
fn go_worded(e: io::Error) -> io::Error {
    let tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if tls {
        io::Error::new(e.kind(), handshake_error(&e))
    } else {
        e
    }
}

/// A client TLS stream whose errors read as `go_worded`.
struct GoWorded<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for GoWorded<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf).map_err(go_worded)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GoWorded<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf).map_err(go_worded)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs).map_err(go_worded)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx).map_err(go_worded)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx).map_err(go_worded)
    }
}

/// No dialer TLS configured: an `https://` server cannot be verified.
fn no_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// tonic's connector: TCP, then TLS for `https://`.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"));
            let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']');
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            Ok(hyper_util::rt::TokioIo::new(stream(tls, host, port, https).await?))
        })
    }
}

/// Accepts any server certificate (its signature over the handshake is
/// still checked): `--insecure-skip-tls-verify`, and auto-TLS peers, whose
/// certificates no CA signed.
/// Client certificates as Go's crypto/x509 checks them (then etcd's allowed
/// common name or host name): webpki's checks,
/// and also a certificate that is itself one of the trusted CAs (a
/// self-signed certificate given as both, like etcd's e2e fixture
/// CommonName-root.crt), which webpki refuses as a CA used as an end entity.
/// Such a one must still be within its validity period.
#[derive(Debug)]
struct TrustedSelfSigned {
    inner: Arc<dyn ClientCertVerifier>,
    roots: Vec<CertificateDer<'static>>,
    allowed: Allowed,
}

/// Who may connect among the certificates the CA vouches for
/// (`--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname`).
#[derive(Debug, Default)]
struct Allowed {
    cn: Option<String>,
    hostname: Option<String>,
}

impl Allowed {
    /// Refused as etcd refuses it: the handshake fails with a "bad
    /// certificate" alert (what the caller's log shows).
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refused = |expected: &str, presented: Vec<String>| {
            // etcd's words for it (its operators' alerts look for them).
            tracing::warn!(
                allowed = expected,
                ?presented,
                error = "client certificate authentication failed",
                "rejected a client certificate"
            );
            rustls::Error::InvalidCertificate(match ServerName::try_from(expected.to_string()) {
                Ok(expected) => rustls::CertificateError::NotValidForNameContext { expected, presented },
                Err(_) => rustls::CertificateError::NotValidForName,
            })
        };
        if let Some(cn) = &self.cn {
            let presented = common_name(cert);
            if presented.as_deref() != Some(cn.as_str()) {
                return Err(refused(cn, presented.into_iter().map(|n| format!("CN={n}")).collect()));
            }
        }
        if let Some(host) = &self.hostname {
            let valid = ServerName::try_from(host.as_str()).ok().is_some_and(|name| {
                rustls::server::ParsedCertificate::try_from(cert)
                    .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, &name).is_ok())
            });
            if !valid {
                return Err(refused(host, alt_names(cert)));
            }
        }
        Ok(())
    }
}

impl ClientCertVerifier for TrustedSelfSigned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.roots.iter().any(|r| r.as_ref() == end_entity.as_ref()) {
            let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
                .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
            let at = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
                .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
            if !cert.validity().is_valid_at(at) {
                return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
            }
        } else {
            self.inner.verify_client_cert(end_entity, intermediates, now)?;
        }
        self.allowed.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------- test and dev certificates

/// A CA and certificates it signed, written as PEM files: what `tessera
/// dev --tls` and the tests use (operators bring their own).
pub struct DevCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub ca_file: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    serial: u64,
}

impl DevCa {
    /// A new CA in `dir` (`ca.pem`).
    pub fn create(dir: &Path) -> Result<Self, TlsError> {
        let io = |source| TlsError::Read { path: dir.to_path_buf(), source };
        let gen = |e: rcgen::Error| TlsError::Config(format!("generating the CA: {e}"));
        std::fs::create_dir_all(dir).map_err(io)?;
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "tessera dev CA");
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(gen)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).map_err(io)?;
        Ok(DevCa { cert, key, ca_file, dir: dir.to_path_buf() })
    }

    /// A certificate named `name` (its common name, and `<name>.pem` /
    /// `<name>-key.pem`) for `hosts`, good for serving and as a client's.
    pub fn issue(&self, name: &str, hosts: &[String]) -> Result<CertFiles, TlsError> {
        let io = |source| TlsError::Read { path: self.dir.clone(), source };
        let gen = |e: rcgen::Error| TlsError::Config(format!("issuing {name}: {e}"));
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(gen)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let serial = rand_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial.to_be_bytes()));
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(gen)?;
        let files = CertFiles {
            cert_file: self.dir.join(format!("{name}.pem")),
            key_file: self.dir.join(format!("{name}-key.pem")),
            serial,
        };
        std::fs::write(&files.cert_file, cert.pem()).map_err(io)?;
        write_private(&files.key_file, key.serialize_pem().as_bytes()).map_err(io)?;
        Ok(files)
    }
}

impl DevCa {
    /// A revocation list of this CA naming `revoked`, written to `crl.pem`.
    pub fn revoke(&self, revoked: &[&CertFiles]) -> Result<PathBuf, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Config(format!("writing the CRL: {e}"));
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from_slice(&rand_serial().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&c.serial.to_be_bytes()),
                    revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .map_err(gen)?;
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, crl.pem().map_err(gen)?).map_err(|source| TlsError::Read { path: path.clone(), source })?;
        Ok(path)
    }
}

/// A positive serial number nobody else picked (63 random bits).
fn rand_serial() -> u64 {
    let mut b = [0u8; 8];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut b).unwrap_or_default();
    u64::from_be_bytes(b) >> 1 | 1
}

#[cfg(test)]
mod tests;
