//! Raft and catalog gauges read at scrape time: nothing is maintained between scrapes, so a
//! server that nobody scrapes pays nothing, and a scrape costs one pass over openraft's
//! metrics and one count of the catalog (about a microsecond per catalog entry).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};

use super::RaftNode;
use crate::state::HealthStatus;

/// The scrape-time collector of one server (registered by the agent's wiring).
pub struct RaftCollector {
    raft: RaftNode,
    state: IntGaugeVec,
    term: IntGauge,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    last_contact_ms: IntGauge,
    nodes: IntGauge,
    services: IntGauge,
    instances: IntGauge,
    checks: IntGaugeVec,
    kv_keys: IntGauge,
    kv_woken: prometheus::IntCounter,
}

const STATES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

impl RaftCollector {
    /// A collector reading `raft` and its catalog.
    pub fn new(raft: RaftNode) -> RaftCollector {
        RaftCollector {
            raft,
            state: IntGaugeVec::new(
                Opts::new(
                    "consulate_raft_state",
                    "1 for this server's current Raft state (leader, follower, candidate, \
                     learner, shutdown), 0 for the others (Consul: consul.raft.state.*).",
                ),
                &["state"],
            )
            .expect("valid metric"),
            term: gauge("consulate_raft_term", "The current Raft term."),
            last_log_index: gauge(
                "consulate_raft_last_log_index",
                "Index of the last entry in this server's Raft log.",
            ),
            applied_index: gauge(
                "consulate_raft_applied_index",
                "Index of the last entry applied to the catalog and KV store \
                 (Consul: consul.raft.applied_index).",
            ),
            snapshot_index: gauge(
                "consulate_raft_snapshot_index",
                "Index the last snapshot covers (0: none).",
            ),
            last_contact_ms: gauge(
                "consulate_raft_last_contact_milliseconds",
                "Milliseconds since a leader was last heard from (a leader: since a quorum \
                 acknowledged it; Consul: consul.raft.leader.lastContact). -1: never.",
            ),
            nodes: gauge(
                "consulate_catalog_nodes",
                "Nodes in the catalog as this server holds it.",
            ),
            services: gauge(
                "consulate_catalog_services",
                "Distinct service names in the catalog.",
            ),
            instances: gauge(
                "consulate_catalog_service_instances",
                "Service instances in the catalog.",
            ),
            checks: IntGaugeVec::new(
                Opts::new(
                    "consulate_catalog_checks",
                    "Health checks in the catalog by status (passing, warning, critical).",
                ),
                &["status"],
            )
            .expect("valid metric"),
            kv_keys: gauge("consulate_kv_keys", "Keys in the KV store."),
            kv_woken: prometheus::IntCounter::new(
                "consulate_kv_waiters_woken_total",
                "Blocking KV queries woken by writes to the key or prefix they wait on.",
            )
            .expect("valid metric"),
        }
    }

    fn update(&self) {
        let m = self.raft.raft().metrics().borrow().clone();
        let current = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        for s in STATES {
            self.state
                .with_label_values(&[s])
                .set(i64::from(s == current));
        }
        self.term.set(m.current_term as i64);
        self.last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        self.applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.snapshot_index
            .set(m.snapshot.map_or(0, |l| l.index) as i64);
        let contact = if current == "leader" {
            m.millis_since_quorum_ack
        } else {
            self.raft.leader_contact_ms()
        };
        self.last_contact_ms.set(contact.map_or(-1, |ms| ms as i64));
        let r = self.raft.read();
        let c = r.state.counts();
        self.nodes.set(c.nodes as i64);
        self.services.set(c.services as i64);
        self.instances.set(c.instances as i64);
        for (status, n) in [
            (HealthStatus::Passing, c.passing),
            (HealthStatus::Warning, c.warning),
            (HealthStatus::Critical, c.critical),
        ] {
            self.checks
                .with_label_values(&[status.as_str()])
                .set(n as i64);
        }
        self.kv_keys.set(c.kv_keys as i64);
        let woken = r.state.kv_waiters_woken();
        self.kv_woken
            .inc_by(woken.saturating_sub(self.kv_woken.get()));
    }

    fn parts(&self) -> [&dyn Collector; 12] {
        [
            &self.state,
            &self.term,
            &self.last_log_index,
            &self.applied_index,
            &self.snapshot_index,
            &self.last_contact_ms,
            &self.nodes,
            &self.services,
            &self.instances,
            &self.checks,
            &self.kv_keys,
            &self.kv_woken,
        ]
    }
}

impl Collector for RaftCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}
