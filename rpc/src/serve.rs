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

use crate::authority::{ClientConn, ClientListener};
use crate::tls::{ClientIdentity, Io, ServerTls};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Streams a client may reset before the server accepted them.
const MAX_PENDING_ACCEPT_RESETS: usize = 1024;
/// Concurrent streams per connection, as etcd's default.
pub const MAX_CONCURRENT_STREAMS: u32 = u32::MAX;
/// A TLS handshake not done by then is dropped (a stalled or hostile client
/// must not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (with `tls` when given: `https://` URLs)
/// until `shutdown` completes, then waits for open connections to finish
/// (callers bound that wait). Every request carries its connection's
/// `ClientIdentity`.
pub async fn serve(listener: ClientListener, tls: Option<Arc<ServerTls>>, app: axum::Router, shutdown: impl Future<Output = ()>) {
    serve_with_streams(listener, tls, app, shutdown, MAX_CONCURRENT_STREAMS).await
}

/// As `serve`, with at most `max_streams` concurrent HTTP/2 streams per
/// connection (etcd's `--max-concurrent-streams`).
pub async fn serve_with_streams(
    mut listener: ClientListener,
    tls: Option<Arc<ServerTls>>,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
    max_streams: u32,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS).max_concurrent_streams(max_streams);
    // etcd's grpc_server_* series for every gRPC call on the port.
    let app = app.layer(crate::grpc_metrics::GrpcMetrics);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut shutdown => break,
        };
        let (app, builder, watcher, tls) = (app.clone(), builder.clone(), graceful.watcher(), tls.clone());
        // The handshake runs in the connection's task: a slow client must not stall accepting.
        tokio::spawn(async move {
            let (io, identity): (Box<dyn Io>, ClientIdentity) = match tls {
                None => (Box::new(tcp), ClientIdentity::default()),
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok((stream, identity))) => (Box::new(stream), identity),
                    // etcd logs these too ("rejected connection from ...").
                    Ok(Err(e)) => {
                        let error = crate::tls::handshake_error(&e);
                        return tracing::info!(%peer, error, "rejected connection: TLS handshake failed");
                    }
                    Err(_) => return tracing::info!(%peer, "rejected connection: TLS handshake timed out"),
                },
            };
            let app = tower::ServiceExt::map_request(app, move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(identity.clone());
                req
            });
            let service = TowerToHyperService::new(app);
            let conn =
                watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(ClientConn::new(io)), service).into_owned());
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// A connection accepted for a tonic server (plain or after its TLS handshake).
pub struct Accepted(Box<dyn Io>);

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Accepted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Accepted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, TCP_NODELAY, with `tls` when given,
/// for `tonic::transport::Server::serve_with_incoming` (the peer port).
/// Handshakes run in tasks of their own; failed ones are logged and dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> impl futures::Stream<Item = std::io::Result<Accepted>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Accepted>>(16);
    tokio::spawn(async move {
        let mut listener = ClientListener(listener);
        loop {
            let (tcp, peer) = tokio::select! {
                conn = listener.accept() => conn,
                _ = tx.closed() => return,
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok((stream, _))) => Box::new(stream),
                        Ok(Err(e)) => {
                            let error = crate::tls::handshake_error(&e);
                            return tracing::info!(%peer, error, "rejected peer connection: TLS handshake failed");
                        }
                        Err(_) => return tracing::info!(%peer, "rejected peer connection: TLS handshake timed out"),
                    },
                };
                let _ = tx.send(Ok(Accepted(io))).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
