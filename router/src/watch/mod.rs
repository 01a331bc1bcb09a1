//! etcd's Watch service over the groups. Each watcher opens one upstream
//! watch per overlapping group, from the same start revision, and merges
//! them (`merge`: events released in revision order up to what every group
//! has confirmed; `watcher`: the loop that feeds it). Upstreams reconnect to
//! another replica from their watermark + 1 (`upstream`), so a node failure
//! is invisible to the client. This module is the client's stream: it
//! starts and cancels watchers and answers progress requests for all of them.

mod merge;
mod upstream;
mod watcher;

use crate::auth::Caller;
use crate::backends::Backends;
use crate::deadline::Deadline;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::watch_server::Watch;
use tessera_proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use tessera_rpc::auth::Access;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use watcher::{watcher, Ctl, Shared};

/// How long a progress answer may take before the request is dropped (a
/// group that cannot be reached; Kubernetes gives up after 3 s and lists).
const PROGRESS_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct WatchService {
    pub backends: Arc<Backends>,
    pub auth: Arc<crate::auth::Gate>,
    pub progress_interval: Duration,
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;
type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send>>;

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: rev, ..Default::default() })
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        // Who watches is found once, from the stream's metadata, as etcd does.
        let caller = self.auth.caller(&req).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(client_stream(self.backends.clone(), caller, req.into_inner(), tx, self.progress_interval));
        let b = self.backends.clone();
        let stamped = ReceiverStream::new(rx).map(move |r| r.map(|resp| b.answer(resp).into_inner()));
        Ok(Response::new(Box::pin(stamped)))
    }
}

struct Handle {
    ctl: mpsc::Sender<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

/// One answer to RequestProgress for the whole stream (etcd 3.5's meaning,
/// which Kubernetes' watch cache relies on): a revision R such that every
/// watcher on the stream has been sent every event up to R, R is at least
/// every write acknowledged before the request (the federation's current
/// revision) and at least every event already sent on the stream.
///
/// The stream first holds every watcher at the oracle's current revision
/// (a cap: nothing above it is sent), asks each — once it took the cap —
/// what it has sent up to, takes the target R as the highest of those,
/// holds them at R, and waits until each has sent everything up to R (their
/// groups raised to R and asked for progress). The answer goes out before
/// the cap is lifted, so no event after R precedes it; a watcher created
/// meanwhile holds its creation (and events) behind the cap too. None: the
/// oracle or a group could not be reached in time.
async fn progress_round(b: Arc<Backends>, watchers: Vec<mpsc::Sender<Ctl>>, cap: watch::Sender<Option<i64>>) -> Option<i64> {
    let now = b.now(Deadline::default_from_now()).await.ok()?;
    cap.send_replace(Some(now));
    // Each watcher takes the cap, then says what it has sent up to (what it
    // sent before the cap may be past `now`).
    let mut sent = vec![];
    for ctl in &watchers {
        let (reply, rx) = oneshot::channel();
        if ctl.send(Ctl::Released { reply }).await.is_ok() {
            sent.push(rx);
        }
    }
    let sent = tokio::time::timeout(PROGRESS_WAIT, futures::future::join_all(sent)).await.ok()?;
    let target = sent.into_iter().flatten().fold(now, i64::max);
    cap.send_replace(Some(target));
    let mut waits = vec![];
    for ctl in watchers {
        let (reply, rx) = oneshot::channel();
        if ctl.send(Ctl::Progress { target, reply }).await.is_ok() {
            waits.push(rx);
        }
    }
    // A watcher that ended meanwhile answers nothing and holds nothing.
    tokio::time::timeout(PROGRESS_WAIT, futures::future::join_all(waits)).await.ok()?;
    Some(target)
}

async fn client_stream(b: Arc<Backends>, caller: Caller, mut input: Streaming<WatchRequest>, out: Out, interval: Duration) {
    let mut watchers: HashMap<i64, Handle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
    let mut next_id = 0i64;
    let (cap, _) = watch::channel(None);
    // Progress requests: those the running round answers, and those after it.
    let mut round: Option<(tokio::task::JoinHandle<Option<i64>>, usize)> = None;
    let mut queued = 0usize;
    // The creation being answered: requests after it wait.
    let mut creating: Option<oneshot::Receiver<()>> = None;
    // As in etcd, a client that half-closes its side keeps receiving until it leaves.
    let mut input_open = true;
    loop {
        tokio::select! {
            _ = out.closed() => break,
            // The next request waits until the last creation was answered.
            _ = async { creating.as_mut().expect("guarded").await }, if creating.is_some() => creating = None,
            msg = input.message(), if input_open && creating.is_none() => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => {
                        input_open = false;
                        continue;
                    }
                    Err(_) => break,
                };
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        if let Err(e) = caller.check(&c.key, &c.range_end, Access::Read) {
                            // etcd answers a watch it does not permit as created and
                            // canceled, the reason in grpc-go's words for the status.
                            let resp = WatchResponse {
                                header: header(b.max_revision()),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: format!("rpc error: code = {:?} desc = {}", e.code(), e.message()),
                                ..Default::default()
                            };
                            if out.send(Ok(resp)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let id = if c.watch_id > 0 {
                            if watchers.contains_key(&c.watch_id) {
                                let _ = out.send(Err(Status::invalid_argument("etcdserver: duplicate watch ID"))).await;
                                continue;
                            }
                            c.watch_id
                        } else {
                            // As etcd: never an id given before on this stream.
                            // A client cancels an id it gets events for after its
                            // watch ended; reused, that would end another watch.
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            let id = next_id;
                            next_id += 1;
                            id
                        };
                        let (ctl_tx, ctl_rx) = mpsc::channel(4);
                        let (b, out, done) = (b.clone(), out.clone(), done_tx.clone());
                        let (created, answered) = oneshot::channel();
                        let shared = Shared { cap: cap.subscribe(), created };
                        let task = tokio::spawn(async move {
                            watcher(b, id, c, out, ctl_rx, shared, interval).await;
                            let _ = done.send(id);
                        });
                        watchers.insert(id, Handle { ctl: ctl_tx, task });
                        creating = Some(answered);
                    }
                    Some(RequestUnion::CancelRequest(c)) => {
                        if let Some(w) = watchers.remove(&c.watch_id) {
                            // Stopped before the answer: no event of it may follow
                            // the cancellation (the client would cancel its id again).
                            w.task.abort();
                            let _ = w.task.await;
                            let resp = WatchResponse {
                                header: header(b.max_revision()),
                                watch_id: c.watch_id,
                                canceled: true,
                                ..Default::default()
                            };
                            if out.send(Ok(resp)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => queued += 1,
                    None => {}
                }
            }
            Some(id) = done_rx.recv() => {
                watchers.remove(&id);
            }
            answer = async { (&mut round.as_mut().expect("guarded").0).await }, if round.is_some() => {
                let (_, asked) = round.take().expect("guarded");
                if let Ok(Some(rev)) = answer {
                    for _ in 0..asked {
                        let resp = WatchResponse { header: header(rev), watch_id: -1, ..Default::default() };
                        if out.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                }
                // Answered (or given up): the watchers go on past it.
                cap.send_replace(None);
            }
        }
        if round.is_none() && queued > 0 {
            let held = watchers.values().map(|w| w.ctl.clone()).collect();
            round = Some((tokio::spawn(progress_round(b.clone(), held, cap.clone())), std::mem::take(&mut queued)));
        }
    }
    if let Some((task, _)) = round {
        task.abort();
    }
    for w in watchers.into_values() {
        w.task.abort();
    }
}
