//! Consul's prepared queries, `/v1/query`: create, list, read, update, delete, execute
//! (with failover to other DCs, done by the server that runs it; with `?cached`, from the
//! agent cache) and explain.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::HttpError;
use super::health::HealthJson;
use super::json::{QUERY_IGNORED, decode_ignoring};
use super::params::{ClientIp, Params};
use super::{Api, cache_asked, cache_headers, read, read_headers};
use crate::rpc::{ExecuteQuery, QueryExecution, QueryRef, QuerySource};
use crate::state::Command;
use crate::state::prepared_query::{Failover, PreparedQuery, QueryTemplate, ServiceQuery};
use crate::state::query::{Query, QueryResult};
use crate::vocab::ReadMode;

/// A definition as a request carries it (keys normalized by the decoder).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct QueryBody {
    id: Option<String>,
    name: String,
    session: String,
    token: String,
    service: ServiceBody,
    dns: DnsBody,
    template: Option<TemplateBody>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ServiceBody {
    service: String,
    failover: FailoverBody,
    near: String,
    onlypassing: bool,
    ignorecheckids: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    nodemeta: Option<BTreeMap<String, String>>,
    servicemeta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FailoverBody {
    nearestn: u32,
    datacenters: Option<Vec<String>>,
    /// Ours, not Consul's: fail over while fewer instances than this are selected.
    minpassing: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DnsBody {
    ttl: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TemplateBody {
    #[serde(rename = "type")]
    kind: String,
    regexp: String,
    removeemptytags: bool,
}

impl QueryBody {
    fn into_query(self, id: String) -> PreparedQuery {
        let s = self.service;
        PreparedQuery {
            id,
            name: self.name,
            session: self.session,
            token: self.token,
            service: ServiceQuery {
                service: s.service,
                failover: Failover {
                    nearest_n: s.failover.nearestn,
                    datacenters: s.failover.datacenters.unwrap_or_default(),
                    min_passing: s.failover.minpassing,
                },
                near: s.near,
                only_passing: s.onlypassing,
                ignore_check_ids: s.ignorecheckids.unwrap_or_default(),
                tags: s.tags.unwrap_or_default(),
                node_meta: s.nodemeta.unwrap_or_default(),
                service_meta: s.servicemeta.unwrap_or_default(),
            },
            dns_ttl: self.dns.ttl,
            template: self
                .template
                .filter(|t| !t.kind.is_empty() || !t.regexp.is_empty())
                .map(|t| QueryTemplate {
                    kind: t.kind,
                    regexp: t.regexp,
                    remove_empty_tags: t.removeemptytags,
                }),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// Checks a definition before it is written: its shape (as the state will), its DNS TTL,
/// and that every DC it fails over to is known.
async fn checked(api: &Api, q: &PreparedQuery) -> Result<(), HttpError> {
    crate::state::prepared_query::validate(q).map_err(HttpError::BadRequest)?;
    if !q.dns_ttl.is_empty() {
        crate::duration::parse_go_duration(&q.dns_ttl)
            .ok_or_else(|| HttpError::BadRequest(format!("Bad DNS TTL '{}'", q.dns_ttl)))?;
    }
    let wanted = &q.service.failover.datacenters;
    if !wanted.is_empty() {
        let known = api.dispatcher.datacenters().await?;
        // A template may name a DC it renders; only literal names are checked.
        if let Some(dc) = wanted
            .iter()
            .find(|dc| !dc.contains("${") && !known.contains(dc))
        {
            return Err(HttpError::BadRequest(format!(
                "Failover datacenter '{dc}' is not known"
            )));
        }
    }
    Ok(())
}

/// Writes `q` in the request's DC; a refusal is a 400.
async fn write(api: &Api, p: &Params, cmd: Command) -> Result<(), HttpError> {
    match api.dispatcher.write(p.token(), p.dc(), cmd).await? {
        crate::state::CommandResult::Rejected(why) => Err(HttpError::BadRequest(why)),
        _ => Ok(()),
    }
}

/// `POST /v1/query`: `{"ID": "..."}`.
pub async fn create(State(api): State<Api>, p: Params, body: Bytes) -> Result<Response, HttpError> {
    let body: QueryBody = decode_ignoring(&body, QUERY_IGNORED)?;
    let id = crate::vocab::random_uuid();
    let q = body.into_query(id.clone());
    checked(&api, &q).await?;
    write(&api, &p, Command::PreparedQueryCreate(Box::new(q))).await?;
    Ok(Json(serde_json::json!({ "ID": id })).into_response())
}

/// `PUT /v1/query/:id`: replaces a query's definition.
pub async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body: QueryBody = decode_ignoring(&body, QUERY_IGNORED)?;
    if body.id.as_ref().is_some_and(|b| *b != id && !b.is_empty()) {
        return Err(HttpError::BadRequest(
            "The ID in the body differs from the path's".into(),
        ));
    }
    let q = body.into_query(id);
    checked(&api, &q).await?;
    write(&api, &p, Command::PreparedQueryUpdate(Box::new(q))).await?;
    Ok(().into_response())
}

/// `DELETE /v1/query/:id`.
pub async fn delete(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    write(&api, &p, Command::PreparedQueryDelete { id }).await?;
    Ok(().into_response())
}

/// A definition as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct QueryJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    session: &'a str,
    token: &'a str,
    template: TemplateJson<'a>,
    service: ServiceQueryJson<'a>,
    #[serde(rename = "DNS")]
    dns: DnsJson<'a>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TemplateJson<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
    regexp: &'a str,
    remove_empty_tags: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceQueryJson<'a> {
    service: &'a str,
    failover: FailoverJson<'a>,
    near: &'a str,
    only_passing: bool,
    #[serde(rename = "IgnoreCheckIDs")]
    ignore_check_ids: &'a [String],
    tags: &'a [String],
    node_meta: &'a BTreeMap<String, String>,
    service_meta: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FailoverJson<'a> {
    #[serde(rename = "NearestN")]
    nearest_n: u32,
    datacenters: &'a [String],
    #[serde(skip_serializing_if = "is_zero")]
    min_passing: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DnsJson<'a> {
    #[serde(rename = "TTL")]
    ttl: &'a str,
}

impl<'a> From<&'a PreparedQuery> for QueryJson<'a> {
    fn from(q: &'a PreparedQuery) -> Self {
        let t = q.template.as_ref();
        let s = &q.service;
        QueryJson {
            id: &q.id,
            name: &q.name,
            session: &q.session,
            token: &q.token,
            template: TemplateJson {
                kind: t.map_or("", |t| t.kind.as_str()),
                regexp: t.map_or("", |t| t.regexp.as_str()),
                remove_empty_tags: t.is_some_and(|t| t.remove_empty_tags),
            },
            service: ServiceQueryJson {
                service: &s.service,
                failover: FailoverJson {
                    nearest_n: s.failover.nearest_n,
                    datacenters: &s.failover.datacenters,
                    min_passing: s.failover.min_passing,
                },
                near: &s.near,
                only_passing: s.only_passing,
                ignore_check_ids: &s.ignore_check_ids,
                tags: &s.tags,
                node_meta: &s.node_meta,
                service_meta: &s.service_meta,
            },
            dns: DnsJson { ttl: &q.dns_ttl },
            create_index: q.create_index,
            modify_index: q.modify_index,
        }
    }
}

/// `GET /v1/query`: every definition the token may read.
pub async fn list(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let (headers, out) = read(&api, &p, Query::PreparedQueries { id: None }).await?;
    let QueryResult::PreparedQueries(list) = &out.result else {
        return Err(HttpError::shape());
    };
    let json: Vec<QueryJson> = list.iter().map(QueryJson::from).collect();
    Ok((headers, Json(json)).into_response())
}

/// `GET /v1/query/:id`: one definition, in a list (as Consul).
pub async fn get(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let (headers, out) = read(&api, &p, Query::PreparedQueries { id: Some(id) }).await?;
    let QueryResult::PreparedQueries(list) = &out.result else {
        return Err(HttpError::shape());
    };
    if list.is_empty() {
        return Err(HttpError::NotFoundBecause("Query not found".into()));
    }
    let json: Vec<QueryJson> = list.iter().map(QueryJson::from).collect();
    Ok((headers, Json(json)).into_response())
}

/// The execution (or with `explain`, the rendering) of the query `id_or_name` the request
/// asks for.
fn call_for(
    api: &Api,
    id_or_name: String,
    p: &Params,
    client: ClientIp,
    explain: bool,
) -> Result<ExecuteQuery, HttpError> {
    let opts = p.read_options()?;
    let limit = p.u64("limit")?.map(|n| n as usize);
    Ok(ExecuteQuery {
        dc: p.dc().map(str::to_string),
        query: QueryRef::Named(id_or_name),
        near: p.get("near").map(str::to_string),
        source: QuerySource {
            node: api.local.node.name.clone(),
            datacenter: api.local.node.datacenter.clone(),
            ip: client.0.map(|ip| ip.to_string()),
        },
        limit,
        mode: opts.mode,
        explain,
        token: p.token(),
    })
}

/// The index and consistency headers of an execution's answer.
fn execution_headers(out: &QueryExecution, mode: ReadMode) -> HeaderMap {
    read_headers(&crate::rpc::ReadOutcome {
        index: out.index,
        result: QueryResult::Health(Vec::new()),
        meta: out.meta,
        mode,
        filtered: false,
        stale_from: None,
    })
}

/// `GET /v1/query/:id/execute`: the healthy instances the query selects, from this DC or
/// the first DC it fails over to that has some. With `?cached`, from the agent cache
/// (Consul's simple caching: `X-Cache`, `Age` since the fetch, `Cache-Control`).
pub async fn execute(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
    client: ClientIp,
) -> Result<Response, HttpError> {
    let call = call_for(&api, id, &p, client, false)?;
    let (headers, out) = match cache_asked(&api, &p)? {
        Some(cache) => {
            let answer = cache.execute(call, p.2).await?;
            let mut headers = execution_headers(&answer.value, ReadMode::Stale);
            cache_headers(&mut headers, answer.hit, answer.age);
            (headers, answer.value)
        }
        None => {
            let mode = call.mode;
            let out = api.dispatcher.call(call).await?;
            (execution_headers(&out, mode), Arc::new(out))
        }
    };
    let json = ExecuteJson {
        service: &out.service,
        nodes: out.nodes.iter().map(HealthJson::from).collect(),
        dns: DnsJson { ttl: &out.dns_ttl },
        datacenter: &out.datacenter,
        failovers: out.failovers,
    };
    Ok((headers, Json(json)).into_response())
}

/// An execution's answer as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExecuteJson<'a> {
    service: &'a str,
    nodes: Vec<HealthJson<'a>>,
    #[serde(rename = "DNS")]
    dns: DnsJson<'a>,
    datacenter: &'a str,
    failovers: u32,
}

/// `GET /v1/query/:id/explain`: the query as it runs for that name (templates rendered).
pub async fn explain(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
    client: ClientIp,
) -> Result<Response, HttpError> {
    let call = call_for(&api, id, &p, client, true)?;
    let mode = call.mode;
    let out = api.dispatcher.call(call).await?;
    let headers = execution_headers(&out, mode);
    let query = out.query.ok_or_else(HttpError::shape)?;
    let json = serde_json::json!({ "Query": QueryJson::from(&*query) });
    Ok((headers, Json(json)).into_response())
}
