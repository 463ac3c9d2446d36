//! Consul's HTTP API (axum). Handlers only translate: path and query parameters into a
//! typed query or command for the [`Dispatcher`], and its answer into Consul's JSON shapes
//! and `X-Consul-*` headers. Only this module knows JSON; errors become status codes in one
//! place ([`error`]).

pub mod agent;
pub mod catalog;
pub mod error;
pub mod health;
pub mod json;
pub mod kv;
pub mod params;
pub mod session;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::agent::local::LocalAgent;
use crate::dispatch::Dispatcher;
use crate::gossip::Member;
use crate::metrics::Metrics;
use crate::rpc::ReadOutcome;
use crate::state::query::Query;
use crate::state::{Command, CommandResult};
use error::HttpError;
use params::Params;

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    dispatcher: Dispatcher,
    local: Arc<LocalAgent>,
    members: tokio::sync::watch::Receiver<Vec<Member>>,
    metrics: Metrics,
    /// The agent's shutdown signal (`/v1/agent/leave` fires it).
    shutdown: CancellationToken,
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
        Api {
            dispatcher,
            local,
            members,
            metrics,
            shutdown: leave,
        }
    }
}

/// Runs a read for an endpoint that takes `?dc=` and the consistency and blocking
/// parameters; returns Consul's headers with the answer.
async fn read(api: &Api, p: &Params, query: Query) -> Result<(HeaderMap, ReadOutcome), HttpError> {
    let opts = p.read_options()?;
    let out = api.dispatcher.read(p.dc(), query, opts).await?;
    Ok((read_headers(&out), out))
}

/// Applies a catalog write in `dc` (default: this one) and answers Consul's `true`, or 400
/// with the refusal.
async fn write_ok(api: &Api, dc: Option<&str>, cmd: Command) -> Result<Response, HttpError> {
    match api.dispatcher.write(dc, cmd).await? {
        CommandResult::Ok | CommandResult::Bool(true) => Ok(Json(true).into_response()),
        CommandResult::Bool(false) => Ok(Json(false).into_response()),
        CommandResult::Rejected(why) => Err(HttpError::BadRequest(why)),
        CommandResult::Batch(_) => Err(HttpError::shape()),
    }
}

/// Largest KV value, as Consul's.
pub const MAX_KV_VALUE: usize = 512 * 1024;

/// The API's routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/metrics", get(prometheus))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/checks/{name}", get(health::service_checks))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/agent/self", get(agent::self_info))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/service/register", put(agent::register_service))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent::deregister_service).get(agent::deregister_service),
        )
        .route("/v1/agent/check/register", put(agent::register_check))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(agent::deregister_check).get(agent::deregister_check),
        )
        .route(
            "/v1/agent/check/pass/{id}",
            put(agent::pass).get(agent::pass),
        )
        .route(
            "/v1/agent/check/warn/{id}",
            put(agent::warn).get(agent::warn),
        )
        .route(
            "/v1/agent/check/fail/{id}",
            put(agent::fail).get(agent::fail),
        )
        .route("/v1/agent/check/update/{id}", put(agent::update))
        .route("/v1/agent/metrics", get(agent::metrics))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::all))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .layer(DefaultBodyLimit::max(MAX_KV_VALUE))
        .layer(axum::middleware::from_fn_with_state(
            api.metrics.http.clone(),
            count_request,
        ))
        .with_state(api)
}

/// Counts every request by route template (`/v1/kv/{*key}`, never the raw path; `unmatched`
/// for a path no route takes), method (`OTHER` beyond the standard ones) and status code,
/// and times it: a scan of random paths adds no series.
async fn count_request(
    State(metrics): State<crate::metrics::HttpMetrics>,
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
    let resp = next.run(req).await;
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

/// How long a connection may take to send a request's headers (slow-loris defence).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds the HTTP listener and serves until `shutdown` fires (in-flight requests finish).
/// HTTP/1.1 only, as Consul's plain-HTTP API: an idle connection then costs hyper's two
/// buffers and a small task, which matters with thousands of blocking queries held open.
pub async fn serve(
    addr: SocketAddr,
    api: Api,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(api);
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // Connections live in this task's set: if the task is aborted (shutdown past its
        // bound), so is every request still in flight.
        let mut connections = tokio::task::JoinSet::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            while connections.try_join_next().is_some() {}
            connections.spawn(async move {
                let _ = conn.await;
            });
        }
        drop(listener);
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    });
    Ok((bound, task))
}

/// `GET /metrics`: the Prometheus text format.
async fn prometheus(State(api): State<Api>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        api.metrics.encode(),
    )
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
    h
}
