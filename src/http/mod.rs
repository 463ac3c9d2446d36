//! Consul's HTTP API (axum). Handlers only translate: path and query parameters into a
//! typed query or command for the [`Dispatcher`], and its answer into Consul's JSON shapes
//! and `X-Consul-*` headers. Only this module knows JSON; errors become status codes in one
//! place ([`error`]).

pub mod acl;
pub mod agent;
pub mod agent_health;
pub mod agent_ops;
pub mod catalog;
pub mod coordinate;
pub mod error;
pub mod event;
pub mod health;
pub mod json;
pub mod kv;
pub mod limits;
pub mod operator;
pub mod params;
pub mod query;
pub mod session;
pub mod snapshot;
pub mod status;
pub mod txn;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::acl::{Authorizer, Permission};
use crate::agent::local::LocalAgent;
use crate::dispatch::Dispatcher;
use crate::gossip::Member;
use crate::metrics::Metrics;
use crate::rpc::{ReadOutcome, ResolveToken, RpcError};
use crate::state::query::Query;
use crate::state::{Command, CommandResult};
use error::HttpError;
use params::Params;

/// What every handler shares: one allocation, so that handing it to a request (axum clones
/// the router's state for each) is one reference count, not a copy of every handle in it.
#[derive(Clone)]
pub struct Api(Arc<Shared>);

/// The contents of [`Api`].
#[derive(Clone)]
pub struct Shared {
    dispatcher: Dispatcher,
    local: Arc<LocalAgent>,
    members: tokio::sync::watch::Receiver<Vec<Member>>,
    metrics: Metrics,
    /// The agent's shutdown signal (`/v1/agent/leave` fires it).
    shutdown: CancellationToken,
    /// With ACLs on: how the agent's own endpoints check tokens.
    acl: Option<Arc<AclEdge>>,
    /// This agent's LAN coordinate (`/v1/agent/self`'s `Coord`).
    coordinates: Arc<crate::coordinate::Estimator>,
    /// The gossip pools this agent is in (LAN; WAN on servers), for force-leave.
    pools: Option<(crate::gossip::Gossip, Option<crate::gossip::Gossip>)>,
    /// The config file `agent/reload` reads again (`None`: built in code, no file).
    config_file: Option<Arc<std::path::PathBuf>>,
    /// The agent cache `?cached` reads are answered from (`None`: served uncached).
    cache: Option<crate::cache::AgentCache>,
    /// Whether `/ui/` serves the web UI (the agent's `ui` setting).
    ui: bool,
}

/// How the agent's own endpoints (those answered from the agent, not the DC's state) check
/// tokens: resolved by a server of the DC (`ResolveToken`), cached for `acl.token_ttl`;
/// when no server answers, `acl.down_policy` decides.
pub struct AclEdge {
    /// The primary DC, where global ACL objects are written, when this is another DC.
    primary: Option<String>,
    tokens: crate::acl::ResolvedTokens,
}

impl AclEdge {
    /// Tokens resolved through this DC's servers, kept in `tokens`; global ACL objects
    /// written in `primary` (`None`: this DC is the primary).
    pub fn new(primary: Option<String>, tokens: crate::acl::ResolvedTokens) -> AclEdge {
        AclEdge { primary, tokens }
    }
}

impl std::ops::Deref for Api {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Api {
    /// What the handlers of one agent share; `leave` is the agent's shutdown signal, which
    /// `/v1/agent/leave` fires.
    pub fn new(
        dispatcher: Dispatcher,
        local: Arc<LocalAgent>,
        members: tokio::sync::watch::Receiver<Vec<Member>>,
        metrics: Metrics,
        leave: CancellationToken,
    ) -> Api {
        Api(Arc::new(Shared {
            dispatcher,
            local,
            members,
            metrics,
            shutdown: leave,
            acl: None,
            coordinates: Default::default(),
            pools: None,
            config_file: None,
            cache: None,
            ui: true,
        }))
    }

