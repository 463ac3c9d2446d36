#![allow(clippy::derive_partial_eq_without_eq)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::{ChitchatId, FailureDetectorConfig, NodeState};

/// An optional user-defined callback executed when the self node is lagging behind.
pub type CatchupCallback = Box<dyn Fn() + Send>;

/// An optional user-defined predicate liveness predication applied on top of the output of the
/// failure detector.
pub type ExtraLivenessPredicate = Box<dyn Fn(&NodeState) -> bool + Send>;

/// A struct for configuring a Chitchat instance.
pub struct ChitchatConfig {
    pub chitchat_id: ChitchatId,
    pub cluster_id: String,
    pub gossip_interval: Duration,
    pub listen_addr: SocketAddr,
    pub seed_nodes: Vec<String>,
    pub failure_detector_config: FailureDetectorConfig,
    /// How long tombstoned key-value pairs are retained before garbage collection.
    ///
    /// Garbage collection runs during gossip rounds. Chitchat records the version of the latest
    /// garbage-collected tombstone so that peers which may have missed a deletion are reset and
    /// repopulated from the remaining state.
    pub marked_for_deletion_grace_period: Duration,
    /// An optional callback executed when the self node is lagging behind. It
    /// is meant to wire up an external mechanism capable of catching up the
    /// Chitchat state faster than the Chitchat protocol. That external
    /// mechanism will call [`crate::Chitchat::reset_node_state`] to communicate
    /// the results back to Chitchat. For instance, in Quickwit, we use a GRPC
    /// API to fetch the states from other nodes in the cluster.
    pub catchup_callback: Option<CatchupCallback>,
    // Extra lifeness predicate that can be used to define what a node being "live" means.
    // It can be used for instance, to only surface the nodes that are both alive according
    // to the failure detector, but also have a given set of required keys.
    pub extra_liveness_predicate: Option<ExtraLivenessPredicate>,
    /// Bounds the digests this node sends (see [`DigestBound`]); `None` sends the digest of
    /// every node, as the Scuttlebutt paper does.
    pub digest_bound: Option<DigestBound>,
}

/// Bounded digests: what keeps the bytes a node sends per gossip round independent of the
/// cluster's size.
///
/// A full digest names every node of the cluster, so each message grows with it (about 50
/// bytes per node) and past a thousand-odd nodes no longer fits in a datagram. With a
/// bound, the digest of a Syn names at most `max_nodes` nodes: the sender itself, nodes
/// whose state changed here within `recent_period` (a random sample of them when there are
/// many, so a change spreads epidemically), and the next nodes of a rotation through the
/// whole cluster (so every node is reconciled eventually). The exchange then reconciles
/// exactly those nodes, in both directions: the SynAck's digest and both deltas are
/// restricted to the nodes the Syn named (plus the responder itself), and a node absent
/// from a digest is no longer read as unknown to its sender.
///
/// Heartbeats travel in digests, so with a bound they reach each node less often and the
/// phi-accrual detector becomes slow to call a node dead: a cluster using a bound is meant
/// to detect failures by other means (e.g. SWIM probes) and to use chitchat for state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigestBound {
    /// Most nodes named in a Syn's digest (the sender included).
    pub max_nodes: usize,
    /// How long a node whose state changed here is preferred in the digests sent.
    pub recent_period: Duration,
    /// How often the work that reads every node (the failure detector's liveness update
    /// and garbage collection, the expiry of deleted keys) runs, instead of every gossip
    /// round: in a large cluster it costs more than the bounded exchanges themselves, and
    /// with failures detected by other means it need not run five times a second.
    pub housekeeping_period: Duration,
}

impl ChitchatConfig {
    #[cfg(test)]
    pub fn for_test(port: u16) -> Self {
        let chitchat_id = ChitchatId::for_local_test(port);
        let listen_addr = chitchat_id.gossip_advertise_addr;
        Self {
            chitchat_id,
            cluster_id: "default-cluster".to_string(),
            gossip_interval: Duration::from_millis(50),
            listen_addr,
            seed_nodes: Vec::new(),
            failure_detector_config: Default::default(),
            marked_for_deletion_grace_period: Duration::from_secs(10_000),
            catchup_callback: None,
            extra_liveness_predicate: None,
            digest_bound: None,
        }
    }
}

#[cfg(test)]
impl Default for ChitchatConfig {
    fn default() -> Self {
        let chitchat_id = ChitchatId::for_local_test(10_000);
        let listen_addr = chitchat_id.gossip_advertise_addr;
        Self {
            chitchat_id,
            cluster_id: "default-cluster".to_string(),
            gossip_interval: Duration::from_millis(1_000),
            listen_addr,
            seed_nodes: Vec::new(),
            failure_detector_config: Default::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60 * 15), // 15mn
            catchup_callback: None,
            extra_liveness_predicate: None,
            digest_bound: None,
        }
    }
}
