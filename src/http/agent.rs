//! `/v1/agent/...`: this agent's own view: who it is, its members, and the services and
//! checks registered with it (kept by [`crate::agent::local`], synced to the catalog by
//! anti-entropy). These endpoints never take `?dc=`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Api;
use super::catalog::parse_status;
use super::error::HttpError;
use super::json::{CheckJson, ServiceBody, ServiceJson, decode, decode_object, decode_value};
use super::params::Params;
use crate::acl::{Access, Authorizer, Permission, Resource, Scalar};
use crate::agent::local::{CheckKind, LocalCheck, LocalError, ServiceWithChecks};
use crate::duration::parse_go_duration;
use crate::gossip::{Member, MemberStatus};
use crate::state::{CheckDefinition, HealthStatus};
use crate::vocab::Role;

impl From<LocalError> for HttpError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::Invalid(m) => HttpError::BadRequest(m),
            LocalError::Unknown(m) => HttpError::NotFoundBecause(m),
        }
    }
}

/// A gossip member in Consul's `agent/members` shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MemberJson {
    name: String,
    addr: String,
    port: u16,
    tags: BTreeMap<&'static str, String>,
    /// 1 alive, 2 leaving, 3 left, 4 failed.
    status: u8,
}

fn role_tag(role: Role) -> String {
    match role {
        Role::Server => "consul",
        Role::Client => "node",
    }
    .to_string()
}

/// A gossip member in Consul's shape: address and port are the gossip ones; the `port` tag
/// is the server RPC (QUIC) port.
fn member_json(m: &Member) -> MemberJson {
    let mut tags = BTreeMap::new();
    tags.insert("dc", m.datacenter.clone());
    tags.insert("role", role_tag(m.role));
    if let Some(q) = m.quic {
        tags.insert("port", q.port().to_string());
    }
    tags.insert("build", m.build.clone());
    MemberJson {
        name: m.name.clone(),
        addr: m.gossip_addr.ip().to_string(),
        port: m.gossip_addr.port(),
        tags,
        status: m.status.code(),
    }
}

/// This agent as a member: as gossip knows it, or (before gossip has run a round) from
/// its own configuration.
fn self_member(api: &Api) -> MemberJson {
    let n = &api.local.node;
    if let Some(m) = api.members.borrow().iter().find(|m| m.name == n.name) {
        return member_json(m);
    }
    let role = if n.server { Role::Server } else { Role::Client };
    let mut tags = BTreeMap::new();
    tags.insert("dc", n.datacenter.clone());
    tags.insert("role", role_tag(role));
    tags.insert("port", n.port.to_string());
    tags.insert("build", env!("CARGO_PKG_VERSION").to_string());
    MemberJson {
        name: n.name.clone(),
        addr: n.address.clone(),
        port: n.port,
        tags,
        status: MemberStatus::Alive.code(),
    }
}

/// `agent/self`'s `Config`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SelfConfig<'a> {
    datacenter: &'a str,
    primary_datacenter: &'a str,
    node_name: &'a str,
    #[serde(rename = "NodeID")]
    node_id: &'a str,
    server: bool,
    revision: &'static str,
    version: &'static str,
}

/// `GET /v1/agent/self`: what Prometheus reads `Config.Datacenter` from.
pub async fn self_info(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, agent_perm(&api, Access::Read)).await?;
    let n = &api.local.node;
    let config = SelfConfig {
        datacenter: &n.datacenter,
        primary_datacenter: &n.datacenter,
        node_name: &n.name,
        node_id: &n.id,
        server: n.server,
        revision: "",
        version: env!("CARGO_PKG_VERSION"),
    };
    Ok(Json(serde_json::json!({
        "Config": config,
        "Coord": api.coordinates.coordinate(),
        "Member": self_member(&api),
        "Meta": {},
    }))
    .into_response())
}

/// `agent:<level>` on this agent's node.
pub(super) fn agent_perm(api: &Api, level: Access) -> Permission {
    Permission::named(Resource::Agent, api.local.node.name.clone(), level)
}

