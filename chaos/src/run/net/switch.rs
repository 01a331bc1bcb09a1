//! The packet switch between the namespaces: one thread polls every TUN
//! device, reads IPv4 packets and writes each to the device of the host it
//! is addressed to, applying the link of its (source, destination) pair:
//! drop, random loss, or delay (with jitter; delayed packets wait in a
//! queue ordered by due time, so jitter may reorder them, as networks do).

use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What happens to packets from one host to another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    pub drop: bool,
    /// Probability (0..1) that a packet is lost.
    pub loss: f64,
    pub delay: Duration,
    /// Up to this much more delay, uniformly.
    pub jitter: Duration,
}

impl Link {
    /// Two faults on one link: either drops, losses compound, delays add.
    pub fn combine(self, o: Link) -> Link {
        Link {
            drop: self.drop || o.drop,
            loss: 1.0 - (1.0 - self.loss) * (1.0 - o.loss),
            delay: self.delay + o.delay,
            jitter: self.jitter.max(o.jitter),
        }
    }
}

/// Packets the switch handled over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SwitchStats {
    pub forwarded: u64,
    pub dropped: u64,
    pub lost: u64,
    pub delayed: u64,
}

struct Shared {
    matrix: Mutex<Arc<Vec<Link>>>,
    version: AtomicU64,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    delayed: AtomicU64,
}

pub struct Handle {
    shared: Arc<Shared>,
    wake: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub fn publish(&self, m: Vec<Link>) {
        *self.shared.matrix.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
        self.shared.version.fetch_add(1, Ordering::Release);
        self.wake();
    }

    pub fn stats(&self) -> SwitchStats {
        let s = &self.shared;
        SwitchStats {
            forwarded: s.forwarded.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            delayed: s.delayed.load(Ordering::Relaxed),
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the switch over `ports` (TUN fds), port `i` owning `addrs[i]`.
pub fn start(ports: Vec<OwnedFd>, addrs: Vec<Ipv4Addr>) -> anyhow::Result<Handle> {
    // SAFETY: a fresh eventfd, owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh fd we own.
    let wake = unsafe { OwnedFd::from_raw_fd(fd) };
    let n = ports.len();
    let shared = Arc::new(Shared {
        matrix: Mutex::new(Arc::new(vec![Link::default(); n * n])),
        version: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        forwarded: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        delayed: AtomicU64::new(0),
    });
    let wake_fd = wake.as_raw_fd();
    let sh = shared.clone();
    let thread = std::thread::Builder::new()
        .name("chaos-switch".into())
        .spawn(move || Switch { ports, addrs, shared: sh, wake_fd, queue: BinaryHeap::new(), seq: 0, rng: 0x2545_F491 }.run())?;
    Ok(Handle { shared, wake, thread: Some(thread) })
}

/// A delayed packet, ordered by due time (then arrival, so equal delays keep order).
struct Delayed {
    due: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    // Reversed: BinaryHeap is a max-heap and the earliest is wanted first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

struct Switch {
    ports: Vec<OwnedFd>,
    addrs: Vec<Ipv4Addr>,
    shared: Arc<Shared>,
    wake_fd: i32,
    queue: BinaryHeap<Delayed>,
    seq: u64,
    rng: u64,
}

impl Switch {
    fn run(mut self) {
        let n = self.ports.len();
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .map(|p| p.as_raw_fd())
            .chain([self.wake_fd])
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let mut buf = vec![0u8; 65536];
        let mut version = u64::MAX;
        let mut matrix = Arc::new(Vec::new());
        while !self.shared.stop.load(Ordering::Acquire) {
            let timeout = self
                .queue
                .peek()
                .map_or(200, |d| d.due.saturating_duration_since(Instant::now()).as_millis().min(200) as i32 + 1);
            // SAFETY: pollfds we own, for the length given.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(error = %std::io::Error::last_os_error(), "switch poll failed");
                return;
            }
            let v = self.shared.version.load(Ordering::Acquire);
            if v != version {
                version = v;
                matrix = self.shared.matrix.lock().unwrap_or_else(|p| p.into_inner()).clone();
            }
            if fds[n].revents != 0 {
                let mut drain = [0u8; 8];
                // SAFETY: reading the eventfd's 8-byte counter into a local buffer.
                unsafe { libc::read(self.wake_fd, drain.as_mut_ptr().cast(), 8) };
            }
            let ready: Vec<(usize, i32)> =
                fds[..n].iter().enumerate().filter(|(_, p)| p.revents != 0).map(|(i, p)| (i, p.fd)).collect();
            for (from, fd) in ready {
                // Bounded per wakeup so one busy host cannot starve the others.
                for _ in 0..256 {
                    // SAFETY: reading into our buffer, within its length.
                    let len = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if len <= 0 {
                        break;
                    }
                    self.route(from, &buf[..len as usize], &matrix);
                }
            }
            self.flush_due();
        }
    }

    fn route(&mut self, from: usize, packet: &[u8], matrix: &[Link]) {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return;
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let Some(to) = self.addrs.iter().position(|a| *a == dst) else {
            return;
        };
        let n = self.ports.len();
        let link = matrix.get(from * n + to).copied().unwrap_or_default();
        if link.drop {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if link.loss > 0.0 && self.uniform() < link.loss {
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut delay = link.delay;
        if !link.jitter.is_zero() {
            delay += link.jitter.mul_f64(self.uniform());
        }
        if delay.is_zero() {
            self.send(to, packet);
        } else {
            self.shared.delayed.fetch_add(1, Ordering::Relaxed);
            self.seq += 1;
            self.queue.push(Delayed { due: Instant::now() + delay, seq: self.seq, to, packet: packet.to_vec() });
        }
    }

    fn flush_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|d| d.due <= now) {
            if let Some(d) = self.queue.pop() {
                self.send(d.to, &d.packet);
            }
        }
    }

    fn send(&self, to: usize, packet: &[u8]) {
        // SAFETY: writing one whole packet from our buffer to a TUN fd we own.
        let rc = unsafe { libc::write(self.ports[to].as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if rc > 0 {
            self.shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Uniform in [0, 1) (xorshift; the switch's choices need not replay).
    fn uniform(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
