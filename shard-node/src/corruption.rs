//! Corruption checks (etcd's initial and periodic corrupt checks): members
//! with the same history must have the same HashKV at the same revision.
//! A member whose data diverges refuses to start, or, found by the
//! leader's periodic check, is marked with a CORRUPT alarm that stops writes
//! everywhere and reads on that member, instead of serving divergent data.

use crate::error::{Error, Result};
use crate::group::Group;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::alarm_request::AlarmAction;
use tessera_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tessera_proto::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest};
use tessera_proto::tessera::command::command::Op;

/// Members (other than this one) whose hash at revision `rev` differs
/// from ours, with the same compaction. Members that cannot answer (down,
/// not yet at `rev`, compacted past it) are skipped.
pub async fn mismatched_peers(group: &Group, rev: i64) -> Result<Vec<u64>> {
    // Nothing stored yet (a joining member): nothing to compare, and
    // HashKV at revision 0 would mean "your current revision".
    if rev == 0 {
        return Ok(vec![]);
    }
    let (mine, _, compact) = group.sm.hash_kv(rev)?;
    let peers: Vec<(u64, String)> = group
        .sm
        .members()
        .all()
        .filter(|m| m.id != group.member_id)
        .filter_map(|m| m.client_urls.first().map(|u| (m.id, u.clone())))
        .collect();
    let mut bad = vec![];
    for (id, url) in peers {
        let resp = async {
            // Peers starting at the same time accept connections before
            // they serve: never wait on one for long.
            let ep = tonic::transport::Endpoint::from_shared(url)?.connect_timeout(PEER_TIMEOUT).timeout(PEER_TIMEOUT);
            let mut c = MaintenanceClient::new(group.settings.dialer.connect(ep).await?);
            anyhow::Ok(c.hash_kv(group.request(HashKvRequest { revision: rev })).await?.into_inner())
        }
        .await;
        match resp {
            Ok(r) if r.compact_revision == compact && r.hash != mine => bad.push(id),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(peer = format!("{id:x}"), error = %e, "corruption check skipped a peer")
            }
        }
    }
    Ok(bad)
}

/// At start: refuse to serve data that differs from every peer's.
pub async fn initial_check(group: &Group) -> Result<()> {
    let bad = mismatched_peers(group, group.sm.current_revision()).await?;
    let peers = group.sm.members().ids().len().saturating_sub(1);
    if !bad.is_empty() && bad.len() == peers {
        return Err(Error::Internal(format!(
            "found data inconsistency with peers {:x?} at revision {}: not serving",
            bad,
            group.sm.current_revision()
        )));
    }
    Ok(())
}

const FOLLOWER_GRACE: Duration = Duration::from_millis(500);
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// On the leader, every `every`: raises CORRUPT for members that diverge.
pub async fn run_periodic(group: Arc<Group>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !group.status().is_leader {
            continue;
        }
        // Followers trail the leader a little: compare at a revision they
        // have had a moment to apply.
        let rev = group.sm.current_revision();
        tokio::time::sleep(FOLLOWER_GRACE).await;
        let bad = match mismatched_peers(&group, rev).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "corruption check failed");
                continue;
            }
        };
        for id in bad {
            tracing::error!(member = format!("{id:x}"), "data inconsistency found: raising CORRUPT");
            let req = AlarmRequest { action: AlarmAction::Activate as i32, member_id: id, alarm: AlarmType::Corrupt as i32 };
            let _ = group.propose(Op::Alarm(req)).await;
        }
    }
}
