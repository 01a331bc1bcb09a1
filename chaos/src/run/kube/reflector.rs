//! kube-apiserver's reflectors: one gRPC Watch stream carrying a watch per
//! resource (from the cache's revision + 1, with prev_kv and progress
//! notifications) that fills the caches. As a reflector does, a watch that
//! ends is resumed from the cache's revision on a new stream (on the next
//! endpoint, since the one in use may be gone), and a watch cancelled for
//! compaction relists its resource first. Each stream is recorded as a
//! stream of its own in the history.

use super::{Shared, RESOURCES};
use crate::history::{Bytes, Call, EventKind, Kv, Response};
use crate::run::client::Client;
use crate::run::recorder::Recorder;
use crate::run::watch::{event_of, Responses, Stream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::etcdserverpb::WatchCreateRequest;
use tonic::transport::Channel;

/// The stream in use, for RequestProgress (None between streams).
pub type Current = Arc<Mutex<Option<Arc<Stream>>>>;

/// Why a watch of a stream ended.
enum Ended {
    /// The stream broke (endpoint gone, connection reset) or was cancelled without compaction.
    Broken,
    /// Cancelled for compaction: the resource relists.
    Compacted(usize),
}

/// Keeps the caches watching until `stop`; `lister` relists after compaction.
pub(super) async fn run(
    channels: Vec<Channel>,
    rec: Recorder,
    sh: Arc<Shared>,
    current: Current,
    mut lister: Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut relist = vec![false; RESOURCES.len()];
    for attempt in 0usize.. {
        if *stop.borrow() {
            break;
        }
        let channel = channels[attempt % channels.len()].clone();
        let ended = tokio::select! {
            e = session(channel, &rec, &sh, &current, &mut relist, &mut lister) => e,
            _ = stop.changed() => break,
        };
        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match ended {
            Ok(Ended::Compacted(r)) => relist[r] = true,
            Ok(Ended::Broken) => {}
            Err(e) => tracing::debug!(error = %e, "watch stream could not start"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One stream: (re)lists what needs it, watches every resource, returns when one watch ends.
async fn session(
    channel: Channel,
    rec: &Recorder,
    sh: &Arc<Shared>,
    current: &Current,
    relist: &mut [bool],
    lister: &mut Client,
) -> anyhow::Result<Ended> {
    let stream = Arc::new(Stream::open(channel, 0, rec.clone()).await?);
    let mut watches = tokio::task::JoinSet::new();
    for (r, prefix) in RESOURCES.iter().enumerate() {
        if relist[r] {
            list(lister, prefix, sh, r).await?;
            relist[r] = false;
        }
        let start = sh.cache(r).rev + 1;
        let create = WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: crate::history::prefix_end(prefix.as_bytes()).to_vec(),
            start_revision: start,
            prev_kv: true,
            progress_notify: true,
            ..Default::default()
        };
        let responses = stream.watch(create).await?;
        watches.spawn(consume(r, responses, sh.clone()));
    }
    *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream.clone());
    // The first watch to end ends the stream (dropping the set cancels the others).
    Ok(watches.join_next().await.and_then(Result::ok).unwrap_or(Ended::Broken))
}

/// Applies a watch's responses to resource `r`'s cache until the watch ends.
async fn consume(r: usize, mut responses: Responses, sh: Arc<Shared>) -> Ended {
    let prefix = RESOURCES[r];
    while let Some(resp) = responses.recv().await {
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut cache = sh.cache(r);
        if resp.canceled {
            if resp.compact_revision > 0 {
                let why = format!("{prefix}: canceled at {rev}, compacted to {}", resp.compact_revision);
                sh.report().compaction_cancels.push(why);
                return Ended::Compacted(r);
            }
            return Ended::Broken;
        }
        if resp.events.is_empty() {
            // Progress (or created): the cache is current up to its revision.
            if !resp.created && rev < cache.last_event {
                let what = format!("{prefix}: progress {rev} (watch {}) after an event at {}", resp.watch_id, cache.last_event);
                sh.report().progress_backwards.push(what);
            }
            if !resp.created {
                cache.rev = cache.rev.max(rev);
            }
            continue;
        }
        for e in resp.events.iter().filter_map(event_of) {
            cache.last_event = cache.last_event.max(e.mod_rev);
            cache.rev = cache.rev.max(e.mod_rev);
            match e.kind {
                EventKind::Put => {
                    let kv =
                        Kv { value: e.value, mod_rev: e.mod_rev, create_rev: e.create_rev, version: e.version, lease: e.lease };
                    cache.objects.insert(e.key.to_vec(), kv);
                }
                EventKind::Delete => {
                    cache.objects.remove(e.key.as_slice());
                }
            }
        }
    }
    Ended::Broken
}

/// A paginated list pinned at the first page's revision; replaces the cache.
pub(super) async fn list(c: &mut Client, prefix: &str, sh: &Shared, r: usize) -> anyhow::Result<i64> {
    let end = crate::history::prefix_end(prefix.as_bytes());
    let mut key = Bytes::from(prefix);
    let mut rev = 0;
    let mut objects = std::collections::BTreeMap::new();
    loop {
        let call = Call::Range { key: key.clone(), range_end: end.clone(), revision: rev, limit: 50, serializable: false };
        let Some(Response::Range { header_rev, kvs, more, .. }) = c.call(call).await else {
            anyhow::bail!("listing {prefix} failed");
        };
        if rev == 0 {
            rev = header_rev;
        }
        let last = kvs.last().map(|(k, _)| k.clone());
        objects.extend(kvs.into_iter().map(|(k, kv)| (k.to_vec(), kv)));
        match (more, last) {
            (true, Some(last)) => {
                let mut next = last.to_vec();
                next.push(0);
                key = Bytes::from(next);
            }
            _ => break,
        }
    }
    let mut cache = sh.cache(r);
    cache.objects = objects;
    cache.rev = rev;
    cache.last_event = rev;
    Ok(rev)
}