    /// The contents, to set while the agent builds it (no copy: nothing shares it yet).
    fn building(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// With the agent cache for `?cached` reads.
    pub fn with_cache(mut self, cache: crate::cache::AgentCache) -> Api {
        self.building().cache = Some(cache);
        self
    }

    /// With the web UI at `/ui/` served or not.
    pub fn with_ui(mut self, ui: bool) -> Api {
        self.building().ui = ui;
        self
    }

    /// With the config file the agent was started from, for `agent/reload`.
    pub fn with_config_file(mut self, file: Option<std::path::PathBuf>) -> Api {
        self.building().config_file = file.map(Arc::new);
        self
    }

    /// With the gossip pools this agent is in (`wan`: servers').
    pub fn with_pools(
        mut self,
        lan: crate::gossip::Gossip,
        wan: Option<crate::gossip::Gossip>,
    ) -> Api {
        self.building().pools = Some((lan, wan));
        self
    }

    /// With this agent's LAN coordinate.
    pub fn with_coordinates(mut self, lan: Arc<crate::coordinate::Estimator>) -> Api {
        self.building().coordinates = lan;
        self
    }

    /// With ACLs on.
    pub fn with_acl(mut self, edge: AclEdge) -> Api {
        self.building().acl = Some(Arc::new(edge));
        self
    }

    /// Where a global ACL object of this request is written: its `?dc=`, else the primary
    /// DC (replicated from there), else here.
    fn acl_dc(&self, p: &Params) -> Option<String> {
        p.dc()
            .map(str::to_string)
            .or_else(|| self.acl.as_ref().and_then(|a| a.primary.clone()))
    }

    /// What the request's token may do, for the agent's own endpoints (`None`: ACLs off).
    async fn authorizer(&self, p: &Params) -> Result<Option<Authorizer>, HttpError> {
        let Some(edge) = &self.acl else {
            return Ok(None);
        };
        let token = p.token();
        let fetch = || async {
            let call = ResolveToken {
                token: token.clone(),
                dc: None,
            };
            ResolveToken::resolution(self.dispatcher.call(call).await)
        };
        let authz = edge
            .tokens
            .resolve(token.as_ref(), std::time::Instant::now(), fetch)
            .await
            .map_err(RpcError::Acl)?;
        Ok(Some(authz))
    }

    /// Checks that the request's token grants `perm` (nothing to check with ACLs off).
    async fn authorize(&self, p: &Params, perm: Permission) -> Result<(), HttpError> {
        match self.authorizer(p).await? {
            Some(authz) => Ok(authz.check(&perm).map_err(RpcError::Acl)?),
            None => Ok(()),
        }
    }
}

/// `query` sorted by estimated round trip from `?near=` when the request asks (`_agent`:
/// this agent's node; `_ip`: the node at the request's source address; else a node name).
fn near(api: &Api, p: &Params, client: params::ClientIp, query: Query) -> Query {
    use crate::state::coordinates::Near;
    let from = match p.get("near") {
        None | Some("") => return query,
        Some("_agent") => Near::Node(api.local.node.name.clone()),
        Some("_ip") => match client.0 {
            Some(ip) => Near::Address(ip.to_string()),
            None => return query,
        },
        Some(node) => Near::Node(node.to_string()),
    };
    Query::Near {
        near: from,
        query: Box::new(query),
    }
}

/// `query` narrowed by the request's `?filter=` expression, checked here against the
/// endpoint's selectors (a bad one is a 400 saying why) and applied by the server that
/// answers, in whichever DC. Endpoints Consul does not filter ignore the parameter, as
/// Consul does.
fn filtered(p: &Params, query: Query) -> Result<Query, HttpError> {
    use crate::state::filter::{FilterError, validate};
    let Some(filter) = p.get("filter").filter(|f| !f.trim().is_empty()) else {
        return Ok(query);
    };
    match validate(&query, filter) {
        Ok(()) => Ok(Query::Filtered {
            query: Box::new(query),
            filter: filter.to_string(),
        }),
        Err(FilterError::NotFilterable) => Ok(query),
        Err(e) => Err(HttpError::BadRequest(e.to_string())),
    }
}

/// The request's `?filter=` for an answer this agent builds itself (`agent/services`,
/// `agent/checks`), checked against `T`'s selectors.
fn local_filter<T: crate::state::filter::Filterable>(
    p: &Params,
) -> Result<Option<crate::state::filter::Filter<T>>, HttpError> {
    p.get("filter")
        .filter(|f| !f.trim().is_empty())
        .map(crate::state::filter::Filter::<T>::parse)
        .transpose()
        .map_err(|e| HttpError::BadRequest(e.to_string()))
}

/// Runs a read for an endpoint that takes `?dc=` and the consistency and blocking
/// parameters; returns Consul's headers with the answer.
async fn read(api: &Api, p: &Params, query: Query) -> Result<(HeaderMap, ReadOutcome), HttpError> {
    let opts = p.read_options()?;
    let query = filtered(p, query)?;
    let out = api.dispatcher.read(p.token(), p.dc(), query, opts).await?;
    Ok((read_headers(&out), out))
}

/// A blocking request answered from this agent's own state: `current` gives the answer
/// and whether it is ready (changed since what the client holds); it is asked now and after
/// every change on `changes`, until it is ready, `wait` runs out or the agent stops. The
/// last answer is returned either way.
async fn block_locally<T, R>(
    changes: &mut tokio::sync::watch::Receiver<T>,
    wait: std::time::Duration,
    shutdown: &CancellationToken,
    mut current: impl FnMut() -> Result<(R, bool), HttpError>,
) -> Result<R, HttpError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        changes.borrow_and_update();
        let (answer, ready) = current()?;
        if ready {
            return Ok(answer);
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Ok(answer) },
            () = tokio::time::sleep_until(deadline) => return Ok(answer),
            () = shutdown.cancelled() => return Ok(answer),
        }
    }
}

