//! etcd's JSON gateway (grpc-gateway v1 as etcd 3.4 serves it): `POST
//! /v3/kv/range` and friends, under `/v3/` and `/v3beta/`, over any
//! implementation of etcd's gRPC service traits — the shard-node's services
//! for its group, the router's for the federation. Calls go straight to the
//! service, no loopback connection.
//!
//! The JSON mapping is grpc-gateway's with proto field names (see
//! proto/build.rs). Unary errors are `{"error","message","code"}` with
//! grpc-gateway's HTTP status for the code; streams (`/v3/watch`,
//! `/v3/lease/keepalive`, election observe) answer one `{"result":…}` per
//! line and a final `{"error":{…}}` line when they fail. A streaming request
//! body is a sequence of JSON objects, fed to the service as they arrive.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use bytes::{BufMut, BytesMut};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use tessera_proto::etcdserverpb::auth_server::Auth;
use tessera_proto::etcdserverpb::cluster_server::Cluster;
use tessera_proto::etcdserverpb::kv_server::Kv;
use tessera_proto::etcdserverpb::lease_server::Lease;
use tessera_proto::etcdserverpb::maintenance_server::Maintenance;
use tessera_proto::etcdserverpb::watch_server::Watch;
use tessera_proto::v3electionpb::election_server::Election;
use tessera_proto::v3lockpb::lock_server::Lock;
use tonic::{Code, Request, Status, Streaming};

/// The path prefixes etcd 3.4's gateway answers on.
const VERSIONS: [&str; 2] = ["/v3", "/v3beta"];

/// JSON inflates bytes by a third (base64) plus field names; a request that
/// fits gRPC's limit must fit here.
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// grpc-gateway v1's HTTP status for a gRPC code (etcd 3.4).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// grpc-gateway v1's error bodies, fields in its order.
#[derive(Serialize)]
struct UnaryError<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

#[derive(Serialize)]
enum StreamLine<'a, T> {
    #[serde(rename = "result")]
    Result(&'a T),
    #[serde(rename = "error")]
    Error(StreamError<'a>),
}

fn error_response(s: &Status) -> Response {
    let body = UnaryError { error: s.message(), message: s.message(), code: s.code() as i32 };
    json_response(http_status(s.code()), serde_json::to_vec(&body).unwrap_or_default())
}

/// The request body as `T`; an empty body is the empty message.
async fn decode<T: DeserializeOwned + Default>(body: Body) -> Result<T, Status> {
    let bytes = axum::body::to_bytes(body, MAX_JSON_BODY)
        .await
        .map_err(|e| Status::invalid_argument(format!("reading request body: {e}")))?;
    decode_unary(&bytes)
}

/// A unary call's JSON body as `T` (whitespace only: the empty message).
/// Also a fuzz target's entry.
pub fn decode_unary<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The gRPC request for `msg` on behalf of the HTTP caller: its
/// `Authorization` header (an auth token, as grpc-gateway forwards it) and
/// its connection's TLS identity.
fn on_behalf<T>(parts: &axum::http::request::Parts, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(v) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Ok(v) = v.parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
    if let Some(id) = parts.extensions.get::<crate::tls::ClientIdentity>() {
        req.extensions_mut().insert(id.clone());
    }
    req
}

async fn unary<Req, Resp, Fut>(parts: axum::http::request::Parts, body: Body, call: impl FnOnce(Request<Req>) -> Fut) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let result = match decode::<Req>(body).await {
        Ok(req) => call(on_behalf(&parts, req)).await,
        Err(e) => Err(e),
    };
    match result.and_then(|r| serde_json::to_vec(r.get_ref()).map_err(|e| Status::internal(e.to_string()))) {
        Ok(json) => json_response(StatusCode::OK, json),
        Err(s) => error_response(&s),
    }
}

fn line<T: Serialize>(l: &StreamLine<'_, T>) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn stream_error_line(s: &Status) -> Bytes {
    let status = http_status(s.code());
    line::<()>(&StreamLine::Error(StreamError {
        grpc_code: s.code() as i32,
        http_code: status.as_u16(),
        message: s.message(),
        http_status: status.canonical_reason().unwrap_or(""),
    }))
}

/// A server stream as newline-delimited `{"result":…}` objects; a failure
/// (of the stream, or `input_error`'s of the request body) ends it with an
/// error line.
fn stream_response<Resp, S>(result: Result<tonic::Response<S>, Status>, input_error: Arc<Mutex<Option<Status>>>) -> Response
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let stream = match result {
        Ok(r) => r.into_inner(),
        Err(s) => return error_response(&s),
    };
    let lines = result_lines(stream, input_error);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(lines)).into_response()
}

