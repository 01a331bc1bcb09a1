//! The router's view of the groups: the shard map (followed from
//! placement), one lazy gRPC channel per node, leader hints and each
//! group's latest revision (polled), and the call-with-retry every service
//! uses. Requests name their group, the map epoch they were routed by and
//! the highest revision this router has seen (the revision rule).

use parking_lot::{Mutex, RwLock};
use shardmap::map::Routing;
use shardmap::watcher::MapRx;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::{RangeRequest, ResponseHeader};
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::{BumpRequest, StatsRequest};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Clients of a group's services. Their answers are not size-limited: a
/// range or a watch catching up can be far larger than tonic's 4 MiB
/// default (etcd's own client accepts up to 2 GiB too).
pub fn kv_client(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(usize::MAX)
}

pub fn watch_client(ch: Channel) -> WatchClient<Channel> {
    WatchClient::new(ch).max_decoding_message_size(usize::MAX)
}

pub fn lease_client(ch: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(ch).max_decoding_message_size(usize::MAX)
}

/// Which replica of a group a call wants first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Prefer {
    /// Writes and linearizable reads: the leader (any member would forward).
    Leader,
    /// Serializable reads: learners first, then followers, then the leader.
    Learner,
}

/// Which connection to a node a call uses. Long-lived streams (watches,
/// election observes) get their own, so whatever happens to their flow
/// control can never hold up the unary calls (puts waiting behind a watch
/// whose reader fell behind).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lane {
    Calls,
    Streams,
}

pub struct Backends {
    maps: MapRx,
    /// One lazy channel per node URL, for each lane (indexed by `Lane`).
    channels: [Mutex<HashMap<String, Channel>>; 2],
    /// group → leader's node name, from polling.
    leaders: RwLock<HashMap<u64, String>>,
    /// node name → when it last failed a call.
    down: RwLock<HashMap<String, Instant>>,
    max_revision: AtomicI64,
    bumps: Mutex<HashMap<u64, GroupBumps>>,
    /// Every group answered (through some replica, with a leader) in the last poll.
    healthy: std::sync::atomic::AtomicBool,
    pub call_timeout: Duration,
}

type BumpOutcome = tokio::sync::watch::Receiver<Option<Result<i64, Status>>>;

/// One group's revision bumps, as this router knows them.
#[derive(Default)]
struct GroupBumps {
    /// The highest revision a bump answered (a group's revision never goes back).
    reached: i64,
    /// The bump in flight: the revision it asks for and its outcome when done.
    inflight: Option<(i64, BumpOutcome)>,
}

/// Whether a failed call never reached a group's state machine (safe to
/// send again elsewhere, even for a write).
fn not_delivered(s: &Status) -> bool {
    let m = s.message();
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
        && (m.contains("tcp connect")
            || m.contains("onnection refused")
            || m.contains("is not hosted here")
            || m.contains("error trying to connect"))
}

/// The map epoch a group refused the call for (it was routed by an older
/// map and touched a prefix that group is handing to another).
pub fn epoch_not_match(s: &Status) -> Option<u64> {
    s.metadata().get(shardmap::CURRENT_EPOCH_HEADER)?.to_str().ok()?.parse().ok()
}

/// Whether trying the same group again may succeed (reads only).
fn transient(s: &Status) -> bool {
    not_delivered(s)
        || matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
        || s.message() == "etcdserver: leader changed"
}

impl Backends {
    pub fn new(maps: MapRx) -> Arc<Self> {
        Arc::new(Self {
            maps,
            channels: Default::default(),
            leaders: RwLock::new(HashMap::new()),
            down: RwLock::new(HashMap::new()),
            max_revision: AtomicI64::new(0),
            bumps: Mutex::new(HashMap::new()),
            healthy: std::sync::atomic::AtomicBool::new(false),
            call_timeout: Duration::from_secs(15),
        })
    }

    pub fn routing(&self) -> Result<Arc<Routing>, Status> {
        self.maps.borrow().clone().ok_or_else(|| Status::unavailable("tessera: no shard map from placement yet"))
    }

    pub fn max_revision(&self) -> i64 {
        self.max_revision.load(Ordering::Relaxed)
    }

    pub fn observe(&self, header: Option<&ResponseHeader>) {
        if let Some(h) = header {
            self.max_revision.fetch_max(h.revision, Ordering::Relaxed);
        }
    }