/// Runs a read of an endpoint Consul's agent cache serves (catalog/services,
/// catalog/service, health/service): with `?cached`, from the cache, with `X-Cache` and
/// `Age`; otherwise as [`read`].
async fn read_cacheable(
    api: &Api,
    p: &Params,
    query: Query,
) -> Result<(HeaderMap, Arc<ReadOutcome>), HttpError> {
    let Some(cache) = cache_asked(api, p)? else {
        let (headers, out) = read(api, p, query).await?;
        return Ok((headers, Arc::new(out)));
    };
    let opts = p.read_options()?;
    let query = filtered(p, query)?;
    let answer = cache
        .read(p.token(), p.dc(), query, p.2, opts.min_index, opts.wait)
        .await?;
    let mut headers = read_headers(&answer.outcome);
    cache_headers(&mut headers, answer.hit, answer.age);
    Ok((headers, answer.outcome))
}

/// The agent cache, when the request asks for it (`?cached`) and this agent has one;
/// `?cached` with `?consistent` is refused, as Consul does.
fn cache_asked<'a>(
    api: &'a Api,
    p: &Params,
) -> Result<Option<&'a crate::cache::AgentCache>, HttpError> {
    let Some(cache) = api.cache.as_ref().filter(|_| p.flag("cached")) else {
        return Ok(None);
    };
    if p.flag("consistent") {
        return Err(HttpError::BadRequest(
            "Cannot specify ?cached with ?consistent, conflicting semantics.".into(),
        ));
    }
    Ok(Some(cache))
}

/// Consul's headers on an answer from the agent cache: `X-Cache` and `Age`.
fn cache_headers(headers: &mut HeaderMap, hit: bool, age: std::time::Duration) {
    headers.insert(
        "X-Cache",
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    );
    headers.insert("Age", HeaderValue::from(age.as_secs()));
}

/// Applies a catalog write in `dc` (default: this one) with the request's token, and
/// answers Consul's `true`, or 400 with the refusal.
async fn write_ok(
    api: &Api,
    p: &Params,
    dc: Option<&str>,
    cmd: Command,
) -> Result<Response, HttpError> {
    match api.dispatcher.write(p.token(), dc, cmd).await? {
        CommandResult::Ok | CommandResult::Bool(true) => Ok(Json(true).into_response()),
        CommandResult::Bool(false) => Ok(Json(false).into_response()),
        CommandResult::Rejected(why) => Err(HttpError::BadRequest(why)),
        CommandResult::Batch(_) | CommandResult::Txn(_) => Err(HttpError::shape()),
    }
}