/// What changing local check `id` needs: `service:write` on its service, or `node:write`
/// on this node for a node check (or an unknown one).
fn check_perm(api: &Api, id: &str) -> Permission {
    let local = api.local.snapshot();
    let service = local
        .checks
        .get(id)
        .and_then(|c| c.def.service_id.as_ref())
        .and_then(|sid| local.services.get(sid))
        .map(|s| s.service.clone());
    match service {
        Some(name) => Permission::named(Resource::Service, name, Access::Write),
        None => Permission::named(Resource::Node, api.local.node.name.clone(), Access::Write),
    }
}

/// Whether `authz` (none: ACLs off) may read `name` of `kind`.
fn may_read(authz: Option<&Authorizer>, kind: Resource, name: &str) -> bool {
    authz.is_none_or(|a| a.allows(&Permission::named(kind, name, Access::Read)))
}

/// `GET /v1/agent/members`: the LAN pool as gossip sees it (`?wan` on servers: the WAN
/// pool of every DC's servers, named `<node>.<dc>`).
pub async fn members(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let authz = api.authorizer(&p).await?;
    let members = if p.enabled("wan") {
        api.dispatcher
            .wan_members()
            .ok_or_else(|| HttpError::BadRequest("WAN members are only known to servers".into()))?
    } else {
        api.members.borrow().clone()
    };
    let out: Vec<MemberJson> = members
        .iter()
        .filter(|m| may_read(authz.as_ref(), Resource::Node, &m.name))
        .map(member_json)
        .collect();
    Ok(Json(out).into_response())
}

/// `PUT /v1/agent/leave`: this agent leaves the pool gracefully and shuts down.
pub async fn leave(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, agent_perm(&api, Access::Write)).await?;
    api.shutdown.cancel();
    Ok(().into_response())
}

/// `PUT /v1/agent/force-leave/:node[?prune][?wan]` (`operator:write`): forces a failed
/// member out of this agent's pool: LAN, or WAN for a server's `node.dc` member (or with
/// `?wan`). It is shown as left, or with `?prune` dropped from the member list, so a
/// decommissioned DC disappears from `catalog/datacenters` and from routing.
pub async fn force_leave(
    State(api): State<Api>,
    Path(node): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Operator, Access::Write))
        .await?;
    let Some((lan, wan)) = &api.pools else {
        return Err(HttpError::Internal(
            "this agent is in no gossip pool".into(),
        ));
    };
    let in_wan = |w: &&crate::gossip::Gossip| {
        p.enabled("wan") || w.members().borrow().iter().any(|m| m.name == node)
    };
    let pool = match wan.as_ref().filter(in_wan) {
        Some(wan) => wan,
        None if p.enabled("wan") => {
            return Err(HttpError::BadRequest(
                "WAN members are only known to servers".into(),
            ));
        }
        None => lan,
    };
    pool.force_leave(&node, p.enabled("prune"))
        .await
        .map_err(|e| match e {
            crate::gossip::ForceLeaveError::Unknown(_) => HttpError::NotFoundBecause(e.to_string()),
            crate::gossip::ForceLeaveError::Alive(_) => HttpError::BadRequest(e.to_string()),
        })?;
    Ok(().into_response())
}

/// `GET /v1/agent/services`: this agent's services by ID.
pub async fn services(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let filter = super::local_filter::<crate::state::Service>(&p)?;
    let authz = api.authorizer(&p).await?;
    let local = api.local.snapshot();
    let services: Vec<_> = local
        .services
        .values()
        .filter(|d| may_read(authz.as_ref(), Resource::Service, &d.service))
        .map(|d| d.clone().into_service(api.local.node.name.clone()))
        .filter(|s| filter.as_ref().is_none_or(|f| f.matches(s)))
        .collect();
    let json: BTreeMap<&str, ServiceJson> = services
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                ServiceJson::new(s, &api.local.node.datacenter),
            )
        })
        .collect();
    Ok(Json(json).into_response())
}

