//! Serving a client port: HTTP/1 (etcd's /metrics, /health, /version and
//! the JSON gateway) and HTTP/2 (gRPC) on one listener.
//!
//! axum's own `serve` cannot set HTTP/2 options, and one of h2's defaults
//! does not suit etcd clients: a client that resets more than 20 streams
//! the server has not accepted yet gets the whole connection closed with
//! ENHANCE_YOUR_CALM (h2's guard against "rapid reset" floods). etcd
//! clients cancel watches and calls in bursts (a kube-apiserver re-listing,
//! etcd-runner ending its watchers), and on a busy server that tears down
//! every other call on the connection, which etcd (grpc-go) never does. The
//! limit is raised, not removed: a real flood is still stopped. And hyper
//! allows 200 concurrent streams per connection where etcd allows 2^32 − 1
//! (`--max-concurrent-streams`): a client multiplexing its watches on one
//! connection (the kube-apiserver does; so does the router to each node)
//! would have its 201st call wait for a stream to end.

use crate::authority::ClientListener;
use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;

/// Streams a client may reset before the server accepted them.
const MAX_PENDING_ACCEPT_RESETS: usize = 1024;
/// Concurrent streams per connection, as etcd's default.
const MAX_CONCURRENT_STREAMS: u32 = u32::MAX;

/// Serves `app` on `listener` until `shutdown` completes, then waits for
/// open connections to finish (callers bound that wait).
pub async fn serve(mut listener: ClientListener, app: axum::Router, shutdown: impl Future<Output = ()>) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS).max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    // etcd's grpc_server_* series for every gRPC call on the port.
    let app = app.layer(crate::grpc_metrics::GrpcMetrics);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