/// Largest KV value, as Consul's.
pub const MAX_KV_VALUE: usize = 512 * 1024;

/// Where a route's ACL check happens (declared with the route, so a route cannot be added
/// without saying; `tests/it/acl.rs` asks every route without a token under
/// `default_policy = "deny"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclCheck {
    /// None: public by design, as in Consul (the leader, the peers, the DC list).
    Public,
    /// By the server that answers, from the DC's state: every read and write of the
    /// catalog, KV, sessions and the ACL system goes through the dispatcher with the
    /// request's token.
    Data,
    /// By the handler, against the agent's own resources (`Api::authorize`): `agent:`,
    /// `node:` and `service:` rules for this agent's node, services and checks.
    Agent,
}

/// Declares the route table once: [`ROUTES`] (every path template with the methods it
/// takes, for the tests that walk it) and the router built from the same lines, so a route
/// cannot be served without being listed, nor take a method it does not list. Every other
/// method gets 405. State-changing routes take only Consul's documented method (`PUT` or
/// `DELETE`), never `GET`, so that a web page cannot change an agent through a link.
macro_rules! routes {
    ($($path:literal [$acl:ident] => $($method:ident($handler:path)).+;)*) => {
        /// Every route: its path template, the methods it takes (lowercase) and where its
        /// ACL check happens.
        pub const ROUTES: &[(&str, &[&str], AclCheck)] =
            &[$(($path, &[$(stringify!($method)),+], AclCheck::$acl)),*];

        fn routes() -> Router<Api> {
            Router::new()$(.route($path, axum::routing::MethodRouter::new()$(.$method($handler))+))*
        }
    };
}

