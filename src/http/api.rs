//! `GET /v1/models` and `POST /v1/route` (RouteDecision as JSON, field names as in the proto).
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use tracing::Instrument;

use super::error::ApiError;
use super::{wire, HttpState};
use crate::auth::Caller;
use crate::convert::{to_response, to_route_request};
use crate::proto::v1 as pb;

/// `auto`, one `auto:<policy>` per policy, then the catalog's backends.
pub async fn models(State(s): State<HttpState>) -> Json<serde_json::Value> {
    let c = s.gateway.engine().config();
    let entry = |id: String, owner: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": owner});
    let mut data = vec![entry("auto".into(), "switchboard")];
    data.extend(
        c.policies
            .keys()
            .map(|p| entry(format!("auto:{p}"), "switchboard")),
    );
    data.extend(
        c.backends
            .iter()
            .map(|b| entry(b.name.clone(), &b.provider)),
    );
    Json(json!({"object": "list", "data": data}))
}

pub async fn route(
    State(s): State<HttpState>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!("route_json", decision_id = tracing::field::Empty);
    match route_inner(s, caller.map(|c| c.0), body)
        .instrument(span)
        .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn route_inner(
    s: HttpState,
    caller: Option<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<pb::RouteDecisionResponse, ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "invalid_request_error", r.body_text()))?;
    let req: pb::RouteDecisionRequest = wire::parse(&body)?;
    let outcome = s
        .gateway
        .route(to_route_request(req), caller.as_ref())
        .await?;
    tracing::Span::current().record("decision_id", outcome.decision_id.as_str());
    Ok(to_response(&outcome))
}
