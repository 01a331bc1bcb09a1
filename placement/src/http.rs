//! The admin API as JSON over HTTP: each route decodes its request, calls
//! one `Placement` operation and encodes the answer or the error (status
//! from its kind, body `ErrorBody`).

use crate::api::{
    ErrorBody, GroupAddRequest, GroupDrainRequest, InitRequest, LearnerAddRequest, MergeRequest, MoveCancelRequest, MoveRequest,
    PinRequest, RebalanceRequest, RingJoinRequest, SplitRequest, SpreadRequest,
};
use crate::error::{ErrorKind, PlacementError};
use crate::ops::Placement;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Serialize;

fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for PlacementError {
    fn into_response(self) -> Response {
        (status_of(self.kind), Json(ErrorBody { error: self.message, kind: self.kind })).into_response()
    }
}

fn reply<T: Serialize>(r: Result<T, PlacementError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The admin API's routes over `placement`.
pub fn routes(placement: Placement) -> Router {
    Router::new()
        .route("/tessera/v1/map", get(|State(p): State<Placement>| async move { reply(p.map().await) }))
        .route(
            "/tessera/v1/init",
            post(|State(p): State<Placement>, Json(r): Json<InitRequest>| async move { reply(p.init(&r).await) }),
        )
        .route(
            "/tessera/v1/groups",
            post(|State(p): State<Placement>, Json(r): Json<GroupAddRequest>| async move { reply(p.add_group(&r).await) }),
        )
        .route(
            "/tessera/v1/groups/{id}",
            delete(|State(p): State<Placement>, Path(group): Path<u64>| async move { reply(p.remove_group(group).await) }),
        )
        .route(
            "/tessera/v1/groups/{id}/drain",
            post(|State(p): State<Placement>, Path(group): Path<u64>, body: Option<Json<GroupDrainRequest>>| async move {
                reply(p.drain_group(group, body.map_or(0, |b| b.0.rate_bytes)).await)
            }),
        )
        .route(
            "/tessera/v1/groups/{id}/ring",
            post(|State(p): State<Placement>, Path(group): Path<u64>, body: Option<Json<RingJoinRequest>>| async move {
                reply(p.join_ring(group, body.map_or(0, |b| b.0.rate_bytes)).await)
            }),
        )
        .route(
            "/tessera/v1/groups/{id}/learners",
            post(|State(p): State<Placement>, Path(group): Path<u64>, body: Option<Json<LearnerAddRequest>>| async move {
                reply(p.add_learner(group, body.and_then(|b| b.0.node)).await)
            }),
        )
        .route(
            "/tessera/v1/groups/{id}/replicas/{node}",
            delete(|State(p): State<Placement>, Path((group, node)): Path<(u64, String)>| async move {
                reply(p.remove_replica(group, &node).await)
            }),
        )
        .route(
            "/tessera/v1/pins",
            put(|State(p): State<Placement>, Json(r): Json<PinRequest>| async move { reply(p.pin(&r.prefix, r.group).await) }),
        )
        .route(
            "/tessera/v1/spreads",
            put(|State(p): State<Placement>, Json(r): Json<SpreadRequest>| async move {
                reply(p.spread(&r.prefix, &r.groups).await)
            }),
        )
        .route(
            "/tessera/v1/moves",
            get(|State(p): State<Placement>| async move { reply(p.moves().await) }).post(
                |State(p): State<Placement>, Json(r): Json<MoveRequest>| async move {
                    reply(p.move_prefix(&r.prefix, r.group, r.rate_bytes).await)
                },
            ),
        )
        .route(
            "/tessera/v1/splits",
            post(|State(p): State<Placement>, Json(r): Json<SplitRequest>| async move {
                reply(p.split(&r.prefix, &r.groups, r.rate_bytes).await)
            }),
        )
        .route(
            "/tessera/v1/merges",
            post(|State(p): State<Placement>, Json(r): Json<MergeRequest>| async move {
                reply(p.merge(&r.prefix, r.group, r.rate_bytes).await)
            }),
        )
        .route(
            "/tessera/v1/rebalance",
            post(|State(p): State<Placement>, Json(r): Json<RebalanceRequest>| async move { reply(p.rebalance(&r).await) }),
        )
        .route("/tessera/v1/units", get(|State(p): State<Placement>| async move { reply(p.units().await) }))
        .route(
            "/tessera/v1/moves/cancel",
            post(|State(p): State<Placement>, Json(r): Json<MoveCancelRequest>| async move { reply(p.cancel_move(&r.prefix)) }),
        )
        .with_state(placement)
}
