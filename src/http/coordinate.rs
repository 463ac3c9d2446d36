//! Consul's `/v1/coordinate/*`: the WAN coordinates of every server by datacenter, the LAN
//! coordinates of a DC's nodes (kept in its Raft state), one node's, and an update.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::HttpError;
use super::json::decode;
use super::params::Params;
use super::{Api, read, write_ok};
use crate::coordinate::Coordinate;
use crate::rpc::WanCoordinates;
use crate::state::Command;
use crate::state::coordinates::NodeCoordinate;
use crate::state::query::{Query, QueryResult};

/// One node's coordinate as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CoordinateJson<'a> {
    node: &'a str,
    segment: &'a str,
    coord: &'a Coordinate,
}

fn json_of(list: &[NodeCoordinate]) -> Vec<CoordinateJson<'_>> {
    list.iter()
        .map(|c| CoordinateJson {
            node: &c.node,
            segment: "",
            coord: &c.coord,
        })
        .collect()
}

/// One datacenter's servers as `coordinate/datacenters` shows them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DatacenterJson<'a> {
    datacenter: &'a str,
    #[serde(rename = "AreaID")]
    area_id: &'static str,
    coordinates: Vec<CoordinateJson<'a>>,
}

/// `GET /v1/coordinate/datacenters`: every server's WAN coordinate, by datacenter.
pub async fn datacenters(State(api): State<Api>) -> Result<Response, HttpError> {
    let dcs = api.dispatcher.call(WanCoordinates).await?;
    let json: Vec<DatacenterJson> = dcs
        .iter()
        .map(|d| DatacenterJson {
            datacenter: &d.datacenter,
            area_id: "WAN",
            coordinates: json_of(&d.coordinates),
        })
        .collect();
    Ok(Json(json).into_response())
}

/// `GET /v1/coordinate/nodes`: the LAN coordinates of the DC's nodes (`?dc=`).
pub async fn nodes(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let (headers, out) = read(&api, &p, Query::Coordinates { node: None }).await?;
    let QueryResult::Coordinates(list) = &out.result else {
        return Err(HttpError::shape());
    };
    Ok((headers, Json(json_of(list))).into_response())
}

/// `GET /v1/coordinate/node/:node`: one node's (404 when it has none).
pub async fn node(
    State(api): State<Api>,
    Path(node): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let query = Query::Coordinates { node: Some(node) };
    let (headers, out) = read(&api, &p, query).await?;
    let QueryResult::Coordinates(list) = &out.result else {
        return Err(HttpError::shape());
    };
    if list.is_empty() {
        return Ok((axum::http::StatusCode::NOT_FOUND, headers).into_response());
    }
    Ok((headers, Json(json_of(list))).into_response())
}

/// `PUT /v1/coordinate/update`'s body (keys normalized by [`decode`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    node: String,
    #[serde(default)]
    segment: String,
    coord: CoordBody,
}

/// A coordinate in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordBody {
    vec: Vec<f64>,
    error: f64,
    adjustment: f64,
    height: f64,
}

/// `PUT /v1/coordinate/update`: sets a node's LAN coordinate (`node:write`).
pub async fn update(State(api): State<Api>, p: Params, body: Bytes) -> Result<Response, HttpError> {
    let body: UpdateBody = decode(&body)?;
    if !body.segment.is_empty() {
        return Err(HttpError::BadRequest(
            "Network segments are not supported".into(),
        ));
    }
    let coord = Coordinate {
        vec: body.coord.vec,
        error: body.coord.error,
        adjustment: body.coord.adjustment,
        height: body.coord.height,
    };
    let dims = crate::coordinate::Config::default().dimensionality;
    if !coord.is_valid() || coord.vec.len() != dims {
        return Err(HttpError::BadRequest(format!(
            "Coord must be {dims} finite dimensions with a finite Error, Adjustment and Height"
        )));
    }
    let cmd = Command::CoordinatesUpdate(vec![NodeCoordinate {
        node: body.node,
        coord,
    }]);
    write_ok(&api, &p, p.dc(), cmd).await
}
