use crate::locks::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tessera_proto::mvccpb::Event;
use tokio::sync::watch;

/// The events of one applied txn (all share `rev`).
#[derive(Debug)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

struct Ring {
    batches: VecDeque<Arc<RevEvents>>,
    /// Approximate bytes held (keys and values dominate).
    bytes: usize,
    /// Every event with revision >= this is in the ring.
    covered_from: i64,
}

pub struct WatchHub {
    ring: Mutex<Ring>,
    capacity: usize,
    rev: watch::Sender<i64>,
}

impl WatchHub {
    /// `capacity`: bytes of recent events to keep in memory.
    pub fn new(current_rev: i64, capacity: usize) -> Self {
        Self {
            ring: Mutex::leaf(
                "watch ring",
                Ring { batches: VecDeque::new(), bytes: 0, covered_from: current_rev.saturating_add(1) },
            ),
            capacity,
            rev: watch::channel(current_rev).0,
        }
    }

    /// Records one applied txn's events and moves the revision signal.
    pub fn publish(&self, rev: i64, events: Vec<Event>) {
        if !events.is_empty() {
            let mut r = self.ring.lock();
            r.bytes += size_of_events(&events);
            r.batches.push_back(Arc::new(RevEvents { rev, events }));
            while r.bytes > self.capacity && r.batches.len() > 1 {
                let old = r.batches.pop_front().expect("non-empty");
                r.bytes -= size_of_events(&old.events);
                r.covered_from = old.rev + 1;
            }
        }
        self.rev.send_if_modified(|cur| {
            let moved = rev > *cur;
            *cur = (*cur).max(rev);
            moved
        });
    }

    /// Forgets the ring after the state machine was replaced by a snapshot.
    pub fn reset(&self, rev: i64) {
        let mut r = self.ring.lock();
        r.batches.clear();
        r.bytes = 0;
        r.covered_from = rev.saturating_add(1);
        drop(r);
        self.rev.send_replace(rev);
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.rev.subscribe()
    }

    /// The txns with revisions in `[from, to]` if the ring still holds all of
    /// them; None if the caller must read history from the store.
    pub fn recent(&self, from: i64, to: i64) -> Option<Vec<Arc<RevEvents>>> {
        let r = self.ring.lock();
        if from < r.covered_from {
            return None;
        }
        let start = r.batches.partition_point(|b| b.rev < from);
        Some(r.batches.iter().skip(start).take_while(|b| b.rev <= to).cloned().collect())
    }
}

fn size_of_events(events: &[Event]) -> usize {
    events.iter().map(|e| 64 + e.kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event::default()
    }

    #[test]
    fn ring_forgets_oldest_and_says_so() {
        // Three empty events fit (64 bytes of overhead each), four do not.
        let hub = WatchHub::new(10, 3 * 64);
        hub.publish(11, vec![ev(), ev()]);
        hub.publish(12, vec![ev()]);
        assert_eq!(hub.recent(11, 12).map(|v| v.len()), Some(2));
        hub.publish(13, vec![ev()]);
        assert!(hub.recent(11, 13).is_none(), "11 was evicted");
        assert_eq!(hub.recent(12, 13).map(|v| v.iter().map(|b| b.rev).collect::<Vec<_>>()), Some(vec![12, 13]));
        assert_eq!(*hub.subscribe().borrow(), 13);
    }
}
