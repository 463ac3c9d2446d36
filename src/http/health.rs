//! `/v1/health/...`: Consul's health endpoints.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::catalog::parse_status;
use super::error::HttpError;
use super::json::{CheckJson, NodeJson, ServiceJson};
use super::params::{ClientIp, Params};
use super::{Api, near, read, read_cacheable};
use crate::state::query::{Query, QueryResult};

/// One entry of `health/service/:name` (and of a prepared query's answer).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthJson<'a> {
    node: NodeJson<'a>,
    service: ServiceJson<'a>,
    checks: Vec<CheckJson<'a>>,
}

impl<'a> From<&'a crate::state::query::ServiceHealth> for HealthJson<'a> {
    fn from(h: &'a crate::state::query::ServiceHealth) -> Self {
        HealthJson {
            node: NodeJson::from(&h.node),
            service: ServiceJson::new(&h.service, &h.node.datacenter),
            checks: h.checks.iter().map(CheckJson::from).collect(),
        }
    }
}

/// `GET /v1/health/service/:name` with `?passing`, `?tag=` and `?node-meta=`.
pub async fn service(
    State(api): State<Api>,
    Path(service): Path<String>,
    p: Params,
    client: ClientIp,
) -> Result<Response, HttpError> {
    // `?passing=false`, as some clients always send it, does not filter.
    let passing = p.enabled("passing");
    let query = Query::ServiceHealth {
        service,
        tags: p.all("tag"),
        passing,
        node_meta: p.node_meta()?,
    };
    let (headers, out) = read_cacheable(&api, &p, near(&api, &p, client, query)).await?;
    let QueryResult::Health(entries) = &out.result else {
        return Err(HttpError::shape());
    };
    let json: Vec<HealthJson> = entries.iter().map(HealthJson::from).collect();
    Ok((headers, Json(json)).into_response())
}

async fn checks(api: &Api, p: &Params, query: Query) -> Result<Response, HttpError> {
    let (headers, out) = read(api, p, query).await?;
    let QueryResult::Checks(checks) = &out.result else {
        return Err(HttpError::shape());
    };
    let json: Vec<CheckJson> = checks.iter().map(CheckJson::from).collect();
    Ok((headers, Json(json)).into_response())
}

/// `GET /v1/health/checks/:service`.
pub async fn service_checks(
    State(api): State<Api>,
    Path(service): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    checks(&api, &p, Query::ServiceChecks { service }).await
}

/// `GET /v1/health/node/:node`.
pub async fn node(
    State(api): State<Api>,
    Path(node): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    checks(&api, &p, Query::NodeChecks { node }).await
}

/// `GET /v1/health/state/:state`: `any`, `passing`, `warning` or `critical`.
pub async fn state(
    State(api): State<Api>,
    Path(state): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let state = match state.as_str() {
        "any" => None,
        other => Some(parse_status(other)?),
    };
    checks(&api, &p, Query::ChecksInState { state }).await
}
