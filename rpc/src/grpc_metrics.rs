//! etcd's client-facing gRPC series (go-grpc-prometheus, as etcd exports
//! them), for every gRPC call a Tessera server answers, so etcd's
//! dashboards and alerts (request rates, error ratios by code) work on
//! shard-nodes and routers alike:
//!
//! - `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`
//! - `grpc_server_handled_total{...,grpc_code}`
//! - `grpc_server_msg_received_total{...}`, `grpc_server_msg_sent_total{...}`
//!
//! A tower layer over the client port: the method comes from the path,
//! the code from `grpc-status` (in the headers of a trailers-only answer,
//! else in the trailers), messages from the length-prefixed frames of the
//! request and response bodies.

use axum::body::Body;
use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use prometheus::{register_int_counter_vec, IntCounterVec};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use tower::{Layer, Service};

static STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("register grpc_server_started_total")
});
static HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"]
    )
    .expect("register grpc_server_handled_total")
});
static RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("register grpc_server_msg_received_total")
});
static SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("register grpc_server_msg_sent_total")
});

/// go-grpc-prometheus's `grpc_type` of etcd's methods.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => "server_stream",
        _ => "unary",
    }
}

/// The code name go-grpc-prometheus gives a `grpc-status` value.
fn code_name(status: &str) -> &'static str {
    match status.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::Unknown) => "Unknown",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        Err(_) => "Unknown",
    }
}

#[derive(Clone)]
struct Labels {
    kind: &'static str,
    service: String,
    method: String,
}

impl Labels {
    /// The labels of a gRPC call (`/pkg.Service/Method`), None for other paths.
    fn of(req: &Request<Body>) -> Option<Labels> {
        let grpc = req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let (service, method) = req.uri().path().strip_prefix('/')?.split_once('/')?;
        grpc.then(|| Labels { kind: grpc_type(service, method), service: service.to_string(), method: method.to_string() })
    }

    fn values(&self) -> [&str; 3] {
        [self.kind, &self.service, &self.method]
    }

    fn handled(&self, status: &str) {
        HANDLED.with_label_values(&[self.kind, &self.service, &self.method, code_name(status)]).inc();
    }
}

/// Counts gRPC messages in a body's length-prefixed frames.
struct FrameCounter {
    counter: prometheus::IntCounter,
    /// Bytes left of the message being read (after its 5-byte prefix).
    left: usize,
    prefix: Vec<u8>,
}

impl FrameCounter {
    fn new(counter: prometheus::IntCounter) -> Self {
        FrameCounter { counter, left: 0, prefix: Vec::with_capacity(5) }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let need = 5 - self.prefix.len();
            let n = need.min(data.len());
            self.prefix.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.prefix.len() == 5 {
                self.counter.inc();
                self.left = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as usize;
                self.prefix.clear();
            }
        }
    }
}

/// A body whose data frames are counted as gRPC messages, and whose
/// trailers (a response's) report the call's code.
struct Counted {
    inner: Body,
    frames: FrameCounter,
    /// Set on a response body: reports `grpc-status` from its trailers once.
    labels: Option<Labels>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<bytes::Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.frames.feed(data.chunk());
                } else if let Some(trailers) = frame.trailers_ref() {
                    report(&mut this.labels, trailers);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                // Ended without trailers: the client went away mid-stream.
                if let Some(l) = this.labels.take() {
                    l.handled("1");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn report(labels: &mut Option<Labels>, headers: &HeaderMap) {
    if let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        if let Some(l) = labels.take() {
            l.handled(status);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // A response dropped unfinished (the connection closed).
        if let Some(l) = self.labels.take() {
            l.handled("1");
        }
    }
}

/// The layer: wrap a client port's router with `.layer(GrpcMetrics)`.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetrics;

impl<S> Layer<S> for GrpcMetrics {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for GrpcMetricsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(labels) = Labels::of(&req) else {
            return Box::pin(self.inner.call(req));
        };
        STARTED.with_label_values(&labels.values()).inc();
        let received = RECEIVED.with_label_values(&labels.values());
        let req = req.map(|b| Body::new(Counted { inner: b, frames: FrameCounter::new(received), labels: None }));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut labels = Some(labels);
            // A trailers-only answer (an error before any message) has its code in the headers.
            report(&mut labels, resp.headers());
            let sent = match &labels {
                Some(l) => SENT.with_label_values(&l.values()),
                None => return Ok(resp),
            };
            Ok(resp.map(|b| Body::new(Counted { inner: b, frames: FrameCounter::new(sent), labels })))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_frame_boundaries() {
        let c = prometheus::IntCounter::new("t", "t").unwrap();
        let mut f = FrameCounter::new(c.clone());
        // Two messages of 3 and 0 bytes, split at awkward places.
        let bytes = [0u8, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0];
        for chunk in bytes.chunks(2) {
            f.feed(chunk);
        }
        assert_eq!(c.get(), 2);
    }

    #[test]
    fn etcd_streams_have_their_types() {
        assert_eq!(grpc_type("etcdserverpb.Watch", "Watch"), "bidi_stream");
        assert_eq!(grpc_type("etcdserverpb.KV", "Range"), "unary");
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("11"), "OutOfRange");
    }
}