routes! {
    "/" [Public] => get(ui::redirect);
    "/ui" [Public] => get(ui::redirect);
    "/ui/" [Public] => get(ui::index);
    "/ui/{*file}" [Public] => get(ui::file);
    "/metrics" [Agent] => get(prometheus);
    "/v1/status/leader" [Public] => get(status::leader);
    "/v1/status/peers" [Public] => get(status::peers);
    "/v1/catalog/register" [Data] => put(catalog::register);
    "/v1/catalog/deregister" [Data] => put(catalog::deregister);
    "/v1/catalog/datacenters" [Public] => get(catalog::datacenters);
    "/v1/catalog/nodes" [Data] => get(catalog::nodes);
    "/v1/catalog/services" [Data] => get(catalog::services);
    "/v1/catalog/service/{name}" [Data] => get(catalog::service);
    "/v1/catalog/node/{node}" [Data] => get(catalog::node);
    "/v1/internal/ui/services" [Data] => get(catalog::ui_services);
    "/v1/catalog/node-services/{node}" [Data] => get(catalog::node_services);
    "/v1/health/service/{name}" [Data] => get(health::service);
    "/v1/health/checks/{name}" [Data] => get(health::service_checks);
    "/v1/health/node/{node}" [Data] => get(health::node);
    "/v1/health/state/{state}" [Data] => get(health::state);
    "/v1/txn" [Data] => put(txn::txn);
    "/v1/operator/raft/configuration" [Agent] => get(operator::configuration);
    "/v1/operator/raft/peer" [Data] => delete(operator::remove_peer);
    "/v1/operator/raft/transfer-leader" [Data] => post(operator::transfer_leader);
    "/v1/operator/autopilot/health" [Agent] => get(operator::autopilot_health);
    "/v1/operator/keyring" [Data] => get(operator::keyring_list).post(operator::keyring_install).put(operator::keyring_use).delete(operator::keyring_remove);
    "/v1/snapshot" [Data] => get(snapshot::save).put(snapshot::restore);
    "/v1/query" [Data] => get(query::list).post(query::create);
    "/v1/query/{id}" [Data] => get(query::get).put(query::update).delete(query::delete);
    "/v1/query/{id}/execute" [Data] => get(query::execute);
    "/v1/query/{id}/explain" [Data] => get(query::explain);
    "/v1/coordinate/datacenters" [Public] => get(coordinate::datacenters);
    "/v1/coordinate/nodes" [Data] => get(coordinate::nodes);
    "/v1/coordinate/node/{node}" [Data] => get(coordinate::node);
    "/v1/coordinate/update" [Data] => put(coordinate::update);
    "/v1/agent/self" [Agent] => get(agent::self_info);
    "/v1/agent/members" [Agent] => get(agent::members);
    "/v1/agent/leave" [Agent] => put(agent::leave);
    "/v1/agent/force-leave/{node}" [Agent] => put(agent::force_leave);
    "/v1/agent/services" [Agent] => get(agent::services);
    "/v1/agent/checks" [Agent] => get(agent::checks);
    "/v1/agent/service/register" [Agent] => put(agent::register_service);
    "/v1/agent/service/deregister/{id}" [Agent] => put(agent::deregister_service);
    "/v1/agent/check/register" [Agent] => put(agent::register_check);
    "/v1/agent/check/deregister/{id}" [Agent] => put(agent::deregister_check);
    "/v1/agent/check/pass/{id}" [Agent] => put(agent::pass);
    "/v1/agent/check/warn/{id}" [Agent] => put(agent::warn);
    "/v1/agent/check/fail/{id}" [Agent] => put(agent::fail);
    "/v1/agent/check/update/{id}" [Agent] => put(agent::update);
    "/v1/agent/metrics" [Agent] => get(agent::metrics);
    "/v1/agent/service/{id}" [Agent] => get(agent_health::service);
    "/v1/agent/health/service/id/{id}" [Agent] => get(agent_health::by_id);
    "/v1/agent/health/service/name/{name}" [Agent] => get(agent_health::by_name);
    "/v1/agent/service/maintenance/{id}" [Agent] => put(agent_health::service_maintenance);
    "/v1/agent/maintenance" [Agent] => put(agent_health::node_maintenance);
    "/v1/agent/version" [Public] => get(agent_ops::version);
    "/v1/agent/host" [Agent] => get(agent_ops::host);
    "/v1/agent/join/{address}" [Agent] => put(agent_ops::join);
    "/v1/agent/reload" [Agent] => put(agent_ops::reload);
    "/v1/agent/monitor" [Agent] => get(agent_ops::monitor);
    "/v1/session/create" [Data] => put(session::create);
    "/v1/session/destroy/{id}" [Data] => put(session::destroy);
    "/v1/session/renew/{id}" [Data] => put(session::renew);
    "/v1/session/info/{id}" [Data] => get(session::info);
    "/v1/session/node/{node}" [Data] => get(session::node);
    "/v1/session/list" [Data] => get(session::all);
    "/v1/acl/bootstrap" [Data] => put(acl::bootstrap);
    "/v1/acl/policy" [Data] => put(acl::create_policy);
    "/v1/acl/policy/{id}" [Data] => get(acl::get_policy).put(acl::update_policy).delete(acl::delete_policy);
    "/v1/acl/policy/name/{name}" [Data] => get(acl::get_policy_named);
    "/v1/acl/policies" [Data] => get(acl::policies);
    "/v1/acl/role" [Data] => put(acl::create_role);
    "/v1/acl/role/{id}" [Data] => get(acl::get_role).put(acl::update_role).delete(acl::delete_role);
    "/v1/acl/role/name/{name}" [Data] => get(acl::get_role_named);
    "/v1/acl/roles" [Data] => get(acl::roles);
    "/v1/acl/token" [Data] => put(acl::create_token);
    "/v1/acl/token/self" [Data] => get(acl::token_self);
    "/v1/acl/token/{accessor}" [Data] => get(acl::get_token).put(acl::update_token).delete(acl::delete_token);
    "/v1/acl/tokens" [Data] => get(acl::tokens);
    "/v1/acl/replication" [Public] => get(acl::replication);
    "/v1/event/fire/{name}" [Data] => put(event::fire);
    "/v1/event/list" [Agent] => get(event::list);
    "/v1/kv/" [Data] => get(kv::get).put(kv::put).delete(kv::delete);
    "/v1/kv/{*key}" [Data] => get(kv::get).put(kv::put).delete(kv::delete);
}

