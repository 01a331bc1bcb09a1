//! The HTTP endpoints etcd serves on its client port next to gRPC:
//! `/version` (the API level Kubernetes checks), `/health`, `/metrics`.
//! Shard-nodes and routers answer them the same way.

use crate::tls::Dialer;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{register_int_gauge_vec, Encoder, IntGaugeVec, TextEncoder};
use std::sync::LazyLock;

/// The etcd API level implemented (3.5's watch-progress semantics, which
/// Kubernetes relies on); reported by `/version` and Maintenance.Status.
pub const ETCD_API_VERSION: &str = "3.5.17";
const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// etcd's version series (dashboards and upgrade checks read them): 1 on
/// the version served, as `/version` reports it.
static SERVER_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        &["server_version"]
    )
    .expect("register etcd_server_version")
});
static CLUSTER_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        &["cluster_version"]
    )
    .expect("register etcd_cluster_version")
});

/// etcd's request limit (--max-request-bytes default).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1572864;
/// etcd's allowance for gRPC framing on top of --max-request-bytes.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Whether the server at `url` (`http[s]://host:port` or `host:port`)
/// answers `/health` with `"health":"true"`, within 2 s (readiness waits use it).
pub async fn probe_health(url: &str) -> bool {
    probe_health_via(&Dialer::plain(), url).await
}

/// `probe_health` through `dialer` (an `https://` server).
pub async fn probe_health_via(dialer: &Dialer, url: &str) -> bool {
    http_get_via(dialer, url, "/health").await.is_some_and(|body| body.contains("\"health\":\"true\""))
}

/// The response (status line, headers, body) to `GET path` on the server at
/// `url` (`http://host:port` or `host:port`), within 2 s.
pub async fn http_get(url: &str, path: &str) -> Option<String> {
    http_get_via(&Dialer::plain(), url, path).await
}

/// `http_get` through `dialer` (an `https://` server).
pub async fn http_get_via(dialer: &Dialer, url: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let (mut s, hostport) = dialer.http1(url).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![];
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), fetch).await.ok().flatten()
}

/// The body of `/version`.
pub fn version_json() -> String {
    format!("{{\"etcdserver\":\"{ETCD_API_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}")
}

/// The text exposition of every metric registered in this process.
pub fn metrics_text() -> String {
    let mut buf = vec![];
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// `/version`, `/health` (answered by `healthy`) and `/metrics` (after
/// `refresh` updates the gauges read at scrape time).
pub fn routes<H, F>(healthy: H, refresh: impl Fn() + Clone + Send + Sync + 'static) -> axum::Router
where
    H: Fn() -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    SERVER_VERSION.with_label_values(&[ETCD_API_VERSION]).set(1);
    // etcd labels the cluster version major.minor ("3.5").
    let minor = ETCD_CLUSTER_VERSION.rsplit_once('.').map_or(ETCD_CLUSTER_VERSION, |(m, _)| m);
    CLUSTER_VERSION.with_label_values(&[minor]).set(1);
    axum::Router::new()
        .route("/version", get(|| async { version_json() }))
        .route(
            "/health",
            get(move || {
                let ok = healthy();
                async move {
                    let ok = ok.await;
                    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (code, format!("{{\"health\":\"{ok}\"}}"))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                refresh();
                async { metrics_text() }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_say_the_version_version_says() {
        let _ = routes(|| async { true }, || {});
        let text = metrics_text();
        assert!(text.contains(&format!("etcd_server_version{{server_version=\"{ETCD_API_VERSION}\"}} 1")), "{text}");
        assert!(text.contains("etcd_cluster_version{cluster_version=\"3.5\"} 1"), "{text}");
        assert!(version_json().contains(&format!("\"etcdserver\":\"{ETCD_API_VERSION}\"")));
    }
}
