//! Consul's `/v1/operator/raft/*`: the DC's Raft configuration, and removing a server
//! from it (a dead one that will not come back).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Api;
use super::error::HttpError;
use super::params::Params;
use crate::acl::{Access, Permission, Scalar};
use crate::rpc::RemoveRaftPeer;

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
