//! `/v1/catalog/...`: Consul's catalog endpoints.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::HttpError;
use super::json::{CatalogServiceJson, NodeJson, ServiceBody, ServiceJson, decode};
use super::params::{ClientIp, Params};
use super::{Api, near, read, read_cacheable, write_ok};
use crate::state::query::{Query, QueryResult};
use crate::state::{CheckDefinition, Command, DeregisterRequest, HealthStatus, RegisterRequest};

/// A check inside `catalog/register` (and a transaction's check operation).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "checkid", default)]
    check_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    output: String,
    #[serde(rename = "serviceid", default)]
    service_id: Option<String>,
}

impl CheckBody {
    /// The definition (ID defaulting to the name, status to critical, as Consul).
    pub fn into_definition(self) -> Result<CheckDefinition, HttpError> {
        Ok(CheckDefinition {
            check_id: if self.check_id.is_empty() {
                self.name.clone()
            } else {
                self.check_id
            },
            name: self.name,
            status: self
                .status
                .as_deref()
                .map(parse_status)
                .transpose()?
                .unwrap_or(HealthStatus::Critical),
            notes: self.notes,
            output: self.output,
            service_id: self.service_id.filter(|s| !s.is_empty()),
            kind: String::new(),
        })
    }
}

/// Parses Consul's status strings.
pub fn parse_status(s: &str) -> Result<HealthStatus, HttpError> {
    match s {
        "passing" => Ok(HealthStatus::Passing),
        "warning" => Ok(HealthStatus::Warning),
        "critical" => Ok(HealthStatus::Critical),
        other => Err(HttpError::BadRequest(format!(
            "Invalid check status {other:?}: must be passing, warning or critical"
        ))),
    }
}

/// `catalog/register`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
    #[serde(rename = "taggedaddresses", default)]
    tagged_addresses: Option<BTreeMap<String, String>>,
    #[serde(rename = "nodemeta", default)]
    node_meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    service: Option<ServiceBody>,
    #[serde(default)]
    check: Option<CheckBody>,
    #[serde(default)]
    checks: Option<Vec<CheckBody>>,
}

/// The DC a write names: `?dc=`, else the body's `Datacenter`.
fn body_dc<'a>(p: &'a Params, datacenter: &'a str) -> Option<&'a str> {
    p.dc().or(Some(datacenter).filter(|d| !d.is_empty()))
}

/// `PUT /v1/catalog/register`.
pub async fn register(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: RegisterBody = decode(&body)?;
    let dc = body_dc(&p, &b.datacenter).map(str::to_string);
    if b.node.is_empty() {
        return Err(HttpError::BadRequest("Must provide node".into()));
    }
    if b.address.is_empty() {
        return Err(HttpError::BadRequest("Must provide address".into()));
    }
    let checks = b
        .check
        .into_iter()
        .chain(b.checks.unwrap_or_default())
        .map(|c| {
            if !c.node.is_empty() && c.node != b.node {
                return Err(HttpError::BadRequest(
                    "Check node must match the registered node".into(),
                ));
            }
            c.into_definition()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let service = match b.service.map(ServiceBody::into_definition).transpose()? {
        Some((_, checks)) if !checks.is_empty() => {
            return Err(HttpError::BadRequest(
                "Checks of a catalog registration go at its top level, not in Service".into(),
            ));
        }
        other => other.map(|(def, _)| def),
    };
    let req = RegisterRequest {
        id: b.id,
        node: b.node,
        address: b.address,
        datacenter: dc
            .clone()
            .unwrap_or_else(|| api.dispatcher.datacenter().to_string()),
        tagged_addresses: b.tagged_addresses.unwrap_or_default(),
        node_meta: b.node_meta.unwrap_or_default(),
        service,
        checks,
    };
    req.check_bounds().map_err(HttpError::BadRequest)?;
    write_ok(&api, &p, dc.as_deref(), Command::Register(Box::new(req))).await
}

/// `catalog/deregister`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeregisterBody {
    #[serde(default)]
    node: String,
    #[serde(default)]
    datacenter: String,
    #[serde(rename = "serviceid", default)]
    service_id: Option<String>,
    #[serde(rename = "checkid", default)]
    check_id: Option<String>,
}

/// `PUT /v1/catalog/deregister`.
pub async fn deregister(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: DeregisterBody = decode(&body)?;
    let dc = body_dc(&p, &b.datacenter).map(str::to_string);
    if b.node.is_empty() {
        return Err(HttpError::BadRequest("Must provide node".into()));
    }
    let req = DeregisterRequest {
        node: b.node,
        service_id: b.service_id.filter(|s| !s.is_empty()),
        check_id: b.check_id.filter(|s| !s.is_empty()),
    };
    write_ok(&api, &p, dc.as_deref(), Command::Deregister(req)).await
}

/// `GET /v1/catalog/datacenters`: the DCs of the federation, the local one first, then by
/// the median round-trip time from the answering server to their servers.
pub async fn datacenters(State(api): State<Api>) -> Result<Json<Vec<String>>, HttpError> {
    Ok(Json(api.dispatcher.datacenters().await?))
}

/// `GET /v1/catalog/nodes`.
pub async fn nodes(
    State(api): State<Api>,
    p: Params,
    client: ClientIp,
) -> Result<Response, HttpError> {
    let query = Query::Nodes {
        node_meta: p.node_meta()?,
    };
    let (headers, out) = read(&api, &p, near(&api, &p, client, query)).await?;
    let QueryResult::Nodes(nodes) = &out.result else {
        return Err(HttpError::shape());
    };
    let json: Vec<NodeJson> = nodes.iter().map(NodeJson::from).collect();
    Ok((headers, Json(json)).into_response())
}

/// `GET /v1/catalog/services`: `{"name":["tag",...]}`.
pub async fn services(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let (headers, out) = read_cacheable(
        &api,
        &p,
        Query::Services {
            node_meta: p.node_meta()?,
        },
    )
    .await?;
    let QueryResult::ServiceTags(tags) = &out.result else {
        return Err(HttpError::shape());
    };
    Ok((headers, Json(tags)).into_response())
}

/// One service as `internal/ui/services` lists it: Consul's fields, then the instances by
/// their worst check (ours).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceSummaryJson<'a> {
    name: &'a str,
    datacenter: &'a str,
    tags: &'a [String],
    nodes: &'a [String],
    instance_count: usize,
    checks_passing: usize,
    checks_warning: usize,
    checks_critical: usize,
    instances_passing: usize,
    instances_warning: usize,
    instances_critical: usize,
}

