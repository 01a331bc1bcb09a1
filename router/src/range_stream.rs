//! etcd 3.7's RangeStream through the router: the range read at one
//! revision — the client's, else the federation's current one — in pages
//! from each group it spans, merged by key into chunks that grow as etcd's
//! do. At most one page per group is held at a time (each page no bigger
//! than a chunk), so a list of millions of keys never sits whole in the
//! router. Header, `more` and `count` ride on the last chunk.
//!
//! Each page is its own call (retried on another replica like any read);
//! pages after a group's first read at the pinned revision without a new
//! ReadIndex, since nothing at or below it changes. A map change under a
//! stream ends it with the group's refusal: the client lists again.

use crate::backends::{kv_client, Access, Backends};
use crate::deadline::Deadline;
use futures::future::try_join_all;
use std::collections::VecDeque;
use std::sync::Arc;
use tessera_proto::etcdserverpb::{RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader};
use tessera_proto::mvccpb::KeyValue;
use tessera_rpc::range_stream::{after, next_chunk_limit, FIRST_CHUNK};
use tokio::sync::mpsc;
use tonic::Status;

type Out = mpsc::Sender<Result<RangeStreamResponse, Status>>;

/// One group's part of the range: its unsent keys, and where its next page
/// starts (None once it has sent its last).
struct Part {
    group: u64,
    buffered: VecDeque<KeyValue>,
    next: Option<Vec<u8>>,
    /// Keys of the group in the range at the revision (its first page's count).
    count: i64,
}

struct Stream {
    backends: Arc<Backends>,
    req: RangeRequest,
    revision: i64,
}

impl Stream {
    /// One page of `group` from `key`, at the stream's revision.
    async fn page(&self, group: u64, key: Vec<u8>, limit: i64, first: bool, deadline: Deadline) -> Result<RangeResponse, Status> {
        let req = RangeRequest {
            key,
            range_end: self.req.range_end.clone(),
            revision: self.revision,
            limit,
            keys_only: self.req.keys_only,
            // The first page reads as the client asked; the rest read a
            // revision the group has already reached.
            serializable: self.req.serializable || !first,
            ..Default::default()
        };
        let access = if self.req.serializable { Access::Serializable } else { Access::Read };
        let resp = self.backends.call(group, access, deadline, req, |ch, r| async move { kv_client(ch).range(r).await }).await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }

    /// Fills the buffers of the parts that ran dry and have more.
    async fn refill(&self, parts: &mut [Part], limit: i64) -> Result<(), Status> {
        let deadline = Deadline::default_from_now();
        let dry: Vec<usize> = (0..parts.len()).filter(|i| parts[*i].buffered.is_empty() && parts[*i].next.is_some()).collect();
        let pages = try_join_all(dry.iter().map(|i| {
            let key = parts[*i].next.clone().expect("filtered");
            self.page(parts[*i].group, key, limit, false, deadline)
        }))
        .await?;
        for (i, page) in dry.into_iter().zip(pages) {
            take_page(&mut parts[i], page);
        }
        Ok(())
    }
}

fn take_page(part: &mut Part, page: RangeResponse) {
    part.next = if page.more { page.kvs.last().map(|kv| after(&kv.key)) } else { None };
    part.buffered.extend(page.kvs);
}

/// The part whose next key is the smallest (None when all are drained).
fn smallest(parts: &[Part]) -> Option<usize> {
    (0..parts.len())
        .filter(|i| !parts[*i].buffered.is_empty())
        .min_by(|a, b| parts[*a].buffered[0].key.cmp(&parts[*b].buffered[0].key))
}

/// A RangeStream to run: `req` over `groups` at `revision`, chunks sized
/// toward `target` bytes, the first pages within `deadline`.
pub(crate) struct Job {
    pub backends: Arc<Backends>,
    pub groups: Vec<u64>,
    pub req: RangeRequest,
    pub revision: i64,
    pub deadline: Deadline,
    pub target: usize,
}

/// Runs `job` into `out`; a failure ends the stream with its status.
pub(crate) async fn stream(job: Job, out: Out) {
    if let Err(e) = run(job, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

async fn run(job: Job, out: &Out) -> Result<(), Status> {
    let Job { backends, groups, req, revision, deadline, target } = job;
    let total = if req.limit > 0 { req.limit } else { i64::MAX };
    let s = Stream { backends, req, revision };
    let mut limit = FIRST_CHUNK.min(total);
    let firsts = try_join_all(groups.iter().map(|g| s.page(*g, s.req.key.clone(), limit, true, deadline))).await?;
    // A read at the client's revision answers the newest current revision
    // (as etcd's header); one of the current state answers the revision read.
    let newest = firsts.iter().filter_map(|p| p.header.map(|h| h.revision)).max().unwrap_or(revision);
    let header =
        ResponseHeader { revision: if s.req.revision > 0 { newest.max(revision) } else { revision }, ..Default::default() };
    let mut parts: Vec<Part> = groups
        .iter()
        .zip(firsts)
        .map(|(g, page)| {
            let mut part = Part { group: *g, buffered: VecDeque::new(), next: None, count: page.count };
            take_page(&mut part, page);
            part
        })
        .collect();
    let mut sent = 0i64;
    loop {
        let mut kvs = Vec::new();
        while (kvs.len() as i64) < limit {
            s.refill(&mut parts, limit).await?;
            let Some(i) = smallest(&parts) else { break };
            kvs.push(parts[i].buffered.pop_front().expect("smallest has a key"));
        }
        sent += kvs.len() as i64;
        let more = parts.iter().any(|p| !p.buffered.is_empty() || p.next.is_some());
        let done = !more || sent >= total;
        let mut chunk = RangeResponse { kvs, ..Default::default() };
        let size = prost::Message::encoded_len(&chunk);
        if done {
            let mut h = Some(header);
            s.backends.stamp(&mut h);
            chunk.header = h;
            chunk.more = more;
            chunk.count = parts.iter().map(|p| p.count).sum();
        }
        if out.send(Ok(RangeStreamResponse { range_response: Some(chunk) })).await.is_err() || done {
            return Ok(());
        }
        limit = next_chunk_limit(limit, size, target).min(total - sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str) -> KeyValue {
        KeyValue { key: k.into(), ..Default::default() }
    }

    #[test]
    fn the_smallest_key_across_parts_goes_first_and_a_page_says_where_the_next_starts() {
        let mut a = Part { group: 1, buffered: VecDeque::new(), next: None, count: 0 };
        take_page(&mut a, RangeResponse { kvs: vec![kv("b"), kv("d")], more: true, ..Default::default() });
        assert_eq!(a.next.as_deref(), Some(&b"d\0"[..]));
        let mut b = Part { group: 2, buffered: VecDeque::new(), next: None, count: 0 };
        take_page(&mut b, RangeResponse { kvs: vec![kv("a"), kv("c")], more: false, ..Default::default() });
        assert_eq!(b.next, None);
        let mut parts = vec![a, b];
        let mut order = vec![];
        while let Some(i) = smallest(&parts) {
            order.push(String::from_utf8(parts[i].buffered.pop_front().unwrap().key).unwrap());
        }
        assert_eq!(order, ["a", "b", "c", "d"]);
    }
}