/// `GET /v1/agent/checks`: this agent's checks by ID.
pub async fn checks(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let filter = super::local_filter::<crate::state::Check>(&p)?;
    let authz = api.authorizer(&p).await?;
    let local = api.local.snapshot();
    let checks = local.catalog_checks(&api.local.node.name);
    let json: BTreeMap<&str, CheckJson> = checks
        .iter()
        .filter(|(_, c)| filter.as_ref().is_none_or(|f| f.matches(c)))
        .filter(|(_, c)| {
            if c.service_name.is_empty() {
                may_read(authz.as_ref(), Resource::Node, &c.node)
            } else {
                may_read(authz.as_ref(), Resource::Service, &c.service_name)
            }
        })
        .map(|(id, c)| (id.as_str(), CheckJson::from(c)))
        .collect();
    Ok(Json(json).into_response())
}

/// A check in an agent registration (alone or inside a service).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    id: String,
    #[serde(rename = "checkid", default)]
    check_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "serviceid", default)]
    service_id: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    body: Option<String>,
    #[serde(rename = "tlsskipverify", default)]
    tls_skip_verify: bool,
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(rename = "scriptargs", default)]
    script_args: Option<Vec<String>>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(rename = "deregistercriticalserviceafter", default)]
    deregister_critical_after: Option<String>,
}

fn duration(name: &str, v: Option<String>) -> Result<Option<Duration>, HttpError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            parse_go_duration(&s)
                .ok_or_else(|| HttpError::BadRequest(format!("Invalid {name} duration {s:?}")))
        })
        .transpose()
}

impl CheckBody {
    fn into_local(self) -> Result<LocalCheck, HttpError> {
        let interval = duration("Interval", self.interval)?;
        let kind = if let Some(ttl) = duration("TTL", self.ttl)? {
            CheckKind::Ttl(ttl)
        } else if let Some(url) = self.http.filter(|u| !u.is_empty()) {
            CheckKind::Http {
                url,
                method: self.method.unwrap_or_else(|| "GET".into()),
                header: self.header.unwrap_or_default(),
                body: self.body.unwrap_or_default(),
                tls_skip_verify: self.tls_skip_verify,
            }
        } else if let Some(addr) = self.tcp.filter(|a| !a.is_empty()) {
            CheckKind::Tcp(addr)
        } else if let Some(args) = self.args.or(self.script_args).filter(|a| !a.is_empty()) {
            CheckKind::Script(args)
        } else {
            return Err(HttpError::BadRequest(
                "Must provide TTL or Args, HTTP or TCP with an Interval".into(),
            ));
        };
        if !matches!(kind, CheckKind::Ttl(_)) && interval.is_none() {
            return Err(HttpError::BadRequest(
                "Interval must be given for HTTP, TCP and script checks".into(),
            ));
        }
        Ok(LocalCheck {
            def: CheckDefinition {
                check_id: if self.check_id.is_empty() {
                    self.id
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
                output: String::new(),
                service_id: self.service_id.filter(|s| !s.is_empty()),
                kind: kind.as_str().to_string(),
            },
            kind,
            interval,
            timeout: duration("Timeout", self.timeout)?,
            deregister_critical_after: duration(
                "DeregisterCriticalServiceAfter",
                self.deregister_critical_after,
            )?,
            warning: None,
        }
        .with_minimums())
        .and_then(|c: LocalCheck| {
            c.def.check_bounds().map_err(HttpError::BadRequest)?;
            Ok(c)
        })
    }
}

/// `PUT /v1/agent/service/register` (`?replace-existing-checks`).
pub async fn register_service(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let (def, checks) = decode::<ServiceBody>(&body)?.into_definition()?;
    def.check_bounds().map_err(HttpError::BadRequest)?;
    api.authorize(
        &p,
        Permission::named(Resource::Service, def.service.clone(), Access::Write),
    )
    .await?;
    let checks = checks
        .into_iter()
        .map(|c| decode_value::<CheckBody>(c)?.into_local())
        .collect::<Result<Vec<_>, _>>()?;
    let replace = p.enabled("replace-existing-checks");
    api.local.update(|l| l.add_service(def, checks, replace))?;
    Ok(().into_response())
}

/// `PUT /v1/agent/service/deregister/:id`.
pub async fn deregister_service(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let name = api
        .local
        .snapshot()
        .services
        .get(&id)
        .map(|s| s.service.clone());
    let perm = match name {
        Some(name) => Permission::named(Resource::Service, name, Access::Write),
        None => agent_perm(&api, Access::Write),
    };
    api.authorize(&p, perm).await?;
    api.local.update(|l| l.remove_service(&id))?;
    Ok(().into_response())
}

/// `PUT /v1/agent/check/register`.
pub async fn register_check(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let check = decode::<CheckBody>(&body)?.into_local()?;
    let service = check.def.service_id.as_ref().and_then(|sid| {
        api.local
            .snapshot()
            .services
            .get(sid)
            .map(|s| s.service.clone())
    });
    let perm = match service {
        Some(name) => Permission::named(Resource::Service, name, Access::Write),
        None => Permission::named(Resource::Node, api.local.node.name.clone(), Access::Write),
    };
    api.authorize(&p, perm).await?;
    api.local.update(|l| l.add_check(check))?;
    Ok(().into_response())
}

/// `PUT /v1/agent/check/deregister/:id`.
pub async fn deregister_check(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    api.authorize(&p, check_perm(&api, &id)).await?;
    api.local.update(|l| l.remove_check(&id))?;
    Ok(().into_response())
}

async fn set_status(
    api: &Api,
    id: &str,
    status: HealthStatus,
    p: &Params,
) -> Result<Response, HttpError> {
    api.authorize(p, check_perm(api, id)).await?;
    let note = p.get("note").unwrap_or_default().to_string();
    api.local.set_check(id, status, note)?;
    Ok(().into_response())
}

/// `PUT /v1/agent/check/pass/:id` (`?note=` becomes the output).
pub async fn pass(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    set_status(&api, &id, HealthStatus::Passing, &p).await
}

/// `PUT /v1/agent/check/warn/:id`.
pub async fn warn(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    set_status(&api, &id, HealthStatus::Warning, &p).await
}

/// `PUT /v1/agent/check/fail/:id`.
pub async fn fail(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    set_status(&api, &id, HealthStatus::Critical, &p).await
}

/// `PUT /v1/agent/check/update/:id`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    status: String,
    #[serde(default)]
    output: String,
}