/// `GET /v1/internal/ui/services`: every service of the DC summed up (instances, nodes,
/// checks by status) in one answer, as Consul's UI lists them; blocking, with `?dc=`.
pub async fn ui_services(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let (headers, out) = read(&api, &p, Query::ServiceSummaries).await?;
    let QueryResult::ServiceSummaries(list) = &out.result else {
        return Err(HttpError::shape());
    };
    let dc = p.dc().unwrap_or(&api.local.node.datacenter);
    let json: Vec<ServiceSummaryJson> = list
        .iter()
        .map(|s| ServiceSummaryJson {
            name: &s.name,
            datacenter: dc,
            tags: &s.tags,
            nodes: &s.nodes,
            instance_count: s.instances,
            checks_passing: s.checks[0],
            checks_warning: s.checks[1],
            checks_critical: s.checks[2],
            instances_passing: s.health[0],
            instances_warning: s.health[1],
            instances_critical: s.health[2],
        })
        .collect();
    Ok((headers, Json(json)).into_response())
}

/// `GET /v1/catalog/service/:name` with `?tag=` (repeatable) and `?node-meta=`.
pub async fn service(
    State(api): State<Api>,
    Path(name): Path<String>,
    p: Params,
    client: ClientIp,
) -> Result<Response, HttpError> {
    let query = Query::ServiceNodes {
        service: name,
        tags: p.all("tag"),
        node_meta: p.node_meta()?,
    };
    let (headers, out) = read_cacheable(&api, &p, near(&api, &p, client, query)).await?;
    let QueryResult::ServiceNodes(rows) = &out.result else {
        return Err(HttpError::shape());
    };
    let json: Vec<CatalogServiceJson> = rows
        .iter()
        .map(|(n, s)| CatalogServiceJson::new(n, s))
        .collect();
    Ok((headers, Json(json)).into_response())
}

/// A node's services: by ID (`catalog/node/:node`) or as a list
/// (`catalog/node-services/:node`).
#[derive(Serialize)]
#[serde(untagged)]
enum ServicesJson<'a> {
    ById(BTreeMap<&'a str, ServiceJson<'a>>),
    List(Vec<ServiceJson<'a>>),
}

/// `catalog/node/:node` and `catalog/node-services/:node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeServicesJson<'a> {
    node: NodeJson<'a>,
    services: ServicesJson<'a>,
}

/// The node and its services (`null` for an unknown node), the services by ID or listed.
async fn node_answer(
    api: &Api,
    p: &Params,
    node: String,
    listed: bool,
) -> Result<Response, HttpError> {
    let (headers, out) = read(api, p, Query::NodeServices { node }).await?;
    let QueryResult::NodeServices(found) = &out.result else {
        return Err(HttpError::shape());
    };
    let json = found.as_ref().map(|(n, services)| {
        let shown = services.iter().map(|s| ServiceJson::new(s, &n.datacenter));
        NodeServicesJson {
            node: NodeJson::from(n),
            services: match listed {
                true => ServicesJson::List(shown.collect()),
                false => {
                    ServicesJson::ById(services.iter().map(|s| s.id.as_str()).zip(shown).collect())
                }
            },
        }
    });
    Ok((headers, Json(json)).into_response())
}

/// `GET /v1/catalog/node/:node`: the node and its services by ID.
pub async fn node(
    State(api): State<Api>,
    Path(node): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    node_answer(&api, &p, node, false).await
}

/// `GET /v1/catalog/node-services/:node` (filterable by service): the node and its
/// services as a list.
pub async fn node_services(
    State(api): State<Api>,
    Path(node): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    node_answer(&api, &p, node, true).await
}
