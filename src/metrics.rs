//! Prometheus metrics: one [`Metrics`] per agent (its own registry, so many agents can run
//! in one test process), holding a typed struct of metric handles per subsystem. Label
//! values are always drawn from bounded sets (ALPN, refusal reason, outcome), never from
//! addresses, keys or URLs.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of one agent, and the registry they are exposed from.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// QUIC transport and framed RPC.
    pub transport: TransportMetrics,
    /// Request routing (reads, writes, forwarding).
    pub rpc: RpcMetrics,
    /// LAN gossip (`pool="lan"`).
    pub gossip: GossipMetrics,
    /// WAN gossip among the servers of all DCs (`pool="wan"`).
    pub wan_gossip: GossipMetrics,
    /// Requests forwarded to other datacenters.
    pub federation: FederationMetrics,
    /// The HTTP API.
    pub http: HttpMetrics,
    /// Raft (servers; its gauges are read at scrape time by `raft::collector`).
    pub raft: RaftMetrics,
    /// The DNS interface.
    pub dns: DnsMetrics,
    /// ACL replication (servers of non-primary DCs).
    pub acl: AclMetrics,
    /// The agent cache (`?cached`).
    pub cache: CacheMetrics,
    build: IntGaugeVec,
}

/// The agent cache (`?cached`): how it answered, and what it holds.
#[derive(Clone)]
pub struct CacheMetrics {
    /// Cached reads by outcome: `hit`, `miss`, `stale_if_error` (a stale answer served
    /// because a fetch failed), `error`.
    pub requests: IntCounterVec,
    /// Entries held (kept fresh by a background blocking query, or, for prepared-query
    /// executions, as old as their fetch).
    pub entries: IntGauge,
    /// Approximate bytes held (the encoded answers).
    pub bytes: IntGauge,
    /// Entries dropped: `idle` (unused for the idle time) or `capacity` (over the cap).
    pub evictions: IntCounterVec,
}

