//! The system's network, when the run owns it: every process (and the
//! runner's clients) in a network namespace of its own, with one TUN
//! device and one address 10.77.0.x, all joined by a packet switch in this
//! process (`switch`). Faults are rules of the switch per directed pair of
//! hosts: drop (partitions, one-way cuts), loss and delay.
//!
//! Why namespaces and a userspace switch: the kernel here has no netem
//! (no delay), and a TCP proxy per (client, server) pair cannot tell who
//! connects once processes learn each other's addresses from placement.
//! Every packet between two namespaces passes the switch, so any pair can
//! be cut, either way, and delayed.
//!
//! Nothing outlives the run: a namespace lives while its fd (held here) or
//! a process in it does, a TUN device while its fd does, and every process
//! of the system dies with the runner (PR_SET_PDEATHSIG). No named
//! namespace, bridge, route or firewall rule is created on the host.

mod switch;

pub use switch::{Link, SwitchStats};

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// The TUN device's name inside every namespace.
const DEVICE: &str = "chaos0";
/// Large frames: TCP segments of up to ~64 KiB cross the switch as one packet.
const MTU: i32 = 65000;

/// One namespace: a process of the system, or the runner's clients.
pub struct Host {
    pub name: String,
    pub addr: Ipv4Addr,
    ns: OwnedFd,
}

/// Which fault set which links (faults may overlap; their links combine).
#[derive(Default)]
struct Rules {
    by_fault: BTreeMap<u64, Vec<(usize, usize, Link)>>,
}

pub struct Network {
    pub hosts: Vec<Host>,
    rules: Mutex<Rules>,
    switch: switch::Handle,
}

/// Whether this machine lets the run build namespaces (root, /dev/net/tun).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    root && std::path::Path::new("/dev/net/tun").exists()
}

impl Network {
    /// A namespace per name, addresses 10.77.0.1, .2, ... in order.
    pub fn new(names: &[String]) -> anyhow::Result<Network> {
        if names.len() > 250 {
            bail!("too many hosts");
        }
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let addr = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            let (ns, tun) = namespace(addr).with_context(|| format!("network namespace for {name}"))?;
            hosts.push(Host { name: name.clone(), addr, ns });
            ports.push(tun);
        }
        let switch = switch::start(ports, hosts.iter().map(|h| h.addr).collect())?;
        Ok(Network { hosts, rules: Mutex::default(), switch })
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    /// The namespace fd of host `i`, for `enter_raw` in a child before exec.
    pub fn ns_fd(&self, i: usize) -> RawFd {
        self.hosts[i].ns.as_raw_fd()
    }

    /// Moves the calling thread into host `i`'s namespace: sockets it
    /// creates from now on live there (threads it spawns inherit it).
    pub fn enter(&self, i: usize) -> std::io::Result<()> {
        enter_raw(self.ns_fd(i))
    }

    /// Sets the links of fault `id` (replacing what it set before).
    pub fn set(&self, id: u64, links: Vec<(usize, usize, Link)>) {
        let mut r = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        r.by_fault.insert(id, links);
        self.publish(&r);
    }

    /// Removes the links of fault `id`.
    pub fn clear(&self, id: u64) {
        let mut r = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        r.by_fault.remove(&id);
        self.publish(&r);
    }

    fn publish(&self, r: &Rules) {
        let n = self.hosts.len();
        let mut m = vec![Link::default(); n * n];
        for &(a, b, l) in r.by_fault.values().flatten() {
            if a < n && b < n {
                m[a * n + b] = m[a * n + b].combine(l);
            }
        }
        self.switch.publish(m);
    }

    pub fn stats(&self) -> SwitchStats {
        self.switch.stats()
    }
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread (async-signal-safe, so
/// also usable between fork and exec).
pub fn enter_raw(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on an fd we own; it only changes this thread's namespace.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new namespace holding a TUN device with `addr`/16, lo up. Built on a
/// thread of its own, as unshare moves the calling thread.
fn namespace(addr: Ipv4Addr) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    std::thread::spawn(move || -> anyhow::Result<(OwnedFd, OwnedFd)> {
        // SAFETY: unshare only changes this (short-lived) thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET) (needs root)");
        }
        let ns = open("/proc/thread-self/ns/net", libc::O_RDONLY)?;
        let tun = open("/dev/net/tun", libc::O_RDWR | libc::O_NONBLOCK)?;
        let mut req = ifreq(DEVICE);
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF with a valid ifreq on the tun fd.
        check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut req) }).context("TUNSETIFF")?;
        configure(addr).context("configuring the namespace's interfaces")?;
        Ok((ns, tun))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// lo up; the TUN device up with `addr`/16 and a large MTU (the kernel
/// adds the route to 10.77.0.0/16 through it).
fn configure(addr: Ipv4Addr) -> anyhow::Result<()> {
    // SAFETY: a plain datagram socket for interface ioctls, closed by OwnedFd.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(s)?;
    // SAFETY: a fresh fd we own.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    up(&s, "lo")?;
    let mut req = ifreq(DEVICE);
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    // SAFETY: SIOCSIFADDR / SIOCSIFNETMASK / SIOCSIFMTU with a valid ifreq.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFADDR as _, &req) }).context("SIOCSIFADDR")?;
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 0, 0));
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFNETMASK as _, &req) }).context("SIOCSIFNETMASK")?;
    req.ifr_ifru.ifru_mtu = MTU;
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU as _, &req) }).context("SIOCSIFMTU")?;
    up(&s, DEVICE)
}

fn up(s: &OwnedFd, dev: &str) -> anyhow::Result<()> {
    let mut req = ifreq(dev);
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS with a valid ifreq.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) }).context("SIOCGIFFLAGS")?;
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) }).with_context(|| format!("{dev} up"))?;
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(a).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn open(path: &str, flags: i32) -> anyhow::Result<OwnedFd> {
    let c = std::ffi::CString::new(path)?;
    // SAFETY: a NUL-terminated path; the fd is owned by OwnedFd.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    check(fd).with_context(|| format!("open {path}"))?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: i32) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Shared so faults (on the runtime) and the cluster (restarts) can reach it.
pub type SharedNetwork = Arc<Network>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Two namespaces talk through the switch; a one-way cut stops it, healing resumes it.
    #[test]
    fn switch_forwards_and_cuts() {
        if !available() {
            eprintln!("skipped: needs root and /dev/net/tun");
            return;
        }
        let net = Arc::new(Network::new(&["a".into(), "b".into()]).unwrap());
        let n = net.clone();
        let server = std::thread::spawn(move || {
            n.enter(0).unwrap();
            let l = std::net::TcpListener::bind("10.77.0.1:7000").unwrap();
            let (mut s, from) = l.accept().unwrap();
            assert_eq!(from.ip().to_string(), "10.77.0.2");
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
            s
        });
        std::thread::sleep(Duration::from_millis(50));
        net.enter(1).unwrap();
        let mut c = std::net::TcpStream::connect("10.77.0.1:7000").unwrap();
        c.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        let _s = server.join().unwrap();
        net.set(1, vec![(1, 0, Link { drop: true, ..Link::default() })]);
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let _ = c.write_all(b"again");
        assert!(c.read(&mut b).is_err(), "cut link still delivered");
        net.clear(1);
        assert!(net.stats().forwarded > 4 && net.stats().dropped > 0);
    }
}
