//! The call-with-retry and bumps against one fake group: what a call does
//! with its deadline (each attempt carries what is left; retries stop at
//! it; the answer is etcd's deadline error) and how bumps share a call.

use super::*;
use crate::deadline::Deadline;
use shardmap::map::{GroupInfo, NodeInfo, Replica};
use shardmap::ShardMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::ResponseHeader;
use tessera_proto::tessera::command::{MoveRelease, MoveStage, MoveTarget, TxnAbort, TxnCommit, TxnPrepare};
use tessera_proto::tessera::shard::shard_server::{Shard, ShardServer};
use tessera_proto::tessera::shard::*;
use tessera_rpc::{Error, Refusal};
use tonic::{Code, Response, Status};

const GROUP: u64 = 1;

/// A map with `GROUP` on `replicas` nodes, all at `url`.
fn backends(url: &str, replicas: usize) -> Arc<Backends> {
    let mut map = ShardMap { epoch: 1, ..Default::default() };
    let mut group = GroupInfo { id: GROUP, replicas: vec![] };
    for i in 0..replicas {
        let name = format!("n{i}");
        map.nodes.insert(name.clone(), NodeInfo { name: name.clone(), peer_url: url.into(), client_url: url.into() });
        group.replicas.push(Replica { node: name, member_id: i as u64 + 1, learner: false, initial: true });
    }
    map.groups.insert(GROUP, group);
    // The map never changes: its last value stays readable with the sender gone.
    let (_, rx) = tokio::sync::watch::channel(Some(Arc::new(map.routing())));
    Backends::new(1, rx, tessera_rpc::oracle::OracleClient::new(vec![], Default::default()), Default::default())
}

/// The `grpc-timeout` a request carries, as a duration.
fn timeout_of<T>(req: &Request<T>) -> Duration {
    let v = req.metadata().get("grpc-timeout").expect("a call carries a timeout").to_str().unwrap();
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

#[tokio::test]
async fn each_attempt_carries_what_is_left_of_the_deadline() {
    let b = backends("http://127.0.0.1:1", 1);
    let seen = parking_lot::Mutex::new(vec![]);
    let got = b
        .call(GROUP, Access::Write, Deadline::after(Duration::from_millis(800)), (), |_, req| {
            seen.lock().push(timeout_of(&req));
            async { Ok(Response::new(5)) }
        })
        .await;
    assert_eq!(got.unwrap(), 5);
    let seen = seen.lock();
    assert!(seen.len() == 1 && seen[0] <= Duration::from_millis(800) && seen[0] > Duration::from_millis(500), "{seen:?}");
}

#[tokio::test]
async fn a_read_is_retried_until_the_deadline_then_answers_etcds_deadline_error() {
    let b = backends("http://127.0.0.1:1", 2);
    let tries = AtomicU32::new(0);
    let started = Instant::now();
    let err = b
        .call(GROUP, Access::Read, Deadline::after(Duration::from_millis(300)), (), |_, _| {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err::<Response<()>, _>(Status::unavailable("etcdserver: leader changed")) }
        })
        .await
        .unwrap_err();
    assert_eq!(Error::from_status(&err), Some(Error::DeadlineExceeded), "{err:?}");
    assert!(tries.load(Ordering::Relaxed) > 2, "both replicas, more than once");
    assert!(started.elapsed() < Duration::from_secs(2), "not the old 15 s budget: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_write_that_may_have_arrived_is_sent_once() {
    let b = backends("http://127.0.0.1:1", 2);
    let tries = AtomicU32::new(0);
    let err = b
        .call(GROUP, Access::Write, Deadline::after(Duration::from_secs(5)), (), |_, _| {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err::<Response<()>, _>(Status::unavailable("connection reset")) }
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), tries.load(Ordering::Relaxed)), (Code::Unavailable, 1));
}

