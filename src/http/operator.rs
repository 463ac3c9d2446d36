//! Consul's `/v1/operator/raft/*` and `/v1/operator/autopilot/health`: the DC's Raft
//! configuration, removing a server from it (a dead one that will not come back), handing
//! leadership to another server, and
//! each server's health as the leader sees it.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Api;
use super::error::HttpError;
use super::params::Params;
use crate::acl::{Access, Permission, Scalar};
use crate::rpc::{AutopilotHealth, RemoveRaftPeer, TransferLeader};

/// Consul's default `LastContactThreshold`: a server that has not acknowledged the leader
/// for longer is unhealthy.
const LAST_CONTACT_THRESHOLD_MS: u64 = 200;

/// One server as `raft/configuration` shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServerJson<'a> {
    #[serde(rename = "ID")]
    id: String,
    node: &'a str,
    address: &'a str,
    leader: bool,
    voter: bool,
    protocol_version: &'static str,
}

/// `GET /v1/operator/raft/configuration` (`?dc=`): every server, which leads, which vote
/// (`operator:read`).
pub async fn configuration(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Operator, Access::Read))
        .await?;
    let status = api.dispatcher.raft_status(p.dc()).await?;
    let servers: Vec<ServerJson> = status
        .servers
        .iter()
        .map(|s| ServerJson {
            id: crate::vocab::node_uuid(s.id),
            node: &s.node.name,
            address: &s.node.addr,
            leader: status.leader.as_ref() == Some(&s.node),
            voter: s.voter,
            protocol_version: "3",
        })
        .collect();
    Ok(Json(serde_json::json!({ "Servers": servers, "Index": 0 })).into_response())
}

/// `DELETE /v1/operator/raft/peer?address=ip:port` (or `?id=` naming the server): removes
/// it from the DC's Raft configuration at the leader (`operator:write`).
pub async fn remove_peer(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    // Checked here before the parameters, and again by the leader that removes it.
    api.authorize(&p, Permission::scalar(Scalar::Operator, Access::Write))
        .await?;
    let peer = p
        .get("address")
        .or_else(|| p.get("id"))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| HttpError::BadRequest("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove".into()))?
        .to_string();
    let call = RemoveRaftPeer {
        dc: p.dc().map(str::to_string),
        peer,
        token: p.token(),
    };
    api.dispatcher.call(call).await?;
    Ok(().into_response())
}

/// `POST /v1/operator/raft/transfer-leader[?id=]` (the node ID, name or address of the
/// server to hand leadership to; without it the leader picks the most up-to-date follower):
/// done by the leader; `{"Success": true}` once the new leader leads (`operator:write`).
pub async fn transfer_leader(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Operator, Access::Write))
        .await?;
    let call = TransferLeader {
        dc: p.dc().map(str::to_string),
        to: p.get("id").filter(|v| !v.is_empty()).map(str::to_string),
        token: p.token(),
    };
    api.dispatcher.call(call).await?;
    Ok(Json(serde_json::json!({ "Success": true })).into_response())
}

/// One server as `autopilot/health` shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HealthJson<'a> {
    #[serde(rename = "ID")]
    id: String,
    name: &'a str,
    address: &'a str,
    leader: bool,
    voter: bool,
    /// Go's duration syntax; empty when it never acknowledged this leader.
    last_contact: String,
    healthy: bool,
}

/// `GET /v1/operator/autopilot/health` (`?dc=`): each server's last contact with the
/// leader, whether it is healthy (within 200 ms), and how many voters may fail with the DC
/// keeping a quorum (`operator:read`). 429 when a server is unhealthy, as Consul.
pub async fn autopilot_health(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Operator, Access::Read))
        .await?;
    let servers = api
        .dispatcher
        .call(AutopilotHealth {
            dc: p.dc().map(str::to_string),
        })
        .await?;
    let threshold = LAST_CONTACT_THRESHOLD_MS;
    let json: Vec<HealthJson> = servers
        .iter()
        .map(|s| HealthJson {
            id: crate::vocab::node_uuid(s.id),
            name: &s.node.name,
            address: &s.node.addr,
            leader: s.leader,
            voter: s.voter,
            last_contact: s
                .last_contact_ms
                .map_or(String::new(), |ms| format!("{ms}ms")),
            healthy: s.healthy(threshold),
        })
        .collect();
    let healthy = json.iter().all(|s| s.healthy);
    let body = serde_json::json!({
        "Healthy": healthy,
        "FailureTolerance": crate::raft::failure_tolerance(&servers, threshold),
        "Servers": json,
    });
    let status = if healthy {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::TOO_MANY_REQUESTS
    };
    Ok((status, Json(body)).into_response())
}