fn result_lines<Resp, S>(
    stream: S,
    input_error: Arc<Mutex<Option<Status>>>,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let mut failed = false;
    let body = stream
        .take_while(move |item| {
            // Stop after the first error line, as grpc-gateway does.
            let keep = !failed;
            failed |= item.is_err();
            futures::future::ready(keep)
        })
        .map(|item| match item {
            Ok(m) => Ok(line(&StreamLine::Result(&m))),
            Err(s) => Ok(stream_error_line(&s)),
        });
    let tail = futures::stream::once(async move { input_error.lock().take() })
        .filter_map(|e| futures::future::ready(e.map(|s| Ok(stream_error_line(&s)))));
    body.chain(tail)
}

/// A request body of concatenated JSON objects as the `Streaming` a gRPC
/// service reads: each object is parsed as it completes and re-framed as a
/// gRPC message. A malformed object ends the input and is reported in
/// `error`.
fn streaming_request<T>(body: Body, error: Arc<Mutex<Option<Status>>>) -> Streaming<T>
where
    T: DeserializeOwned + prost::Message + Default + Send + 'static,
{
    let mut chunks = body.into_data_stream();
    let frames = async_stream(move |tx: futures::channel::mpsc::Sender<Result<Bytes, Status>>| async move {
        let mut tx = tx;
        let mut buf = BytesMut::new();
        let mut ended = false;
        loop {
            // Every complete object in the buffer becomes one frame.
            loop {
                match next_frame::<T>(&mut buf, ended) {
                    Frame::Message(frame) => {
                        if futures::SinkExt::send(&mut tx, Ok(frame)).await.is_err() {
                            return;
                        }
                    }
                    Frame::Incomplete => break,
                    Frame::Malformed(status) => {
                        // Failing the body (not just ending it) ends the
                        // service's stream; the error line says why.
                        *error.lock() = Some(status.clone());
                        let _ = futures::SinkExt::send(&mut tx, Err(status)).await;
                        return;
                    }
                }
            }
            if ended {
                return;
            }
            match chunks.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    let _ = futures::SinkExt::send(&mut tx, Err(Status::cancelled(format!("reading request body: {e}")))).await;
                    return;
                }
                None => ended = true,
            }
        }
    });
    let decoder = tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<T, T>::default());
    Streaming::new_request(decoder, Body::from_stream(frames), None, Some(MAX_JSON_BODY))
}

/// What the start of a streaming request body holds.
#[derive(Debug)]
pub enum Frame {
    /// One complete JSON object, as a gRPC frame (taken from the buffer).
    Message(Bytes),
    /// Nothing complete yet (or only whitespace): more input, or the end.
    Incomplete,
    /// Input that is no `T`: the body fails with this.
    Malformed(Status),
}

/// Takes the next JSON object of a streaming body from `buf` as a gRPC
/// frame; `ended`: no more input will come (a cut-off object is then
/// malformed). The framer of `streaming_request`, and a fuzz target's entry.
pub fn next_frame<T: DeserializeOwned + prost::Message>(buf: &mut BytesMut, ended: bool) -> Frame {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<T>();
    match values.next() {
        Some(Ok(msg)) => {
            let used = values.byte_offset();
            let mut frame = BytesMut::with_capacity(5 + msg.encoded_len());
            frame.put_u8(0);
            frame.put_u32(msg.encoded_len() as u32);
            msg.encode(&mut frame).expect("buffer has capacity");
            let _ = buf.split_to(used);
            Frame::Message(frame.freeze())
        }
        Some(Err(e)) if e.is_eof() && !ended => Frame::Incomplete,
        Some(Err(e)) => Frame::Malformed(Status::invalid_argument(e.to_string())),
        None => Frame::Incomplete,
    }
}

/// A stream fed by `produce` through a small channel (backpressure included).
fn async_stream<T, F, Fut>(produce: F) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(futures::channel::mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = futures::channel::mpsc::channel(4);
    tokio::spawn(produce(tx));
    rx
}

/// Adds `handler` at `path` under every version prefix.
fn at(mut router: Router, paths: &[&str], handler: MethodRouter) -> Router {
    for v in VERSIONS {
        for p in paths {
            router = router.route(&format!("{v}{p}"), handler.clone());
        }
    }
    router
}

/// `POST` handler for a unary method: `$svc.$method` on the decoded body.
macro_rules! unary_route {
    ($svc:expr, $method:ident) => {{
        let svc = $svc.clone();
        post(move |req: axum::extract::Request| {
            let svc = svc.clone();
            let (parts, body) = req.into_parts();
            async move { unary(parts, body, |r| async move { svc.$method(r).await }).await }
        })
    }};
}

/// `POST` handler for a method with a server stream.
macro_rules! server_stream_route {
    ($svc:expr, $method:ident) => {{
        let svc = $svc.clone();
        post(move |req: axum::extract::Request| {
            let svc = svc.clone();
            let (parts, body) = req.into_parts();
            async move {
                match decode(body).await {
                    Ok(req) => stream_response(svc.$method(on_behalf(&parts, req)).await, Default::default()),
                    Err(s) => error_response(&s),
                }
            }
        })
    }};
}