/// The API's routes.
pub fn router(api: Api, body_timeout: std::time::Duration) -> Router {
    routes()
        .layer(DefaultBodyLimit::max(MAX_KV_VALUE))
        .layer(axum::middleware::from_fn_with_state(
            (api.metrics.http.clone(), body_timeout),
            count_request,
        ))
        .with_state(api)
}

/// Counts every request by route template (`/v1/kv/{*key}`, never the raw path; `unmatched`
/// for a path no route takes), method (`OTHER` beyond the standard ones) and status code,
/// and times it: a scan of random paths adds no series. A request's body must arrive within
/// `body_timeout` ([`limits::read_body`]; one middleware for both, as each costs a boxed
/// service per request).
async fn count_request(
    State((metrics, body_timeout)): State<(crate::metrics::HttpMetrics, std::time::Duration)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "OTHER",
    };
    let started = std::time::Instant::now();
    // Only a snapshot restore carries more than a KV value (the archive is read whole,
    // verified, then written as one Raft entry).
    let limit = if route == "/v1/snapshot" {
        snapshot::MAX_ARCHIVE
    } else {
        MAX_KV_VALUE
    };
    let resp = match limits::read_body(req, limit, body_timeout).await {
        Ok(req) => next.run(req).await,
        Err(refused) => refused,
    };
    metrics
        .requests
        .with_label_values(&[&route, method, resp.status().as_str()])
        .inc();
    metrics
        .seconds
        .with_label_values(&[&route, method])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// How long a refused connection's 429 may take to be written before it is dropped.
const REFUSAL_WRITE: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a connection may take to send a request's headers (slow-loris defence).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the API on `http` (plain) and, when configured, on `https` with its TLS config,
/// until `shutdown` fires (in-flight requests finish); returns the bound addresses and the
/// task. HTTP/1.1 only, as Consul's API: an idle connection then costs hyper's two buffers
/// and a small task, which matters with thousands of blocking queries held open.
pub async fn serve(
    http: SocketAddr,
    https: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    api: Api,
    config: crate::config::Limits,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, Option<SocketAddr>, tokio::task::JoinHandle<()>)> {
    let plain = tokio::net::TcpListener::bind(http).await?;
    let bound = plain.local_addr()?;
    let tls = match https {
        Some((addr, tls)) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Some((listener, tokio_rustls::TlsAcceptor::from(tls)))
        }
        None => None,
    };
    let bound_tls = match &tls {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let accepting = Accepting {
        metrics: api.metrics.http.clone(),
        app: router(api, config.http_body_read_timeout.0),
        limiter: limits::ConnLimiter::new(config.http_max_conns_per_client),
        shutdown,
    };
    let task = tokio::spawn(async move {
        let secure = async {
            if let Some((listener, acceptor)) = tls {
                accepting.run(listener, Some(acceptor)).await;
            }
        };
        tokio::join!(accepting.run(plain, None), secure);
    });
    Ok((bound, bound_tls, task))
}

/// What every listener of the API shares.
struct Accepting {
    metrics: crate::metrics::HttpMetrics,
    app: Router,
    limiter: limits::ConnLimiter,
    shutdown: CancellationToken,
}

