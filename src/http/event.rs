//! `/v1/event/fire/:name` and `/v1/event/list`: user events, fired through a server of
//! the DC named (`?dc=`) into its LAN pool, and listed from what this agent received.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;

use super::Api;
use super::error::HttpError;
use super::params::Params;
use crate::acl::{Access, Permission, Resource};
use crate::gossip::events::UserEvent;
use crate::rpc::FireEvent;

/// An event in Consul's shape (`Payload` base64, `null` when empty).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    payload: Option<String>,
    node_filter: &'a str,
    service_filter: &'a str,
    tag_filter: &'a str,
    version: u8,
    #[serde(rename = "LTime")]
    ltime: u64,
}

impl<'a> From<&'a UserEvent> for EventJson<'a> {
    fn from(e: &'a UserEvent) -> Self {
        EventJson {
            id: &e.id,
            name: &e.name,
            payload: (!e.payload.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&e.payload)),
            node_filter: &e.node_filter,
            service_filter: &e.service_filter,
            tag_filter: &e.tag_filter,
            version: e.version,
            ltime: e.ltime,
        }
    }
}

/// `PUT /v1/event/fire/:name?node=&service=&tag=&dc=` (`event:write`), the body the
/// payload: spread by a server of the DC to its agents. Answers the event.
pub async fn fire(
    State(api): State<Api>,
    Path(name): Path<String>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let event = UserEvent {
        id: crate::vocab::random_uuid(),
        name,
        payload: body.to_vec(),
        node_filter: p.get("node").unwrap_or_default().to_string(),
        service_filter: p.get("service").unwrap_or_default().to_string(),
        tag_filter: p.get("tag").unwrap_or_default().to_string(),
        version: 1,
        ltime: 0,
    };
    event
        .validate()
        .map_err(|e| HttpError::BadRequest(e.to_string()))?;
    let fired = api
        .dispatcher
        .call(FireEvent {
            dc: p.dc().map(str::to_string),
            event,
            token: p.token(),
        })
        .await?;
    Ok(Json(EventJson::from(&fired)).into_response())
}

/// `GET /v1/event/list?name=` (blocking on `?index=`): the events this agent received
/// and keeps (its node and services match their filters), oldest first, those the token
/// may not read (`event:read`) left out.
pub async fn list(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let Some((lan, _)) = &api.pools else {
        return Err(HttpError::Internal(
            "this agent is in no gossip pool".into(),
        ));
    };
    let authz = api.authorizer(&p).await?;
    let min_index = p.u64("index")?.unwrap_or(0);
    let mut changes = lan.event_changes();
    let (events, index) =
        super::block_locally(&mut changes, p.local_wait()?, &api.shutdown, || {
            let (events, index) = lan.events();
            Ok(((events, index), min_index == 0 || index != min_index))
        })
        .await?;
    let local = api.local.snapshot();
    let node = &api.local.node.name;
    let name = p.get("name").filter(|n| !n.is_empty());
    let kept: Vec<EventJson> = events
        .iter()
        .filter(|e| name.is_none_or(|n| e.name == n))
        .filter(|e| {
            e.wanted_by(
                node,
                local
                    .services
                    .values()
                    .map(|s| (s.service.as_str(), s.tags.as_slice())),
            )
        })
        .filter(|e| {
            authz.as_ref().is_none_or(|a| {
                a.allows(&Permission::named(
                    Resource::Event,
                    e.name.clone(),
                    Access::Read,
                ))
            })
        })
        .map(EventJson::from)
        .collect();
    let mut resp = Json(kept).into_response();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert("X-Consul-Index", v);
    }
    Ok(resp)
}