/// `PUT /v1/agent/check/update/:id`: `{"Status": "passing", "Output": "..."}`.
pub async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    api.authorize(&p, check_perm(&api, &id)).await?;
    let b: UpdateBody = decode(&body)?;
    api.local
        .set_check(&id, parse_status(&b.status)?, b.output)?;
    Ok(().into_response())
}

/// `GET /v1/agent/metrics`: with `?format=prometheus` the Prometheus text format (as
/// `/metrics`); otherwise Consul's JSON summary (gauges, counters and samples, by name and
/// labels).
pub async fn metrics(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, agent_perm(&api, Access::Read)).await?;
    if p.get("format") == Some("prometheus") {
        return Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            api.metrics.encode(),
        )
            .into_response());
    }
    Ok(Json(super::json::metrics_summary(&api.metrics.registry.gather())).into_response())
}

/// The services and checks a config file defines (`services`, `checks`), decoded as the
/// API's registrations are (the same shapes and checks, keys in either spelling), for the
/// agent's start and `agent/reload`.
pub fn config_definitions(
    config: &crate::config::AgentConfig,
) -> Result<(Vec<ServiceWithChecks>, Vec<LocalCheck>), HttpError> {
    let services = config
        .services
        .iter()
        .map(|v| {
            let (def, checks) = decode_object::<ServiceBody>(v.clone())?.into_definition()?;
            def.check_bounds().map_err(HttpError::BadRequest)?;
            let checks = checks
                .into_iter()
                .map(|c| decode_value::<CheckBody>(c)?.into_local())
                .collect::<Result<Vec<_>, _>>()?;
            Ok((def, checks))
        })
        .collect::<Result<Vec<_>, HttpError>>()?;
    let checks = config
        .checks
        .iter()
        .map(|v| decode_object::<CheckBody>(v.clone())?.into_local())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((services, checks))
}