/// How long a client has to finish the TLS handshake of an HTTPS connection.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Accepting {
    /// Accepts connections on `listener` (through `tls` when given) until shutdown, then
    /// lets every connection finish its request in flight.
    async fn run(&self, listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;
        use tokio::io::AsyncWriteExt;

        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // Connections live in this task's set: if the task is aborted (shutdown past its
        // bound), so is every request still in flight.
        let mut connections = tokio::task::JoinSet::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        loop {
            let (mut stream, peer) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            let Some(permit) = self.limiter.admit(peer.ip()) else {
                self.refused("per_client_limit");
                connections.spawn(async move {
                    let answer = stream.write_all(limits::TOO_MANY_CONNECTIONS);
                    let _ = tokio::time::timeout(REFUSAL_WRITE, answer).await;
                });
                continue;
            };
            let _ = stream.set_nodelay(true);
            let app = tower_layer::Layer::layer(
                &axum::Extension(params::PeerAddr(peer)),
                self.app.clone(),
            );
            let service = TowerToHyperService::new(app);
            let open = self.metrics.connections_open.clone();
            open.inc();
            match &tls {
                None => {
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    connections.spawn(async move {
                        let _ = conn.await;
                        open.dec();
                        drop(permit);
                    });
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let (watcher, http) = (graceful.watcher(), http.clone());
                    let refused = self.metrics.connections_refused.clone();
                    connections.spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                            Ok(Ok(stream)) => {
                                let conn = http.serve_connection(TokioIo::new(stream), service);
                                let _ = watcher.watch(conn).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                                refused.with_label_values(&["tls_handshake"]).inc();
                            }
                            Err(_) => {
                                refused.with_label_values(&["tls_handshake"]).inc();
                            }
                        }
                        open.dec();
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    }
}

/// `GET /metrics`: the Prometheus text format.
async fn prometheus(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let node = api.local.node.name.clone();
    api.authorize(
        &p,
        Permission::named(crate::acl::Resource::Agent, node, crate::acl::Access::Read),
    )
    .await?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        api.metrics.encode(),
    )
        .into_response())
}

/// Consul's read headers.
fn read_headers(out: &ReadOutcome) -> HeaderMap {
    let mut h = HeaderMap::new();
    let num = |n: u64| HeaderValue::from_str(&n.to_string()).expect("digits are a valid header");
    h.insert("X-Consul-Index", num(out.index.max(1)));
    h.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if out.meta.known_leader {
            "true"
        } else {
            "false"
        }),
    );
    h.insert("X-Consul-LastContact", num(out.meta.last_contact_ms));
    h.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static(out.mode.as_str()),
    );
    if out.filtered {
        h.insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
    }
    if let Some(stale) = &out.stale_from {
        // A server's last-known answer for a DC it could not reach: marked so that no one
        // takes it for fresh.
        h.insert(
            "X-Consul-Effective-Consistency",
            HeaderValue::from_static("stale"),
        );
        h.insert("Age", num(stale.age.as_secs()));
        if let Ok(dc) = HeaderValue::from_str(&stale.datacenter) {
            h.insert("X-Consulate-Unreachable-Datacenter", dc);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::ROUTES;

    /// Words of Consul's paths that name a change: a route holding one takes no GET, so a
    /// page a user opens cannot change an agent through a link or an image.
    const CHANGES: &[&str] = &[
        "register",
        "deregister",
        "leave",
        "pass",
        "warn",
        "fail",
        "update",
        "create",
        "destroy",
        "renew",
        "bootstrap",
    ];

    #[test]
    fn no_state_changing_route_takes_get() {
        for (path, methods, _) in ROUTES {
            let changes = path.split('/').any(|seg| CHANGES.contains(&seg));
            let writes = methods.iter().any(|m| *m != "get");
            assert!(
                !(changes && methods.contains(&"get")),
                "{path} changes state and takes GET"
            );
            let rest_object = path.starts_with("/v1/kv/")
                || *path == "/v1/query"
                || *path == "/v1/query/{id}"
                || *path == "/v1/snapshot"
                || *path == "/v1/operator/keyring"
                || ["policy", "role", "token"]
                    .iter()
                    .any(|o| path.starts_with(&format!("/v1/acl/{o}/{{")));
            assert!(
                !writes || !methods.contains(&"get") || rest_object,
                "{path}: only KV entries, prepared queries, ACL objects, snapshots and the \
                 keyring are read and written on one path"
            );
        }
        assert!(ROUTES.len() >= 36, "every route is in the table");
    }
}
