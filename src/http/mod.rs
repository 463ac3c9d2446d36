//! Consul's HTTP API (axum). Handlers only translate: path and query parameters into a
//! typed query or command for the [`Dispatcher`], and its answer into Consul's JSON shapes
//! and `X-Consul-*` headers. Only this module knows JSON; errors become status codes in one
//! place ([`error`]).

pub mod error;
pub mod kv;
pub mod params;
pub mod status;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Dispatcher, ReadOutcome};
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    dispatcher: Dispatcher,
    metrics: Metrics,
}

/// Largest KV value, as Consul's.
pub const MAX_KV_VALUE: usize = 512 * 1024;

/// The API's routes.
pub fn router(dispatcher: Dispatcher, metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(prometheus))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .layer(DefaultBodyLimit::max(MAX_KV_VALUE))
        .with_state(Api {
            dispatcher,
            metrics,
        })
}

/// Binds the HTTP listener and serves until `shutdown` fires (in-flight requests finish).
pub async fn serve(
    addr: SocketAddr,
    dispatcher: Dispatcher,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(dispatcher, metrics);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
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
