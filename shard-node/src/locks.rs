//! The lock hierarchy of a shard-node, enforced by the types that hand out
//! guards.
//!
//! Levels, outermost first:
//! 1. `State`: a group's replicated state (MVCC index, lease table,
//!    members, alarms, fences) — one lock, taken exclusively by the applier
//!    for one raft entry at a time and shared by readers.
//! 2. `Liveness`: a group's lease expiry clock (leader only, not
//!    replicated), taken under `State` by the applier (a grant starts its
//!    clock) and by keepalive/TimeToLive after reading the lease table.
//! 3. `Leaf`: every other lock (proposal waiters, raft status, the watch
//!    ring, the raft log's cache, the transport's tables, the node's
//!    replica table). Nothing else is taken while one is held.
//!
//! A thread may only take a lock of a level greater than every level it
//! holds, so no two threads can wait on each other: the deadlock that hung
//! a node (the applier holding the store waiting for the lessor while both
//! runtime workers held the lessor waiting for the store) cannot be
//! written. Debug builds check every acquisition against the locks the
//! thread holds and panic at the first violation, timing or not; guards
//! are `!Send`, so none can be held across an `.await` in a spawned task.
//! With the `deadlock-detection` feature, parking_lot's detector also runs
//! (`start_deadlock_checker`) and aborts the process on a cycle.

use std::ops::{Deref, DerefMut};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    State = 1,
    Liveness = 2,
    Leaf = 3,
}

#[cfg(debug_assertions)]
mod held {
    use super::Level;
    use std::cell::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<(Level, &'static str)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn enter(level: Level, name: &'static str) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some((l, n)) = h.iter().find(|(l, _)| *l >= level) {
                let (l, n) = (*l, *n);
                drop(h);
                panic!("lock order violation: taking {name} ({level:?}) while holding {n} ({l:?})");
            }
            h.push((level, name));
        });
    }

    pub fn exit(name: &'static str) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|(_, n)| *n == name) {
                h.remove(i);
            }
        });
    }
}

/// Records (in debug builds) that this thread holds a lock while it lives.
struct Held(#[cfg(debug_assertions)] &'static str);

impl Held {
    fn enter(_level: Level, _name: &'static str) -> Held {
        #[cfg(debug_assertions)]
        {
            held::enter(_level, _name);
            Held(_name)
        }
        #[cfg(not(debug_assertions))]
        Held()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::exit(self.0);
    }
}

/// A reader-writer lock at a level of the hierarchy.
pub struct RwLock<T> {
    level: Level,
    name: &'static str,
    inner: parking_lot::RwLock<T>,
}

pub struct ReadGuard<'a, T> {
    guard: parking_lot::RwLockReadGuard<'a, T>,
    _held: Held,
}

pub struct WriteGuard<'a, T> {
    guard: parking_lot::RwLockWriteGuard<'a, T>,
    _held: Held,
}

impl<T> RwLock<T> {
    pub const fn new(level: Level, name: &'static str, value: T) -> Self {
        Self { level, name, inner: parking_lot::RwLock::new(value) }
    }

    pub fn read(&self) -> ReadGuard<'_, T> {
        let held = Held::enter(self.level, self.name);
        ReadGuard { guard: self.inner.read(), _held: held }
    }

    pub fn write(&self) -> WriteGuard<'_, T> {
        let held = Held::enter(self.level, self.name);
        WriteGuard { guard: self.inner.write(), _held: held }
    }
}

/// A mutex at a level of the hierarchy.
pub struct Mutex<T> {
    level: Level,
    name: &'static str,
    inner: parking_lot::Mutex<T>,
}

pub struct MutexGuard<'a, T> {
    guard: parking_lot::MutexGuard<'a, T>,
    _held: Held,
}

impl<T> Mutex<T> {
    pub const fn new(level: Level, name: &'static str, value: T) -> Self {
        Self { level, name, inner: parking_lot::Mutex::new(value) }
    }

    /// A leaf mutex: nothing may be locked while it is held.
    pub const fn leaf(name: &'static str, value: T) -> Self {
        Self::new(Level::Leaf, name, value)
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        let held = Held::enter(self.level, self.name);
        MutexGuard { guard: self.inner.lock(), _held: held }
    }
}

impl<T> RwLock<T> {
    /// A leaf lock: nothing may be locked while it is held.
    pub const fn leaf(name: &'static str, value: T) -> Self {
        Self::new(Level::Leaf, name, value)
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Starts parking_lot's deadlock detector (with the `deadlock-detection`
/// feature; a no-op without): a thread that checks every second and, on a
/// cycle, prints every deadlocked thread's stack and aborts the process,
/// so the test that ran into it fails loudly instead of hanging.
pub fn start_deadlock_checker() {
    #[cfg(feature = "deadlock-detection")]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            std::thread::Builder::new()
                .name("deadlock-check".into())
                .spawn(|| loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    let cycles = parking_lot::deadlock::check_deadlock();
                    if cycles.is_empty() {
                        continue;
                    }
                    for (i, threads) in cycles.iter().enumerate() {
                        for t in threads {
                            eprintln!("deadlock {i}: thread {:?}\n{:?}", t.thread_id(), t.backtrace());
                        }
                    }
                    eprintln!("deadlock detected: aborting");
                    std::process::abort();
                })
                .expect("deadlock checker thread");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hierarchy_allows_taking_locks_inwards() {
        let state = RwLock::new(Level::State, "state", 1);
        let live = Mutex::new(Level::Liveness, "liveness", 2);
        let leaf = Mutex::leaf("leaf", 3);
        let s = state.write();
        let l = live.lock();
        let x = leaf.lock();
        assert_eq!(*s + *l + *x, 6);
        drop((x, l, s));
        // Released: any order again.
        let _x = leaf.lock();
    }

    /// The two orders the deadlocked node took (applier: store then lessor;
    /// TimeToLive: lessor then store) cannot both be written: the second
    /// panics at once, whatever the timing.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violation: taking state (State) while holding liveness (Liveness)")]
    fn the_old_deadlock_order_is_caught() {
        let state = RwLock::new(Level::State, "state", ());
        let live = Mutex::new(Level::Liveness, "liveness", ());
        {
            let _s = state.write();
            let _l = live.lock();
        }
        let _l = live.lock();
        let _s = state.read();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violation")]
    fn two_leaves_never_nest() {
        let a = Mutex::leaf("a", ());
        let b = RwLock::leaf("b", ());
        let _a = a.lock();
        let _b = b.read();
    }
}
