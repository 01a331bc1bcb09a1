//! Hybrid logical clock for revision hints: physical milliseconds in the
//! high bits, a counter in the low 16, never going backwards and raised past
//! every revision this member has seen. Revisions thereby follow real time
//! (up to clock skew) across the groups of a federation.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;

pub struct Hlc {
    last: AtomicI64,
    enabled: bool,
}

impl Hlc {
    /// A disabled clock hints 0: revisions are then plain etcd counters.
    pub fn new(enabled: bool) -> Self {
        Self { last: AtomicI64::new(0), enabled }
    }

    pub fn now(&self) -> i64 {
        if !self.enabled {
            return 0;
        }
        let phys = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0) << LOGICAL_BITS;
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = phys.max(cur + 1);
            match self.last.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Moves the clock past a revision seen elsewhere.
    pub fn observe(&self, rev: i64) {
        if self.enabled {
            self.last.fetch_max(rev, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increases_and_follows_observed() {
        let c = Hlc::new(true);
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        c.observe(b + (1 << 40));
        assert!(c.now() > b + (1 << 40));
        assert_eq!(Hlc::new(false).now(), 0);
    }
}
