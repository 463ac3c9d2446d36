//! `/v1/agent/service/:id`, `/v1/agent/health/service/...` and maintenance mode: one
//! service of this agent and its health as load balancers read it (the HTTP status is
//! the aggregated health), answered from the agent's own state, never a server's.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Api;
use super::error::HttpError;
use super::json::{CheckJson, ServiceJson};
use super::params::Params;
use crate::acl::{Access, Permission, Resource};
use crate::agent::local::LocalState;
use crate::state::{Check, HealthStatus, Service};

/// Consul's header for [`service`]'s hash.
const CONTENT_HASH: &str = "X-Consul-ContentHash";

/// The services of this agent whose IDs `ids` picks, each with the checks its health
/// depends on: its own and the node's (node maintenance takes every service down).
fn services_and_checks(
    api: &Api,
    local: &LocalState,
    ids: impl Fn(&str, &str) -> bool,
) -> Vec<(Service, Vec<Check>)> {
    let checks = local.catalog_checks(&api.local.node.name);
    local
        .services
        .values()
        .filter(|d| ids(d.effective_id(), &d.service))
        .map(|d| {
            let id = d.effective_id();
            let own = checks
                .values()
                .filter(|c| c.service_id.is_empty() || c.service_id == id)
                .cloned()
                .collect();
            (d.clone().into_service(api.local.node.name.clone()), own)
        })
        .collect()
}

/// The worst status among `checks` (passing when there are none, as Consul's).
fn aggregate(checks: &[Check]) -> HealthStatus {
    checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(HealthStatus::Passing)
}

/// The HTTP status a load balancer reads: 200 passing, 429 warning, 503 critical.
fn code(status: HealthStatus) -> StatusCode {
    match status {
        HealthStatus::Passing => StatusCode::OK,
        HealthStatus::Warning => StatusCode::TOO_MANY_REQUESTS,
        HealthStatus::Critical => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// One service's entry in `agent/health/service/...`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceHealthJson<'a> {
    aggregated_status: &'static str,
    service: Option<ServiceJson<'a>>,
    checks: Option<Vec<CheckJson<'a>>>,
}

fn health_json<'a>(
    dc: &'a str,
    (service, checks): &'a (Service, Vec<Check>),
) -> ServiceHealthJson<'a> {
    ServiceHealthJson {
        aggregated_status: aggregate(checks).as_str(),
        service: Some(ServiceJson::new(service, dc)),
        checks: Some(checks.iter().map(CheckJson::from).collect()),
    }
}

/// Whether the answer is wanted as plain text (`?format=text`: the status alone).
fn text(p: &Params) -> bool {
    p.get("format") == Some("text")
}

/// `GET /v1/agent/health/service/id/:id` (`service:read`).
pub async fn by_id(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let local = api.local.snapshot();
    let found = services_and_checks(&api, &local, |sid, _| sid == id).pop();
    if let Some((s, _)) = &found {
        api.authorize(
            &p,
            Permission::named(Resource::Service, s.service.clone(), Access::Read),
        )
        .await?;
    }
    let Some(found) = found else {
        let reason = format!("ServiceId {id} not found");
        return Ok(match text(&p) {
            true => (StatusCode::NOT_FOUND, reason).into_response(),
            false => (
                StatusCode::NOT_FOUND,
                Json(ServiceHealthJson {
                    aggregated_status: HealthStatus::Critical.as_str(),
                    service: None,
                    checks: None,
                }),
            )
                .into_response(),
        });
    };
    let status = aggregate(&found.1);
    Ok(match text(&p) {
        true => (code(status), status.as_str()).into_response(),
        false => (
            code(status),
            Json(health_json(&api.local.node.datacenter, &found)),
        )
            .into_response(),
    })
}

/// `GET /v1/agent/health/service/name/:name` (`service:read`): every instance of `name`
/// on this agent; the status code is the worst of theirs.
pub async fn by_name(
    State(api): State<Api>,
    Path(name): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    api.authorize(
        &p,
        Permission::named(Resource::Service, name.clone(), Access::Read),
    )
    .await?;
    let local = api.local.snapshot();
    let found = services_and_checks(&api, &local, |_, service| service == name);
    if found.is_empty() {
        let reason = format!("ServiceName {name} Not Found");
        return Ok(match text(&p) {
            true => (StatusCode::NOT_FOUND, reason).into_response(),
            false => (StatusCode::NOT_FOUND, Json(Vec::<()>::new())).into_response(),
        });
    }
    let status = found
        .iter()
        .map(|(_, c)| aggregate(c))
        .max()
        .unwrap_or(HealthStatus::Passing);
    let dc = &api.local.node.datacenter;
    Ok(match text(&p) {
        true => (code(status), status.as_str()).into_response(),
        false => (
            code(status),
            Json(found.iter().map(|f| health_json(dc, f)).collect::<Vec<_>>()),
        )
            .into_response(),
    })
}

