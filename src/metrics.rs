//! Prometheus metrics: one [`Metrics`] per agent (its own registry, so many agents can run
//! in one test process), holding a typed struct of metric handles per subsystem. Label
//! values are always drawn from bounded sets (ALPN, refusal reason, outcome), never from
//! addresses, keys or URLs.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every metric of one agent, and the registry they are exposed from.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// QUIC transport and framed RPC.
    pub transport: TransportMetrics,
}

impl Metrics {
    /// Creates and registers every metric family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let transport = TransportMetrics::register(&registry);
        Metrics {
            registry,
            transport,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Metrics of the QUIC transport.
#[derive(Clone)]
pub struct TransportMetrics {
    /// Open QUIC connections by ALPN and direction (`in`/`out`).
    pub connections_open: IntGaugeVec,
    /// Connections accepted after authorization, by ALPN.
    pub handshakes_accepted: IntCounterVec,
    /// Connections refused, by reason (TLS failure, wrong identity for the ALPN, ...).
    pub handshakes_refused: IntCounterVec,
    /// Request frames rejected by the RPC layer, by reason (`malformed`, `oversized`).
    pub frames_rejected: IntCounterVec,
    /// RPC requests served, by ALPN.
    pub requests_served: IntCounterVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique within a registry");
    c
}

impl TransportMetrics {
    fn register(r: &Registry) -> TransportMetrics {
        TransportMetrics {
            connections_open: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "consulate_transport_connections_open",
                        "Open QUIC connections by ALPN and direction.",
                    ),
                    &["alpn", "direction"],
                )
                .expect("valid metric"),
            ),
            handshakes_accepted: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_transport_handshakes_accepted_total",
                        "Incoming QUIC connections accepted after TLS and authorization, by ALPN.",
                    ),
                    &["alpn"],
                )
                .expect("valid metric"),
            ),
            handshakes_refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_transport_handshakes_refused_total",
                        "Incoming QUIC connections refused, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            frames_rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_rpc_frames_rejected_total",
                        "Request frames rejected before reaching a handler, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            requests_served: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_rpc_requests_served_total",
                        "Requests answered by this agent's QUIC services, by ALPN.",
                    ),
                    &["alpn"],
                )
                .expect("valid metric"),
            ),
        }
    }
}
