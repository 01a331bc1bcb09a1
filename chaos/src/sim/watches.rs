//! The simulated watch streams: watches deliver whole revisions in order,
//! progress only when caught up, cancel for compaction, and RequestProgress
//! is answered once every watch of the stream is caught up, as etcd does.

use super::workload::Gen;
use crate::history::{in_range, prefix_end, Bytes, EventKind, Watch, WatchFilter, WatchResponseRecord};

pub(super) struct SimWatch {
    stream: usize,
    id: i64,
    key: Bytes,
    end: Bytes,
    prev_kv: bool,
    filters: Vec<WatchFilter>,
    next_rev: i64,
    canceled: bool,
}

impl Gen {
    pub(super) fn create_watch(
        &mut self,
        stream: usize,
        key: &str,
        prefix: bool,
        start: i64,
        prev_kv: bool,
        filters: Vec<WatchFilter>,
    ) {
        let key: Bytes = key.into();
        let end = match (prefix, key.as_slice()) {
            (true, [0]) => Bytes(vec![0]),
            (true, _) => prefix_end(&key),
            (false, _) => Bytes::default(),
        };
        let id = self.watches.iter().filter(|w| w.stream == stream).count() as i64;
        let w = Watch {
            watch_id: id,
            key: key.clone(),
            range_end: end.clone(),
            start_revision: start,
            prev_kv,
            filters: filters.clone(),
            progress_notify: true,
            created_at: self.time,
            cancel_sent_at: None,
        };
        self.h.watches[stream].watches.push(w);
        let rec = WatchResponseRecord { at: self.time, header_rev: self.store.rev, watch_id: id, created: true, ..empty(id) };
        self.h.watches[stream].responses.push(rec);
        let next_rev = if start > 0 { start } else { self.store.rev + 1 };
        self.watches.push(SimWatch { stream, id, key, end, prev_kv, filters, next_rev, canceled: false });
    }

    pub(super) fn stream_step(&mut self, stream: usize) {
        if self.rng.chance(10) {
            self.h.watches[stream].progress_requests.push(self.time);
            self.requests[stream] += 1;
            return;
        }
        let mine: Vec<usize> =
            (0..self.watches.len()).filter(|&i| self.watches[i].stream == stream && !self.watches[i].canceled).collect();
        let behind: Vec<usize> = mine.iter().copied().filter(|&i| self.watches[i].next_rev <= self.store.rev).collect();
        if behind.is_empty() && self.requests[stream] > 0 {
            self.requests[stream] -= 1;
            let rec = WatchResponseRecord { at: self.time, header_rev: self.store.rev, ..empty(-1) };
            self.h.watches[stream].responses.push(rec);
        } else if let Some(&w) = behind.get(self.rng.below(behind.len() as u64 + 1) as usize) {
            let n = 1 + self.rng.below(3) as usize;
            self.deliver(w, n);
        } else if let Some(&w) = mine.get(self.rng.below(mine.len() as u64 * 4) as usize) {
            if self.watches[w].next_rev > self.store.rev {
                let id = self.watches[w].id;
                let rec = WatchResponseRecord { at: self.time, header_rev: self.store.rev, ..empty(id) };
                self.h.watches[stream].responses.push(rec);
            }
        }
    }

    /// Deliver up to `n` revisions (whole) to a watch, or cancel it if compacted.
    fn deliver(&mut self, w: usize, n: usize) {
        let (stream, id) = (self.watches[w].stream, self.watches[w].id);
        if self.watches[w].next_rev < self.store.compacted {
            self.watches[w].canceled = true;
            let rec = WatchResponseRecord {
                at: self.time,
                header_rev: self.store.rev,
                canceled: true,
                compact_revision: self.store.compacted,
                ..empty(id)
            };
            self.h.watches[stream].responses.push(rec);
            return;
        }
        let sw = &self.watches[w];
        let from = self.store.log.partition_point(|(r, _)| *r < sw.next_rev);
        let mut events = Vec::new();
        let mut next = sw.next_rev;
        for (rev, evs) in self.store.log[from..].iter().take(n) {
            for e in evs {
                let kind_ok = !sw.filters.iter().any(|f| {
                    matches!((f, e.kind), (WatchFilter::NoPut, EventKind::Put) | (WatchFilter::NoDelete, EventKind::Delete))
                });
                if kind_ok && in_range(&sw.key, &sw.end, &e.key) {
                    let mut e = e.clone();
                    if !sw.prev_kv {
                        e.prev = None;
                    }
                    events.push(e);
                }
            }
            next = rev + 1;
        }
        if from >= self.store.log.len() {
            next = self.store.rev + 1;
        }
        self.watches[w].next_rev = next;
        if !events.is_empty() {
            let rec = WatchResponseRecord { at: self.time, header_rev: self.store.rev, events, ..empty(id) };
            self.h.watches[stream].responses.push(rec);
        }
    }

    /// Deliver everything, answer the pending progress requests and report progress on every watch.
    pub(super) fn flush(&mut self, stream: usize) {
        self.time += 1;
        for w in 0..self.watches.len() {
            while self.watches[w].stream == stream && !self.watches[w].canceled && self.watches[w].next_rev <= self.store.rev {
                self.deliver(w, 3);
            }
        }
        for _ in 0..self.requests[stream] {
            let rec = WatchResponseRecord { at: self.time, header_rev: self.store.rev, ..empty(-1) };
            self.h.watches[stream].responses.push(rec);
        }
        for w in self.watches.iter().filter(|w| w.stream == stream && !w.canceled) {
            let rec = WatchResponseRecord { at: self.time, header_rev: self.store.rev, ..empty(w.id) };
            self.h.watches[stream].responses.push(rec);
        }
    }
}

fn empty(watch_id: i64) -> WatchResponseRecord {
    WatchResponseRecord {
        at: 0,
        header_rev: 0,
        watch_id,
        created: false,
        events: Vec::new(),
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
    }
}