#[tokio::test]
async fn a_write_refused_before_proposing_goes_to_the_next_replica() {
    let b = backends("http://127.0.0.1:1", 2);
    let tries = AtomicU32::new(0);
    let got = b
        .call(GROUP, Access::Write, Deadline::after(Duration::from_secs(5)), (), |_, _| {
            let first = tries.fetch_add(1, Ordering::Relaxed) == 0;
            async move {
                if first {
                    return Err(Error::Refused(Refusal::NotHosted { group: GROUP }).into());
                }
                Ok(Response::new(()))
            }
        })
        .await;
    assert!(got.is_ok());
    assert_eq!(tries.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_call_still_in_flight_at_the_deadline_is_cut_off() {
    let b = backends("http://127.0.0.1:1", 1);
    let started = Instant::now();
    let err = b
        .call(GROUP, Access::Write, Deadline::after(Duration::from_millis(100)), (), |_, _| {
            std::future::pending::<Result<Response<()>, Status>>()
        })
        .await
        .unwrap_err();
    assert_eq!(Error::from_status(&err), Some(Error::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A group that bumps slowly and counts the bumps it was asked for.
#[derive(Clone, Default)]
struct SlowGroup {
    bumps: Arc<AtomicU32>,
    timeouts: Arc<parking_lot::Mutex<Vec<Duration>>>,
}

const BUMP_TAKES: Duration = Duration::from_millis(200);

#[tonic::async_trait]
impl Shard for SlowGroup {
    async fn bump(&self, req: Request<BumpRequest>) -> Result<Response<BumpResponse>, Status> {
        self.bumps.fetch_add(1, Ordering::Relaxed);
        self.timeouts.lock().push(timeout_of(&req));
        tokio::time::sleep(BUMP_TAKES).await;
        let header = ResponseHeader { revision: req.get_ref().revision, ..Default::default() };
        Ok(Response::new(BumpResponse { header: Some(header) }))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Err(Status::unimplemented("stats"))
    }

    async fn fence(&self, _req: Request<FenceRequest>) -> Result<Response<FenceResponse>, Status> {
        Err(Status::unimplemented("fence"))
    }

    async fn install_auth(
        &self,
        _req: Request<tessera_proto::tessera::command::AuthState>,
    ) -> Result<Response<tessera_proto::tessera::shard::InstallAuthResponse>, Status> {
        Err(Status::unimplemented("auth"))
    }

    async fn txn_prepare(&self, _req: Request<TxnPrepare>) -> Result<Response<TxnPrepareResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    async fn txn_commit(&self, _req: Request<TxnCommit>) -> Result<Response<TxnCommitResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    async fn txn_abort(&self, _req: Request<TxnAbort>) -> Result<Response<TxnAbortResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    async fn export(&self, _req: Request<ExportRequest>) -> Result<Response<ExportResponse>, Status> {
        Err(Status::unimplemented("moves"))
    }

    async fn move_stage(&self, _req: Request<MoveStage>) -> Result<Response<MoveStageResponse>, Status> {
        Err(Status::unimplemented("moves"))
    }

    async fn move_target(&self, _req: Request<MoveTarget>) -> Result<Response<MoveTargetResponse>, Status> {
        Err(Status::unimplemented("moves"))
    }

    async fn move_release(&self, _req: Request<MoveRelease>) -> Result<Response<MoveReleaseResponse>, Status> {
        Err(Status::unimplemented("moves"))
    }

    async fn units(&self, _req: Request<UnitsRequest>) -> Result<Response<UnitsResponse>, Status> {
        Err(Status::unimplemented("units"))
    }
}

async fn serve(group: SlowGroup) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(ShardServer::new(group)).serve_with_incoming(incoming));
    url
}

#[tokio::test]
async fn concurrent_bumps_of_a_group_share_one_call_and_a_passed_revision_costs_none() {
    let group = SlowGroup::default();
    let b = backends(&serve(group.clone()).await, 1);
    let deadline = Deadline::after(Duration::from_secs(5));
    let all = futures::future::join_all((0..10).map(|_| b.bump(GROUP, 5, deadline))).await;
    assert!(all.iter().all(|r| r.as_ref().ok() == Some(&5)), "{all:?}");
    assert_eq!(group.bumps.load(Ordering::Relaxed), 1);
    assert_eq!(b.bump(GROUP, 3, deadline).await.unwrap(), 5);
    assert_eq!(group.bumps.load(Ordering::Relaxed), 1, "5 was passed already");
    let sent = group.timeouts.lock()[0];
    assert!(sent <= Duration::from_secs(5) && sent > Duration::from_secs(4), "the bump carries the caller's deadline: {sent:?}");
}

#[tokio::test]
async fn a_bump_whose_caller_runs_out_of_time_leaves_the_others_to_bump_on_their_own() {
    let group = SlowGroup::default();
    let b = backends(&serve(group.clone()).await, 1);
    // Connected first, so that the hurried call surely reaches the group in its time.
    b.bump(GROUP, 1, Deadline::after(Duration::from_secs(5))).await.unwrap();
    let hurried = b.bump(GROUP, 5, Deadline::after(BUMP_TAKES / 4));
    let patient = async {
        tokio::time::sleep(Duration::from_millis(10)).await; // joins the hurried one's call
        b.bump(GROUP, 5, Deadline::after(Duration::from_secs(5))).await
    };
    let (hurried, patient) = tokio::join!(hurried, patient);
    assert_eq!(Error::from_status(&hurried.unwrap_err()), Some(Error::DeadlineExceeded));
    assert_eq!(patient.unwrap(), 5);
    assert_eq!(group.bumps.load(Ordering::Relaxed), 1 + 2, "the patient caller bumped again");
}
