//! `/v1/status/...`: the DC's Raft leader and voting peers, as `"ip:port"` strings.

use axum::Json;
use axum::extract::State;

use super::Api;
use super::error::HttpError;
use super::params::Params;

/// `GET /v1/status/leader`: the leader's address, `""` when there is none.
pub async fn leader(State(api): State<Api>, p: Params) -> Result<Json<String>, HttpError> {
    let status = api.dispatcher.raft_status(p.dc()).await?;
    Ok(Json(status.leader.map(|l| l.addr).unwrap_or_default()))
}

/// `GET /v1/status/peers`: the voting servers' addresses.
pub async fn peers(State(api): State<Api>, p: Params) -> Result<Json<Vec<String>>, HttpError> {
    let status = api.dispatcher.raft_status(p.dc()).await?;
    Ok(Json(status.voters.into_iter().map(|n| n.addr).collect()))
}