/// A service's content hash (Consul's `ContentHash`): 16 hex digits of SHA-256 over its
/// definition as shown, so any change to what a client sees changes it.
fn content_hash(json: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(json).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Service `id` as shown by `agent/service/:id`, with its hash; `None` when unknown.
fn service_view(api: &Api, id: &str) -> Option<(String, serde_json::Value)> {
    let def = api.local.snapshot().services.get(id)?.clone();
    let service = def.into_service(api.local.node.name.clone());
    let mut json = serde_json::to_value(ServiceJson::new(&service, &api.local.node.datacenter))
        .unwrap_or_default();
    let hash = content_hash(&json);
    if let serde_json::Value::Object(m) = &mut json {
        m.insert("ContentHash".into(), hash.clone().into());
    }
    Some((hash, json))
}

/// `GET /v1/agent/service/:id` (`service:read`): the service with its `ContentHash`
/// (also in `X-Consul-ContentHash`). With `?hash=` it is a blocking query on the hash:
/// it answers once the service differs from that hash, or after `?wait=` (default 5m).
pub async fn service(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    if !service_allowed(&api, &p, &id, Access::Read).await? {
        return Err(HttpError::NotFoundBecause(format!(
            "unknown service ID: {id}"
        )));
    }
    let held = p.get("hash").filter(|h| !h.is_empty());
    let mut changes = api.local.subscribe();
    let (hash, json) = super::block_locally(&mut changes, p.local_wait()?, &api.shutdown, || {
        let view = service_view(&api, &id)
            .ok_or_else(|| HttpError::NotFoundBecause(format!("unknown service ID: {id}")))?;
        let ready = held.is_none_or(|h| h != view.0);
        Ok((view, ready))
    })
    .await?;
    let mut resp = Json(json).into_response();
    if let Ok(v) = HeaderValue::from_str(&hash) {
        resp.headers_mut().insert(CONTENT_HASH, v);
    }
    Ok(resp)
}

/// Checks `access` to service `id` of this agent and says whether it exists: a known
/// service needs `service:<access>` on its name, an unknown ID `agent:<access>` to be
/// told it is unknown (as the other agent endpoints).
async fn service_allowed(
    api: &Api,
    p: &Params,
    id: &str,
    access: Access,
) -> Result<bool, HttpError> {
    let name = api
        .local
        .snapshot()
        .services
        .get(id)
        .map(|d| d.service.clone());
    let perm = match &name {
        Some(name) => Permission::named(Resource::Service, name.clone(), access),
        None => super::agent::agent_perm(api, access),
    };
    api.authorize(p, perm).await?;
    Ok(name.is_some())
}

/// `?enable=` of a maintenance request: required, a boolean as Go's `ParseBool` reads
/// it (`true`, `True`, `1`, `t`, ...: clients send either spelling).
fn enable(p: &Params) -> Result<bool, HttpError> {
    match p.get("enable") {
        None | Some("") => Err(HttpError::BadRequest("Missing value for enable".into())),
        Some("1" | "t" | "T" | "true" | "True" | "TRUE") => Ok(true),
        Some("0" | "f" | "F" | "false" | "False" | "FALSE") => Ok(false),
        Some(v) => Err(HttpError::BadRequest(format!(
            "Invalid value for enable: {v:?}"
        ))),
    }
}

/// `PUT /v1/agent/service/maintenance/:id?enable=&reason=` (`service:write`): adds or
/// removes the `_service_maintenance:<id>` critical check.
pub async fn service_maintenance(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    if !service_allowed(&api, &p, &id, Access::Write).await? {
        return Err(HttpError::NotFoundBecause(format!(
            "No service registered with ID {id:?}"
        )));
    }
    let on = enable(&p)?;
    let reason = p.get("reason").unwrap_or_default().to_string();
    api.local
        .update(|l| l.set_maintenance(Some(&id), on, &reason))?;
    Ok(().into_response())
}

/// `PUT /v1/agent/maintenance?enable=&reason=` (`node:write`): the whole node.
pub async fn node_maintenance(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(
        &p,
        Permission::named(Resource::Node, api.local.node.name.clone(), Access::Write),
    )
    .await?;
    let on = enable(&p)?;
    let reason = p.get("reason").unwrap_or_default().to_string();
    api.local.update(|l| l.set_maintenance(None, on, &reason))?;
    Ok(().into_response())
}
