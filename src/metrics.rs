//! Prometheus metrics: one [`Metrics`] per agent (its own registry, so many agents can run
//! in one test process), holding a typed struct of metric handles per subsystem. Label
//! values are always drawn from bounded sets (ALPN, refusal reason, outcome), never from
//! addresses, keys or URLs.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric of one agent, and the registry they are exposed from.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// QUIC transport and framed RPC.
    pub transport: TransportMetrics,
    /// Request routing (reads, writes, forwarding).
    pub rpc: RpcMetrics,
    /// LAN gossip.
    pub gossip: GossipMetrics,
}

/// Counts one in-flight thing on a gauge for as long as it lives, also when the future
/// holding it is cancelled.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Metrics of request routing.
#[derive(Clone)]
pub struct RpcMetrics {
    /// Blocking queries currently waiting on this agent (Consul's `consul.rpc.queries_blocking`).
    pub queries_blocking: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let transport = TransportMetrics::register(&registry);
        let rpc = RpcMetrics {
            queries_blocking: register(
                &registry,
                IntGauge::new(
                    "consulate_rpc_queries_blocking",
                    "Blocking queries currently waiting for a change.",
                )
                .expect("valid metric"),
            ),
        };
        let gossip = GossipMetrics::register(&registry);
        Metrics {
            registry,
            transport,
            rpc,
            gossip,
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
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

/// Metrics of LAN gossip (Consul's `consul.serf.*`, `consul.memberlist.*`, network `lan`).
#[derive(Clone)]
pub struct GossipMetrics {
    /// Datagrams sent and received.
    pub packets: IntCounterVec,
    /// Bytes sent and received.
    pub bytes: IntCounterVec,
    /// Datagrams dropped, by reason (`decrypt`, `malformed`, `oversized`).
    pub dropped: IntCounterVec,
    /// Members by status (`alive`, `failed`, `left`).
    pub members: IntGaugeVec,
}

impl GossipMetrics {
    fn register(r: &Registry) -> GossipMetrics {
        GossipMetrics {
            packets: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_gossip_packets_total",
                        "LAN gossip datagrams, by direction (in/out).",
                    ),
                    &["direction"],
                )
                .expect("valid metric"),
            ),
            bytes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_gossip_bytes_total",
                        "LAN gossip bytes on the wire, by direction (in/out).",
                    ),
                    &["direction"],
                )
                .expect("valid metric"),
            ),
            dropped: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_gossip_packets_dropped_total",
                        "LAN gossip datagrams dropped, by reason (decrypt, malformed, oversized).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            members: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "consulate_gossip_members",
                        "LAN members this agent knows, by status (alive, failed, left).",
                    ),
                    &["status"],
                )
                .expect("valid metric"),
            ),
        }
    }

    /// Counts a datagram sent.
    pub fn sent(&self, bytes: usize) {
        self.packets.with_label_values(&["out"]).inc();
        self.bytes.with_label_values(&["out"]).inc_by(bytes as u64);
    }

    /// Counts a datagram received.
    pub fn received(&self, bytes: usize) {
        self.packets.with_label_values(&["in"]).inc();
        self.bytes.with_label_values(&["in"]).inc_by(bytes as u64);
    }

    /// Counts a datagram dropped for `reason`.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.with_label_values(&[reason]).inc();
    }
}