/// `POST` handler for a bidirectional stream.
macro_rules! bidi_route {
    ($svc:expr, $method:ident) => {{
        let svc = $svc.clone();
        post(move |req: axum::extract::Request| {
            let svc = svc.clone();
            let (parts, body) = req.into_parts();
            async move {
                let input_error = Arc::new(Mutex::new(None));
                let requests = streaming_request(body, input_error.clone());
                stream_response(svc.$method(on_behalf(&parts, requests)).await, input_error)
            }
        })
    }};
}

pub fn kv<S: Kv>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let mut r = Router::new();
    r = at(r, &["/kv/range"], unary_route!(svc, range));
    r = at(r, &["/kv/put"], unary_route!(svc, put));
    r = at(r, &["/kv/deleterange"], unary_route!(svc, delete_range));
    r = at(r, &["/kv/txn"], unary_route!(svc, txn));
    at(r, &["/kv/compaction"], unary_route!(svc, compact))
}

/// etcd's auth API (`/v3/auth/...`).
pub fn auth<S: Auth>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let mut r = Router::new();
    r = at(r, &["/auth/enable"], unary_route!(svc, auth_enable));
    r = at(r, &["/auth/disable"], unary_route!(svc, auth_disable));
    r = at(r, &["/auth/status"], unary_route!(svc, auth_status));
    r = at(r, &["/auth/authenticate"], unary_route!(svc, authenticate));
    r = at(r, &["/auth/user/add"], unary_route!(svc, user_add));
    r = at(r, &["/auth/user/get"], unary_route!(svc, user_get));
    r = at(r, &["/auth/user/list"], unary_route!(svc, user_list));
    r = at(r, &["/auth/user/delete"], unary_route!(svc, user_delete));
    r = at(r, &["/auth/user/changepw"], unary_route!(svc, user_change_password));
    r = at(r, &["/auth/user/grant"], unary_route!(svc, user_grant_role));
    r = at(r, &["/auth/user/revoke"], unary_route!(svc, user_revoke_role));
    r = at(r, &["/auth/role/add"], unary_route!(svc, role_add));
    r = at(r, &["/auth/role/get"], unary_route!(svc, role_get));
    r = at(r, &["/auth/role/list"], unary_route!(svc, role_list));
    r = at(r, &["/auth/role/delete"], unary_route!(svc, role_delete));
    r = at(r, &["/auth/role/grant"], unary_route!(svc, role_grant_permission));
    at(r, &["/auth/role/revoke"], unary_route!(svc, role_revoke_permission))
}

pub fn watch<S: Watch>(svc: S) -> Router {
    let svc = Arc::new(svc);
    at(Router::new(), &["/watch"], bidi_route!(svc, watch))
}

pub fn lease<S: Lease>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let mut r = Router::new();
    r = at(r, &["/lease/grant"], unary_route!(svc, lease_grant));
    r = at(r, &["/lease/revoke", "/kv/lease/revoke"], unary_route!(svc, lease_revoke));
    r = at(r, &["/lease/keepalive"], bidi_route!(svc, lease_keep_alive));
    r = at(r, &["/lease/timetolive", "/kv/lease/timetolive"], unary_route!(svc, lease_time_to_live));
    at(r, &["/lease/leases", "/kv/lease/leases"], unary_route!(svc, lease_leases))
}

pub fn cluster<S: Cluster>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let mut r = Router::new();
    r = at(r, &["/cluster/member/add"], unary_route!(svc, member_add));
    r = at(r, &["/cluster/member/remove"], unary_route!(svc, member_remove));
    r = at(r, &["/cluster/member/update"], unary_route!(svc, member_update));
    r = at(r, &["/cluster/member/list"], unary_route!(svc, member_list));
    at(r, &["/cluster/member/promote"], unary_route!(svc, member_promote))
}

pub fn maintenance<S: Maintenance>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let mut r = Router::new();
    r = at(r, &["/maintenance/alarm"], unary_route!(svc, alarm));
    r = at(r, &["/maintenance/status"], unary_route!(svc, status));
    r = at(r, &["/maintenance/defragment"], unary_route!(svc, defragment));
    r = at(r, &["/maintenance/hash"], unary_route!(svc, hash));
    r = at(r, &["/maintenance/hashkv"], unary_route!(svc, hash_kv));
    r = at(r, &["/maintenance/snapshot"], server_stream_route!(svc, snapshot));
    at(r, &["/maintenance/transfer-leadership"], unary_route!(svc, move_leader))
}

pub fn lock<S: Lock>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let r = at(Router::new(), &["/lock/lock"], unary_route!(svc, lock));
    at(r, &["/lock/unlock"], unary_route!(svc, unlock))
}

pub fn election<S: Election>(svc: S) -> Router {
    let svc = Arc::new(svc);
    let mut r = Router::new();
    r = at(r, &["/election/campaign"], unary_route!(svc, campaign));
    r = at(r, &["/election/proclaim"], unary_route!(svc, proclaim));
    r = at(r, &["/election/leader"], unary_route!(svc, leader));
    r = at(r, &["/election/observe"], server_stream_route!(svc, observe));
    at(r, &["/election/resign"], unary_route!(svc, resign))
}
