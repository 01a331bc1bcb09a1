//! Raft messages between members: one long-lived gRPC client stream per
//! peer, fed by a bounded queue. Sending never blocks the driver: a full
//! queue or an unknown peer is reported back at once as unreachable, and a
//! broken stream is reported through the group's mailbox.

use super::Msg;
use crate::locks::{Mutex, RwLock};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::transport::peer_client::PeerClient;
use tessera_proto::tessera::transport::RaftBatch;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Mailboxes of the groups hosted here, by group id.
pub type Mailboxes = Arc<RwLock<HashMap<u64, SyncSender<Msg>>>>;

/// A node's mailbox table (a leaf lock).
pub fn mailboxes() -> Mailboxes {
    Arc::new(RwLock::leaf("mailboxes", HashMap::new()))
}

struct Outgoing {
    group: u64,
    to: u64,
    msgs: Vec<Vec<u8>>,
    snapshot: bool,
}

pub struct GrpcTransport {
    runtime: tokio::runtime::Handle,
    urls: RwLock<HashMap<u64, String>>,
    /// One stream per node (peer URL), shared by every group: replicas of
    /// many groups on the same two nodes batch onto one connection.
    peers: Mutex<HashMap<String, mpsc::Sender<Outgoing>>>,
    mailboxes: Mailboxes,
    dialer: tessera_rpc::tls::Dialer,
}

const PEER_QUEUE: usize = 1024;

impl GrpcTransport {
    pub fn new(runtime: tokio::runtime::Handle, mailboxes: Mailboxes, dialer: tessera_rpc::tls::Dialer) -> Self {
        Self {
            dialer,
            runtime,
            urls: RwLock::leaf("peer urls", HashMap::new()),
            peers: Mutex::leaf("peer streams", HashMap::new()),
            mailboxes,
        }
    }
}

impl super::Transport for GrpcTransport {
    fn set_peer(&self, id: u64, url: String) {
        self.urls.write().insert(id, url);
    }

    /// Queues messages; returns (peer, carried a snapshot) for each peer that
    /// cannot take them now.
    fn send(&self, group: u64, msgs: Vec<Message>) -> Vec<(u64, bool)> {
        let mut by_peer: HashMap<u64, Outgoing> = HashMap::new();
        for m in msgs {
            let to = m.get_to();
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if snapshot {
                fail::fail_point!("raft::before_snapshot_send");
            }
            let out = by_peer.entry(to).or_insert_with(|| Outgoing { group, to, msgs: vec![], snapshot: false });
            out.snapshot |= snapshot;
            match m.write_to_bytes() {
                Ok(b) => out.msgs.push(b),
                Err(e) => tracing::error!(error = %e, "cannot encode raft message"),
            }
        }
        let mut failed = vec![];
        for (to, out) in by_peer {
            let snapshot = out.snapshot;
            match self.peer(to) {
                Some(tx) if tx.try_send(out).is_ok() => {}
                _ => failed.push((to, snapshot)),
            }
        }
        failed
    }
}

impl GrpcTransport {
    fn peer(&self, id: u64) -> Option<mpsc::Sender<Outgoing>> {
        let url = self.urls.read().get(&id)?.clone();
        let mut peers = self.peers.lock();
        if let Some(tx) = peers.get(&url).filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        self.runtime.spawn(peer_loop(url.clone(), rx, self.mailboxes.clone(), self.dialer.clone()));
        peers.insert(url, tx.clone());
        Some(tx)
    }
}

fn report(mailboxes: &Mailboxes, group: u64, msg: Msg) {
    let mailbox = mailboxes.read().get(&group).cloned();
    if let Some(mb) = mailbox {
        let _ = mb.try_send(msg);
    }
}

/// Keeps one stream to a peer open, reconnecting with backoff.
async fn peer_loop(url: String, mut rx: mpsc::Receiver<Outgoing>, mailboxes: Mailboxes, dialer: tessera_rpc::tls::Dialer) {
    let mut backoff = Duration::from_millis(50);
    // Logged when it changes (a peer still starting, then refusing our
    // certificate), not on every retry.
    let mut last_error = None;
    'connect: loop {
        let channel = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(ep) => dialer.connect(ep.connect_timeout(Duration::from_secs(1))).await,
            Err(e) => {
                tracing::error!(url, error = %e, "bad peer url");
                return;
            }
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                log_if_new(&mut last_error, &url, &e);
                // Tell raft about what could not be delivered meanwhile.
                while let Ok(out) = rx.try_recv() {
                    fail(&mailboxes, &out);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if rx.is_closed() {
                    return;
                }
                continue 'connect;
            }
        };
        backoff = Duration::from_millis(50);
        let up_since = std::time::Instant::now();
        let mut client = PeerClient::new(channel).max_encoding_message_size(usize::MAX);
        let (stx, srx) = mpsc::channel::<RaftBatch>(64);
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(srx)).await });
        while let Some(out) = rx.recv().await {
            let batch = RaftBatch { group_id: out.group, messages: out.msgs.clone() };
            if stx.send(batch).await.is_err() {
                fail(&mailboxes, &out);
                // A connection that stayed up was a recovery: the reason it
                // ends, and any after, is news again, even if it is the one
                // logged before the recovery. (A connection refused at once,
                // say our certificate by a TLS 1.3 peer, is not: that would
                // log on every retry.)
                if up_since.elapsed() >= RECOVERED_AFTER {
                    last_error = None;
                }
                // Where a peer refusing our certificate shows with TLS 1.3
                // (after our side of the handshake was done).
                if let Ok(Err(status)) = call.await {
                    log_if_new(&mut last_error, &url, &status);
                }
                continue 'connect;
            }
            if out.snapshot {
                report(&mailboxes, out.group, Msg::SnapshotStatus { to: out.to, ok: true });
            }
        }
        return;
    }
}

/// How long a peer connection must have carried batches before its end
/// counts as a new failure (logged even for the reason logged before).
const RECOVERED_AFTER: Duration = Duration::from_secs(5);

/// Logs why `url` cannot be reached, unless that was the last reason.
fn log_if_new(last: &mut Option<String>, url: &str, e: &(dyn std::error::Error + 'static)) {
    let error = tessera_rpc::tls::handshake_error(e);
    if last.as_ref() != Some(&error) {
        tracing::warn!(url, error, "cannot reach peer");
        *last = Some(error);
    }
}

fn fail(mailboxes: &Mailboxes, out: &Outgoing) {
    report(mailboxes, out.group, Msg::Unreachable(out.to));
    if out.snapshot {
        report(mailboxes, out.group, Msg::SnapshotStatus { to: out.to, ok: false });
    }
}
