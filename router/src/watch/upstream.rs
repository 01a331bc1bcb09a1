//! One group's side of a merged watch: a watch on one replica of the group,
//! moved to another (from its watermark + 1) when that one fails, closed
//! while its watcher is behind and resumed from there, ended when the group
//! was fenced for a newer map (the watcher routes again).

use crate::backends::{watch_client, Backends, Lane, Prefer};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use tessera_proto::mvccpb::Event;
use tessera_rpc::Refusal;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_stream::wrappers::ReceiverStream;

/// What an upstream reports to its watcher.
pub enum Up {
    Created {
        group: u64,
        rev: i64,
    },
    Events {
        group: u64,
        events: Vec<Event>,
    },
    Progress {
        group: u64,
        rev: i64,
    },
    Compacted {
        compact_revision: i64,
    },
    /// The group ended its side after its last event up to a fence for map
    /// `epoch` (it no longer owns part of the range): route again.
    Rerouted {
        group: u64,
        epoch: u64,
    },
    Failed(String),
}

pub async fn upstream(
    b: Arc<Backends>,
    group: u64,
    base: WatchCreateRequest,
    tx: mpsc::Sender<Up>,
    mut progress: mpsc::Receiver<()>,
) {
    let mut next = base.start_revision;
    // The map this side of the watch was first routed by: it resumes under
    // it (on whichever replicas the current map names). Resumed under a
    // newer map, a group that gave part of the range away would hide that
    // part's events below the hand-over, which the new owner's side has
    // passed already (it was raised past them): they would be lost. Under
    // the first map the group ends the watch after its last event up to the
    // fence (`Rerouted`), and the watcher routes again from there.
    let mut routed_by: Option<Arc<shardmap::map::Routing>> = None;
    'route: loop {
        let targets = match b.routing().and_then(|r| Ok((b.targets_on(&r, group, Prefer::Leader, Lane::Streams)?, r))) {
            Ok(t) => t,
            Err(_) => {
                // A group taken out of the map (`group remove`, after it
                // gave everything away): the watcher routes again by the
                // current map, which gives it nothing of the range.
                if let Some(r) = b.routing().ok().filter(|r| r.map.removed_groups.contains(&group)) {
                    let _ = tx.send(Up::Rerouted { group, epoch: r.epoch() }).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (targets, routing) = targets;
        let routing = routed_by.get_or_insert(routing).clone();
        for (node, ch) in targets {
            tracing::debug!(group, node, epoch = routing.epoch(), from = next, "upstream watch opening");
            let (req_tx, req_rx) = mpsc::channel(8);
            let mut c = base.clone();
            c.start_revision = next;
            c.watch_id = 0;
            c.fragment = false; // merged responses hold whole revisions
            c.progress_notify = false; // the router asks for progress itself
            let _ = req_tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) }).await;
            // A stream that lives as long as its watcher: no timeout.
            let req = b.request(&routing, group, ReceiverStream::new(req_rx));
            let mut stream = match watch_client(ch).watch(req).await {
                Ok(s) => s.into_inner(),
                Err(_) => continue,
            };
            loop {
                let resp = tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(resp)) => resp,
                        _ => break,
                    },
                    p = progress.recv() => {
                        if p.is_none() { return; }
                        // Never wait here with the stream unread: a full queue
                        // already holds a progress request, whose answer serves.
                        let ask = RequestUnion::ProgressRequest(WatchProgressRequest {});
                        let _ = req_tx.try_send(WatchRequest { request_union: Some(ask) });
                        continue;
                    }
                };
                b.observe(resp.header.as_ref());
                let rev = resp.header.as_ref().map_or(0, |h| h.revision);
                let up = if resp.created {
                    if next != 0 {
                        continue;
                    }
                    next = rev + 1;
                    Up::Created { group, rev }
                } else if resp.canceled {
                    let up = if resp.compact_revision > 0 {
                        Up::Compacted { compact_revision: resp.compact_revision }
                    } else if let Some(Refusal::EpochNotMatch { current }) = Refusal::from_cancel_reason(&resp.cancel_reason) {
                        Up::Rerouted { group, epoch: current }
                    } else {
                        Up::Failed(resp.cancel_reason)
                    };
                    let _ = tx.send(up).await;
                    return;
                } else if resp.events.is_empty() {
                    next = next.max(rev + 1);
                    Up::Progress { group, rev }
                } else {
                    let last = resp.events.last().and_then(|e| e.kv.as_ref()).map_or(0, |kv| kv.mod_revision);
                    next = next.max(last + 1);
                    Up::Events { group, events: resp.events }
                };
                match tx.try_send(up) {
                    Ok(()) => {}
                    Err(TrySendError::Closed(_)) => return,
                    Err(TrySendError::Full(up)) => {
                        // The watcher is behind (its client reads slowly).
                        // An unread stream would hold the window of the
                        // router's one connection to this node and stall
                        // every other call on it (puts included), so close
                        // it while waiting and resume from `next` after.
                        drop(stream);
                        if tx.send(up).await.is_err() {
                            return;
                        }
                        tracing::debug!(group, next, "upstream watch resumed after its watcher caught up");
                        continue 'route;
                    }
                }
            }
            tracing::debug!(group, "upstream watch broke; resuming from {next}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
