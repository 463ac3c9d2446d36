//! Consul's `/v1/operator/raft/*`, `/v1/operator/autopilot/health` and
//! `/v1/operator/keyring`: the DC's Raft configuration, removing a server from it (a dead
//! one that will not come back), handing leadership to another server, each server's
//! health as the leader sees it, and the LAN gossip keys of every DC.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Api;
use super::error::HttpError;
use super::json::decode;
use super::params::Params;
use crate::acl::{Access, Permission, Scalar};
use crate::config::GossipKey;
use crate::gossip::keyring::{KeyVerb, KeyringReport};
use crate::rpc::{AutopilotHealth, KeyringOperation, RemoveRaftPeer, TransferLeader};

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

/// The body of a keyring change: `{"Key": "<base64 of 32 bytes>"}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: GossipKey,
}

/// One DC's LAN pool as `/v1/operator/keyring` lists it (Consul's `KeyringResponse`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PoolJson {
    #[serde(rename = "WAN")]
    wan: bool,
    datacenter: String,
    segment: &'static str,
    partition: &'static str,
    keys: std::collections::BTreeMap<String, usize>,
    primary_keys: std::collections::BTreeMap<String, usize>,
    num_nodes: usize,
    messages: std::collections::BTreeMap<String, String>,
}

impl From<KeyringReport> for PoolJson {
    fn from(r: KeyringReport) -> PoolJson {
        PoolJson {
            wan: false,
            datacenter: r.datacenter,
            segment: "",
            partition: "",
            keys: r.keys,
            primary_keys: r.primary_keys,
            num_nodes: r.num_nodes,
            messages: r.messages,
        }
    }
}

/// Runs a keyring operation (`None`: list) in the agent's own DC and then, unless
/// `?local-only`, in every other DC the agent knows (as Consul does: one keyring across
/// the federation). A refusal in the agent's own DC (a key it does not hold, its primary
/// key) stops there; a DC that cannot be reached or refuses is reported in its entry.
async fn keyring_everywhere(
    api: &Api,
    p: &Params,
    op: Option<(KeyVerb, GossipKey)>,
) -> Result<Vec<PoolJson>, HttpError> {
    let call = |dc: Option<String>| KeyringOperation {
        dc,
        op: op.clone(),
        token: p.token(),
    };
    let local = api.dispatcher.call(call(None)).await?;
    let here = local.datacenter.clone();
    let mut pools = vec![PoolJson::from(local)];
    if p.enabled("local-only") {
        return Ok(pools);
    }
    let others: Vec<String> = api
        .dispatcher
        .datacenters()
        .await?
        .into_iter()
        .filter(|dc| *dc != here)
        .collect();
    let answers = futures::future::join_all(
        others
            .iter()
            .map(|dc| api.dispatcher.call(call(Some(dc.clone())))),
    )
    .await;
    for (dc, answer) in others.into_iter().zip(answers) {
        pools.push(match answer {
            Ok(report) => report.into(),
            Err(e) => PoolJson::from(KeyringReport {
                datacenter: dc.clone(),
                messages: [(dc, e.to_string())].into(),
                ..KeyringReport::default()
            }),
        });
    }
    Ok(pools)
}

/// `GET /v1/operator/keyring[?local-only]`: every DC's LAN pool, the keys its live members
/// hold and seal with, and how many hold each (`keyring:read`). The WAN pool is not
/// listed: it runs over QUIC with mutual TLS, keyed by certificates.
pub async fn keyring_list(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Keyring, Access::Read))
        .await?;
    Ok(Json(keyring_everywhere(&api, &p, None).await?).into_response())
}

/// `POST /v1/operator/keyring`: installs a key on every agent of every DC.
pub async fn keyring_install(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    keyring_change(api, p, KeyVerb::Install, body).await
}

/// `PUT /v1/operator/keyring`: makes an installed key the one every agent seals with.
pub async fn keyring_use(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    keyring_change(api, p, KeyVerb::Use, body).await
}

/// `DELETE /v1/operator/keyring`: removes a key (never the primary one) from every agent.
pub async fn keyring_remove(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    keyring_change(api, p, KeyVerb::Remove, body).await
}

/// A keyring change (`keyring:write`): 200 once every live member of every DC applied it;
/// 500 naming the members (or DCs) that did not, as Consul reports failed nodes.
async fn keyring_change(
    api: Api,
    p: Params,
    verb: KeyVerb,
    body: Bytes,
) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Keyring, Access::Write))
        .await?;
    let KeyBody { key } = decode(&body)?;
    let pools = keyring_everywhere(&api, &p, Some((verb, key))).await?;
    let failures: Vec<String> = pools
        .iter()
        .flat_map(|pool| {
            pool.messages
                .iter()
                .map(move |(node, why)| format!("{} (LAN): {node}: {why}", pool.datacenter))
        })
        .collect();
    if failures.is_empty() {
        return Ok(().into_response());
    }
    Err(HttpError::Internal(format!(
        "{} nodes reported failures: {}",
        failures.len(),
        failures.join("; ")
    )))
}