impl CacheMetrics {
    fn register(r: &Registry) -> CacheMetrics {
        CacheMetrics {
            requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_cache_requests_total",
                        "Reads with ?cached, by outcome (hit, miss, stale_if_error, error).",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            entries: register(
                r,
                IntGauge::new(
                    "consulate_cache_entries",
                    "Answers the agent cache holds (kept fresh by a blocking query, or as old as their fetch for prepared-query executions).",
                )
                .expect("valid metric"),
            ),
            bytes: register(
                r,
                IntGauge::new(
                    "consulate_cache_bytes",
                    "Approximate bytes of the answers the agent cache holds.",
                )
                .expect("valid metric"),
            ),
            evictions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_cache_evictions_total",
                        "Cache entries dropped, by reason (idle, capacity).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// ACL replication from the primary DC (Consul's `/v1/acl/replication` figures).
#[derive(Clone)]
pub struct AclMetrics {
    /// The primary's ACL index this DC last replicated.
    pub replicated_index: IntGauge,
    /// When the last replication round succeeded (Unix seconds).
    pub last_success: IntGauge,
    /// Replication rounds that failed (primary unreachable, token refused, ...).
    pub errors: IntCounter,
    /// Tokens resolved elsewhere (by this agent's servers, or a non-replicating DC's
    /// servers by the primary), by how they were answered: `cached`, `resolved`,
    /// `refused`, `down_policy` (the resolver unreachable).
    pub token_resolutions: IntCounterVec,
}

/// Raft's counters and histograms (Consul's `consul.raft.*`).
#[derive(Clone)]
pub struct RaftMetrics {
    /// Time from a write's submission on the leader to its commit and apply (Consul's
    /// `consul.raft.commitTime`).
    pub commit_seconds: Histogram,
    /// Time to apply one batch of committed entries to the catalog and KV store (Consul's
    /// `consul.raft.fsm.apply`).
    pub apply_seconds: Histogram,
    /// Snapshots `taken` by this server and `installed` from a leader.
    pub snapshots: IntCounterVec,
    /// Times this server saw a new leader (Consul's `consul.raft.state.leader` counts
    /// elections won; this counts every change seen).
    pub leader_changes: IntCounter,
    /// Time of one commit of the Raft log (write and fsync; many appends share one).
    pub log_commit_seconds: Histogram,
    /// Raft RPCs this server sent that failed, by RPC (`append_entries`, `vote`,
    /// `install_snapshot`) and reason: `timeout` (openraft gave up waiting: it sends the
    /// same entries again at once), `unreachable`, `network`.
    pub rpc_failures: IntCounterVec,
    /// Dead servers autopilot removed from the Raft configuration (on the leader).
    pub autopilot_removed: IntCounter,
}

impl RaftMetrics {
    /// Handles not exposed anywhere (tests and tools that run Raft without an agent).
    pub fn unregistered() -> RaftMetrics {
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                .expect("valid metric")
        };
        RaftMetrics {
            commit_seconds: histogram(
                "consulate_raft_commit_seconds",
                "Time from a write's submission on the leader to its commit and apply \
                 (Consul: consul.raft.commitTime).",
            ),
            apply_seconds: histogram(
                "consulate_raft_apply_seconds",
                "Time to apply one batch of committed entries (Consul: consul.raft.fsm.apply).",
            ),
            snapshots: IntCounterVec::new(
                Opts::new(
                    "consulate_raft_snapshots_total",
                    "Snapshots taken by this server or installed from a leader, by kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            leader_changes: IntCounter::new(
                "consulate_raft_leader_changes_total",
                "Times this server saw a new leader.",
            )
            .expect("valid metric"),
            log_commit_seconds: histogram(
                "consulate_raft_log_commit_seconds",
                "Time of one commit of the Raft log to disk (write and fsync; concurrent \
                 appends share one).",
            ),
            rpc_failures: IntCounterVec::new(
                Opts::new(
                    "consulate_raft_rpc_failures_total",
                    "Raft RPCs sent by this server that failed, by RPC and reason (timeout: \
                     openraft stopped waiting and sends again; unreachable; network).",
                ),
                &["rpc", "reason"],
            )
            .expect("valid metric"),
            autopilot_removed: IntCounter::new(
                "consulate_autopilot_dead_servers_removed_total",
                "Dead servers autopilot removed from the Raft configuration (on the leader).",
            )
            .expect("valid metric"),
        }
    }

    fn register(r: &Registry) -> RaftMetrics {
        let m = RaftMetrics::unregistered();
        register(r, m.commit_seconds.clone());
        register(r, m.apply_seconds.clone());
        register(r, m.snapshots.clone());
        register(r, m.leader_changes.clone());
        register(r, m.rpc_failures.clone());
        register(r, m.log_commit_seconds.clone());
        register(r, m.autopilot_removed.clone());
        m
    }
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
    /// Agent RPCs answered, by type and outcome (`ok`, `error`; Consul's `consul.rpc.request`).
    pub requests: IntCounterVec,
    /// Requests a client agent sent on to another server of its DC because the one it tried
    /// failed without acting on them (every read; writes never delivered).
    pub resent: IntCounter,
    /// Writes answered "may have been applied": delivered to a server (or by a server to the
    /// leader) that was lost before it answered.
    pub indeterminate: IntCounter,
    /// Prepared-query failovers to another DC, by outcome (`answered`, `too_few`: it had
    /// fewer instances than asked, `error`: unreachable or failed).
    pub query_failovers: IntCounterVec,
}

/// Metrics of the HTTP API (Consul's `consul.http.*`).
#[derive(Clone)]
pub struct HttpMetrics {
    /// Requests by route template (never the raw path), method and status code.
    pub requests: IntCounterVec,
    /// Latency by route template and method.
    pub seconds: HistogramVec,
    /// Connections refused before any request, by reason (`per_client_limit`,
    /// `tls_handshake`).
    pub connections_refused: IntCounterVec,
    /// Open connections.
    pub connections_open: IntGauge,
}

/// Latency buckets (seconds) from 100 us to 10 s, for HTTP and cross-DC requests.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

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
            requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_rpc_requests_total",
                        "Agent RPCs answered by this agent, by type and outcome (ok, error).",
                    ),
                    &["type", "outcome"],
                )
                .expect("valid metric"),
            ),
            resent: register(
                &registry,
                IntCounter::new(
                    "consulate_rpc_resent_total",
                    "Requests sent on to another server after the one tried failed without \
                     acting on them.",
                )
                .expect("valid metric"),
            ),
            indeterminate: register(
                &registry,
                IntCounter::new(
                    "consulate_rpc_writes_indeterminate_total",
                    "Writes answered 'may have been applied': delivered to a server that was \
                     lost before it answered.",
                )
                .expect("valid metric"),
            ),
            query_failovers: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_query_failovers_total",
                        "Prepared-query failovers to another DC, by outcome (answered, \
                         too_few, error).",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
        };
        let gossip = GossipMetrics::register(&registry);
        let wan_gossip = gossip.pool("wan");
        let federation = FederationMetrics::register(&registry);
        let http = HttpMetrics {
            requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_http_requests_total",
                        "HTTP API requests by route template, method and status code.",
                    ),
                    &["route", "method", "code"],
                )
                .expect("valid metric"),
            ),
            seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "consulate_http_request_duration_seconds",
                        "HTTP API request latency by route template and method (blocking \
                         queries included).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route", "method"],
                )
                .expect("valid metric"),
            ),
            connections_refused: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_http_connections_refused_total",
                        "HTTP connections closed before any request, by reason \
                         (per_client_limit: answered 429, the client IP holds too many; \
                         tls_handshake: the HTTPS handshake failed or timed out).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            connections_open: register(
                &registry,
                IntGauge::new(
                    "consulate_http_connections_open",
                    "Open HTTP API connections.",
                )
                .expect("valid metric"),
            ),
        };
        let raft = RaftMetrics::register(&registry);
        let dns = DnsMetrics::register(&registry);
        let cache = CacheMetrics::register(&registry);
        let build = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "consulate_build_info",
                    "Always 1; the labels name this agent's build, datacenter and role (join \
                     on `instance` to group other series by datacenter).",
                ),
                &["version", "datacenter", "role"],
            )
            .expect("valid metric"),
        );
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let acl = AclMetrics {
            replicated_index: register(
                &registry,
                IntGauge::new(
                    "consulate_acl_replicated_index",
                    "The primary DC's ACL index this DC last replicated.",
                )
                .expect("valid metric"),
            ),
            last_success: register(
                &registry,
                IntGauge::new(
                    "consulate_acl_replication_last_success_seconds",
                    "When ACL replication last succeeded (Unix time).",
                )
                .expect("valid metric"),
            ),
            errors: register(
                &registry,
                IntCounter::new(
                    "consulate_acl_replication_errors_total",
                    "ACL replication rounds that failed.",
                )
                .expect("valid metric"),
            ),
            token_resolutions: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_acl_token_resolutions_total",
                        "Tokens resolved elsewhere (by this agent's servers, or by the primary \
                         DC), by how: cached, resolved, refused, down_policy (the resolver \
                         unreachable).",
                    ),
                    &["how"],
                )
                .expect("valid metric"),
            ),
        };
        Metrics {
            registry,
            transport,
            rpc,
            gossip,
            wan_gossip,
            federation,
            http,
            raft,
            dns,
            acl,
            cache,
            build,
        }
    }

    /// Names this agent in `consulate_build_info` (once, at start).
    pub fn set_identity(&self, datacenter: &str, role: &str) {
        self.build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), datacenter, role])
            .set(1);
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
    /// RPC requests whose caller went away before the answer (stream stopped or
    /// connection lost): their handler was cancelled, by ALPN.
    pub requests_abandoned: IntCounterVec,
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
            requests_abandoned: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_rpc_requests_abandoned_total",
                        "Requests whose caller went away before they were answered (stream \
                         stopped or connection lost), their handling cancelled, by ALPN.",
                    ),
                    &["alpn"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// Metrics of gossip (Consul's `consul.serf.*`, `consul.memberlist.*`), one handle per
/// pool: `lan` (chitchat over sealed UDP) and `wan` (chitchat over QUIC).
#[derive(Clone)]
pub struct GossipMetrics {
    pool: &'static str,
    /// Messages sent and received, by pool and direction.
    pub packets: IntCounterVec,
    /// Bytes sent and received, by pool and direction.
    pub bytes: IntCounterVec,
    /// Messages dropped, by pool and reason (`decrypt`, `malformed`, `oversized`,
    /// `queue_full`, `unreachable`, `probe_backlog`).
    pub dropped: IntCounterVec,
    /// LAN failure detection (SWIM), by result: `ok` (a probe was acked), `suspect` (not
    /// acked, directly or indirectly: a suspicion published), `refuted` (a suspicion of
    /// this agent refuted).
    pub probes: IntCounterVec,
    /// Members by pool and status (`alive`, `failed`, `left`).
    pub members: IntGaugeVec,
    /// Members this agent saw become failed, by pool (Consul: `consul.serf.member.failed`).
    pub member_failures: IntCounterVec,
    /// Round trips measured on the gossip path and fed to this agent's network coordinate,
    /// by pool and outcome (`ok`, `rejected`: out of range or a bad peer coordinate).
    pub coordinate_samples: IntCounterVec,
    /// Keyring operations this agent was asked for, by operation and result.
    pub keyring_operations: IntCounterVec,
    /// Keys in this agent's LAN keyring.
    pub keyring_keys: IntGauge,
    /// LAN push-pull syncs, by side (`pulled`: asked by this agent; `served`) and result
    /// (`ok`, `io`, `timeout`, `busy`, `decrypt`, `malformed`, `oversized`,
    /// `wrong_cluster`).
    pub syncs: IntCounterVec,
    /// Nodes this agent first learned of through a sync.
    pub sync_nodes: IntCounterVec,
}

impl GossipMetrics {
    fn register(r: &Registry) -> GossipMetrics {
        let vec = |name: &str, help: &str, label: &str| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), &["pool", label]).expect("valid metric"),
            )
        };
        GossipMetrics {
            pool: "lan",
            packets: vec(
                "consulate_gossip_packets_total",
                "Gossip messages, by pool (lan/wan) and direction (in/out).",
                "direction",
            ),
            bytes: vec(
                "consulate_gossip_bytes_total",
                "Gossip bytes on the wire, by pool (lan/wan) and direction (in/out).",
                "direction",
            ),
            dropped: vec(
                "consulate_gossip_packets_dropped_total",
                "Gossip messages dropped, by pool and reason (decrypt, malformed, oversized, \
                 queue_full, unreachable, probe_backlog).",
                "reason",
            ),
            probes: vec(
                "consulate_gossip_probes_total",
                "Failure detection probes, by pool and result (ok: acked; suspect: not \
                 acked, a suspicion published; refuted: a suspicion of this agent refuted).",
                "result",
            ),
            coordinate_samples: vec(
                "consulate_coordinate_samples_total",
                "Round trips measured on the gossip path and fed to this agent's network \
                 coordinate, by pool and outcome (ok, rejected).",
                "outcome",
            ),
            keyring_operations: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_keyring_operations_total",
                        "Gossip keyring operations this agent was asked for, by operation \
                         (install, use, remove) and result (ok: every live member applied \
                         it; error).",
                    ),
                    &["op", "result"],
                )
                .expect("valid metric"),
            ),
            keyring_keys: register(
                r,
                IntGauge::new(
                    "consulate_keyring_keys",
                    "Keys in this agent's LAN gossip keyring (0: gossip not encrypted).",
                )
                .expect("valid metric"),
            ),
            syncs: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_gossip_syncs_total",
                        "LAN push-pull state syncs over TCP, by side (pulled, served) and \
                         result (ok, io, timeout, busy, decrypt, malformed, oversized, \
                         wrong_cluster).",
                    ),
                    &["pool", "side", "result"],
                )
                .expect("valid metric"),
            ),
            sync_nodes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_gossip_sync_nodes_total",
                        "Nodes this agent first learned of through a push-pull sync, by pool.",
                    ),
                    &["pool"],
                )
                .expect("valid metric"),
            ),
            member_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_gossip_member_failures_total",
                        "Members this agent saw become failed, by pool (lan/wan).",
                    ),
                    &["pool"],
                )
                .expect("valid metric"),
            ),
            members: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "consulate_gossip_members",
                        "Gossip members this agent knows, by pool (lan/wan) and status \
                         (alive, failed, left).",
                    ),
                    &["pool", "status"],
                )
                .expect("valid metric"),
            ),
        }
    }

    /// The same metric families, labelled for `pool`.
    fn pool(&self, pool: &'static str) -> GossipMetrics {
        GossipMetrics {
            pool,
            ..self.clone()
        }
    }

    /// Counts a probe's outcome (`ok`, `suspect`, `refuted`).
    pub fn probe(&self, result: &'static str) {
        self.probes.with_label_values(&[self.pool, result]).inc();
    }

    /// Counts a message sent.
    pub fn sent(&self, bytes: usize) {
        self.packets.with_label_values(&[self.pool, "out"]).inc();
        self.bytes
            .with_label_values(&[self.pool, "out"])
            .inc_by(bytes as u64);
    }

    /// Counts a message received.
    pub fn received(&self, bytes: usize) {
        self.packets.with_label_values(&[self.pool, "in"]).inc();
        self.bytes
            .with_label_values(&[self.pool, "in"])
            .inc_by(bytes as u64);
    }

    /// Counts a message dropped for `reason`.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.with_label_values(&[self.pool, reason]).inc();
    }

    /// Counts a round trip fed to the coordinate (`ok`) or refused.
    pub fn coordinate_sample(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "rejected" };
        self.coordinate_samples
            .with_label_values(&[self.pool, outcome])
            .inc();
    }

    /// Counts a keyring operation `op` that every live member applied (`ok`) or not.
    pub fn keyring_operation(&self, op: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.keyring_operations
            .with_label_values(&[op, result])
            .inc();
    }

    /// Sets the number of keys in the LAN keyring.
    pub fn set_keyring_keys(&self, n: usize) {
        self.keyring_keys.set(n as i64);
    }

    /// Counts a member seen to fail.
    pub fn member_failed(&self) {
        self.member_failures.with_label_values(&[self.pool]).inc();
    }

    /// Counts a push-pull sync: `side` `pulled` or `served`, and its result.
    pub fn sync(&self, side: &'static str, result: &'static str) {
        self.syncs
            .with_label_values(&[self.pool, side, result])
            .inc();
    }

    /// Counts the nodes a sync taught this agent.
    pub fn sync_learned(&self, n: usize) {
        self.sync_nodes
            .with_label_values(&[self.pool])
            .inc_by(n as u64);
    }

    /// Sets the number of members in `status`.
    pub fn set_members(&self, status: &'static str, n: usize) {
        self.members
            .with_label_values(&[self.pool, status])
            .set(n as i64);
    }
}