    fn channel(&self, url: &str, lane: Lane) -> Result<Channel, Status> {
        let mut chans = self.channels[lane as usize].lock();
        if let Some(c) = chans.get(url) {
            return Ok(c.clone());
        }
        let ep = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("bad node url {url}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3));
        let c = ep.connect_lazy();
        chans.insert(url.to_string(), c.clone());
        Ok(c)
    }

    /// The replicas of `group` to try, best first: (node name, channel).
    pub fn targets(&self, r: &Routing, group: u64, prefer: Prefer) -> Result<Vec<(String, Channel)>, Status> {
        self.targets_on(r, group, prefer, Lane::Calls)
    }

    /// As `targets`, on the connections of `lane`.
    pub fn targets_on(&self, r: &Routing, group: u64, prefer: Prefer, lane: Lane) -> Result<Vec<(String, Channel)>, Status> {
        let info =
            r.map.groups.get(&group).ok_or_else(|| Status::unavailable(format!("tessera: no group {group} in the map")))?;
        let leader = self.leaders.read().get(&group).cloned();
        let down = self.down.read();
        let recently_down = |n: &str| down.get(n).is_some_and(|t| t.elapsed() < Duration::from_secs(3));
        let mut rs: Vec<_> = info.replicas.iter().collect();
        rs.sort_by_key(|rep| {
            let is_leader = leader.as_deref() == Some(rep.node.as_str());
            let rank = match prefer {
                Prefer::Leader => u8::from(!is_leader) + 2 * u8::from(rep.learner),
                Prefer::Learner => u8::from(!rep.learner) + 2 * u8::from(is_leader),
            };
            (recently_down(&rep.node), rank)
        });
        let mut out = vec![];
        for rep in rs {
            if let Some(n) = r.map.nodes.get(&rep.node) {
                out.push((rep.node.clone(), self.channel(&n.client_url, lane)?));
            }
        }
        Ok(out)
    }

    /// A request to `group` with the router's metadata.
    pub fn request<T>(&self, r: &Routing, group: u64, msg: T) -> Request<T> {
        let mut req = shardmap::group_request(group, msg);
        let md = req.metadata_mut();
        md.insert(shardmap::EPOCH_HEADER, r.epoch().into());
        md.insert(shardmap::REVISION_HEADER, self.max_revision().into());
        req.set_timeout(self.call_timeout);
        req
    }

    /// Calls `group`, trying its replicas in preference order and again
    /// until the deadline while the failure is one that can pass. `write`
    /// calls are retried only when they surely never arrived.
    pub async fn call<T, R, F, Fut>(&self, group: u64, prefer: Prefer, write: bool, msg: T, f: F) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let deadline = Instant::now() + self.call_timeout;
        let mut last = Status::unavailable(format!("tessera: group {group} has no reachable replica"));
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            let r = self.routing()?;
            for (node, ch) in self.targets(&r, group, prefer)? {
                match f(ch, self.request(&r, group, msg.clone())).await {
                    Ok(resp) => return Ok(resp.into_inner()),
                    Err(s) if epoch_not_match(&s).is_some() => return Err(s), // route again (`rerouting`)
                    Err(s) => {
                        let retry = if write { not_delivered(&s) } else { transient(&s) };
                        if !retry {
                            return Err(s);
                        }
                        if not_delivered(&s) {
                            self.down.write().insert(node.clone(), Instant::now());
                        }
                        tracing::debug!(group, node, error = %s, "retrying on another replica");
                        last = s;
                    }
                }
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis((50 * attempt as u64).min(500))).await;
        }
        Err(last)
    }

    /// Waits until this router has map `epoch` (or a newer one).
    pub async fn wait_for_epoch(&self, epoch: u64, deadline: Instant) -> Result<(), Status> {
        let mut maps = self.maps.clone();
        let newer =
            tokio::time::timeout_at(deadline.into(), maps.wait_for(|m| m.as_ref().is_some_and(|r| r.epoch() >= epoch))).await;
        match newer {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Status::unavailable(format!("tessera: shard map epoch {epoch} not received from placement"))),
        }
    }

    /// Runs `f`, which routes by the current map, again each time a group
    /// refuses it for an older map, once this router has that map.
    pub async fn rerouting<R, F, Fut>(&self, f: F) -> Result<R, Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let deadline = Instant::now() + self.call_timeout;
        loop {
            match f().await {
                Err(s) => match epoch_not_match(&s) {
                    Some(epoch) => {
                        crate::metrics::REROUTES.inc();
                        tracing::debug!(epoch, "refused for an older map; waiting for it");
                        self.wait_for_epoch(epoch, deadline).await?;
                    }
                    None => return Err(s),
                },
                ok => return ok,
            }
        }
    }

    /// Raises `group`'s revision (watermark) to at least `rev`; answers its
    /// revision after. Concurrent bumps of a group to no more than one in
    /// flight share it, and one to a revision a past bump already passed
    /// costs nothing (many merged watches wait on the same idle groups).
    pub async fn bump(&self, group: u64, rev: i64) -> Result<i64, Status> {
        loop {
            let (mut done, lead) = {
                let mut bumps = self.bumps.lock();
                let g = bumps.entry(group).or_default();
                if g.reached >= rev {
                    return Ok(g.reached);
                }
                match &g.inflight {
                    Some((target, done)) if *target >= rev => (done.clone(), None),
                    _ => {
                        let (tx, rx) = tokio::sync::watch::channel(None);
                        g.inflight = Some((rev, rx.clone()));
                        (rx, Some(tx))
                    }
                }
            };
            let settle = |done: &BumpOutcome, reached: Option<i64>| {
                let mut bumps = self.bumps.lock();
                let g = bumps.entry(group).or_default();
                g.reached = g.reached.max(reached.unwrap_or(0));
                if g.inflight.as_ref().is_some_and(|(_, d)| d.same_channel(done)) {
                    g.inflight = None;
                }
            };
            if let Some(tx) = lead {
                let r = self.bump_now(group, rev).await;
                tx.send_replace(Some(r.clone()));
                settle(&done, r.as_ref().ok().copied());
                return r;
            }
            let outcome = done.wait_for(Option::is_some).await.map(|o| o.clone());
            match outcome {
                Ok(Some(r)) => return r,
                // Its caller went away mid-bump: bump anew.
                _ => settle(&done, None),
            }
        }
    }

    async fn bump_now(&self, group: u64, rev: i64) -> Result<i64, Status> {
        let resp = self
            .call(group, Prefer::Leader, false, BumpRequest { revision: rev }, |ch, req| async move {
                ShardClient::new(ch).bump(req).await
            })
            .await?;
        self.observe(resp.header.as_ref());
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// The highest revision any of `groups` has reached (a linearizable
    /// probe of each); every answer raises `max_revision`.
    pub async fn current_revision(&self, groups: &[u64]) -> Result<i64, Status> {
        let probe = RangeRequest { key: vec![0], count_only: true, ..Default::default() };
        let answers = futures::future::join_all(
            groups.iter().map(|g| self.call(*g, Prefer::Leader, false, probe.clone(), |ch, r| async move { kv_client(ch).range(r).await })),
        )
        .await;
        let mut max = 0;
        let mut failed = None;
        for a in answers {
            match a {
                Ok(a) => {
                    self.observe(a.header.as_ref());
                    max = max.max(a.header.map_or(0, |h| h.revision));
                }
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(max), Err)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn mark_leader(&self, group: u64, node: String) {
        self.leaders.write().insert(group, node);
    }

    /// Keeps leader hints and revisions fresh (once a second).
    pub async fn poll(self: Arc<Self>) {
        loop {
            if let Ok(r) = self.routing() {
                let mut all_led = !r.map.groups.is_empty();
                for (gid, info) in &r.map.groups {
                    let mut led = false;
                    for rep in &info.replicas {
                        let Some(n) = r.map.nodes.get(&rep.node) else {
                            continue;
                        };
                        let Ok(ch) = self.channel(&n.client_url, Lane::Calls) else {
                            continue;
                        };
                        let mut req = self.request(&r, *gid, StatsRequest {});
                        req.set_timeout(Duration::from_millis(500));
                        match ShardClient::new(ch).stats(req).await {
                            Ok(s) => {
                                let s = s.into_inner();
                                self.observe(s.header.as_ref());
                                if let Some(leader) = info.replicas.iter().find(|x| x.member_id == s.leader) {
                                    self.mark_leader(*gid, leader.node.clone());
                                }
                                led = s.leader != 0;
                                self.down.write().remove(&rep.node);
                                break; // one answer per group is enough
                            }
                            Err(_) => {
                                self.down.write().insert(rep.node.clone(), Instant::now());
                            }
                        }
                    }
                    all_led &= led;
                }
                self.healthy.store(all_led, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