/// Metrics of cross-DC forwarding (Consul's `consul.rpc.cross-dc`).
#[derive(Clone)]
pub struct FederationMetrics {
    /// Requests forwarded to another DC, by target datacenter (`unknown` for a DC not in
    /// the WAN pool, so user input never becomes a label) and outcome (`ok`, `failover`:
    /// answered after a server failed, `no_path`, `unreachable`: no server reached,
    /// `error`).
    pub forwards: IntCounterVec,
    /// Latency of forwarded requests that were answered, by target datacenter.
    pub seconds: HistogramVec,
    /// Attempts on one remote server that failed and marked it, by reason
    /// (`unreachable`, `timeout`).
    pub server_failures: IntCounterVec,
    /// Reads and prepared-query executions for another DC that joined an identical one in
    /// flight instead of being forwarded themselves.
    pub coalesced: IntCounter,
    /// Reads for an unreachable DC answered with the last answer this server got for them
    /// (`stale-if-error`), by datacenter.
    pub stale_answers: IntCounterVec,
}

impl FederationMetrics {
    fn register(r: &Registry) -> FederationMetrics {
        FederationMetrics {
            forwards: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_rpc_cross_dc_total",
                        "Requests forwarded to another datacenter, by datacenter and outcome \
                         (Consul: consul.rpc.cross-dc).",
                    ),
                    &["datacenter", "outcome"],
                )
                .expect("valid metric"),
            ),
            seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "consulate_rpc_cross_dc_seconds",
                        "Latency of requests answered by another datacenter, by datacenter \
                         (blocking queries included).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["datacenter"],
                )
                .expect("valid metric"),
            ),
            server_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_federation_server_failures_total",
                        "Forwarding attempts on a remote server that failed and marked it, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            coalesced: register(
                r,
                IntCounter::new(
                    "consulate_federation_coalesced_total",
                    "Reads and prepared-query executions for another DC that shared an identical one's forward in flight.",
                )
                .expect("valid metric"),
            ),
            stale_answers: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_federation_stale_answers_total",
                        "Reads for an unreachable DC answered with this server's last answer \
                         to them (stale-if-error), by datacenter.",
                    ),
                    &["datacenter"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// The DNS interface (Consul's `consul.dns.*`).
#[derive(Clone)]
pub struct DnsMetrics {
    /// Queries by question type (`A`, `AAAA`, `SRV`, `SOA`, `NS`, `ANY`, `other`, `none`
    /// for packets without a readable question) and outcome (`ok`, `nxdomain`, `refused`,
    /// `servfail`, `forwarded`, `malformed`, `notimp`).
    pub queries: IntCounterVec,
    /// Time from receiving a query to having its answer, by protocol (`udp`, `tcp`).
    pub seconds: HistogramVec,
    /// Lookups of names in another datacenter, by outcome (`ok`, `nxdomain`, `servfail`).
    pub cross_dc: IntCounterVec,
    /// UDP answers cut to the client's size (TC set; the client retries over TCP).
    pub truncated: prometheus::IntCounter,
    /// Queries dropped unanswered, by reason (`overloaded`: too many in flight,
    /// `tcp_limit`: too many TCP connections).
    pub dropped: IntCounterVec,
}

impl DnsMetrics {
    fn register(r: &Registry) -> DnsMetrics {
        DnsMetrics {
            queries: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_dns_queries_total",
                        "DNS queries by question type and outcome.",
                    ),
                    &["type", "outcome"],
                )
                .expect("valid metric"),
            ),
            seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "consulate_dns_query_duration_seconds",
                        "DNS query latency, by protocol (Consul: consul.dns.domain_query).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["protocol"],
                )
                .expect("valid metric"),
            ),
            cross_dc: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_dns_cross_dc_lookups_total",
                        "DNS lookups of names in another datacenter, by outcome.",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            truncated: register(
                r,
                prometheus::IntCounter::new(
                    "consulate_dns_truncated_total",
                    "UDP answers cut to the client's size, TC set.",
                )
                .expect("valid metric"),
            ),
            dropped: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "consulate_dns_dropped_total",
                        "DNS queries dropped unanswered, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
        }
    }
}
