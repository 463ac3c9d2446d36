//! The entries of the catalog and KV store, and the register/deregister requests that
//! write them. Field meanings follow Consul's; the JSON shapes live in the http module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A health status, as Consul's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum HealthStatus {
    /// Healthy.
    Passing,
    /// Degraded but serving.
    Warning,
    /// Failing: excluded from `?passing` views and DNS.
    #[default]
    Critical,
}

impl HealthStatus {
    /// Consul's lowercase spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }
}

/// A catalog node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Node {
    /// The node's UUID (may be empty).
    pub id: String,
    /// The node name.
    pub node: String,
    /// Its address.
    pub address: String,
    /// Its datacenter.
    pub datacenter: String,
    /// Extra addresses (`lan`, `wan`, ...).
    pub tagged_addresses: BTreeMap<String, String>,
    /// User metadata.
    pub meta: BTreeMap<String, String>,
    /// Log index that created it.
    pub create_index: u64,
    /// Log index that last changed it.
    pub modify_index: u64,
}

/// Consul's service weights for DNS SRV answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while passing.
    pub passing: u32,
    /// Weight while warning.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service instance registered on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Service {
    /// The node it runs on.
    pub node: String,
    /// Instance ID, unique on the node (defaults to the service name).
    pub id: String,
    /// The service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address (empty: the node's).
    pub address: String,
    /// Port.
    pub port: u16,
    /// Extra addresses (`lan`, `wan`, ...).
    pub tagged_addresses: BTreeMap<String, String>,
    /// User metadata.
    pub meta: BTreeMap<String, String>,
    /// DNS weights.
    pub weights: Weights,
    /// Whether tags may be changed by the catalog (Consul's EnableTagOverride).
    pub enable_tag_override: bool,
    /// Log index that created it.
    pub create_index: u64,
    /// Log index that last changed it.
    pub modify_index: u64,
}

/// A health check, of a node or of one service on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Check {
    /// The node.
    pub node: String,
    /// Check ID, unique on the node.
    pub check_id: String,
    /// Human name.
    pub name: String,
    /// Current status.
    pub status: HealthStatus,
    /// Free-form notes.
    pub notes: String,
    /// Output of the last run.
    pub output: String,
    /// The service it checks ("" for a node check).
    pub service_id: String,
    /// That service's name.
    pub service_name: String,
    /// That service's tags.
    pub service_tags: Vec<String>,
    /// How the agent runs it (`ttl`, `http`, `tcp`, `script`; empty for a catalog check).
    pub kind: String,
    /// Log index that created it.
    pub create_index: u64,
    /// Log index that last changed it.
    pub modify_index: u64,
}

/// A KV entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: bytes::Bytes,
    /// Opaque user flags.
    pub flags: u64,
    /// The session holding the lock on this key, if any.
    pub session: Option<String>,
    /// How many times the lock was acquired.
    pub lock_index: u64,
    /// Log index that created it.
    pub create_index: u64,
    /// Log index that last changed it.
    pub modify_index: u64,
}

/// A service as given in a register request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceDefinition {
    /// Instance ID (empty: the name).
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Extra addresses.
    pub tagged_addresses: BTreeMap<String, String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// DNS weights.
    pub weights: Weights,
    /// Consul's EnableTagOverride.
    pub enable_tag_override: bool,
}

impl ServiceDefinition {
    /// The instance ID, defaulting to the service name as in Consul.
    pub fn effective_id(&self) -> &str {
        if self.id.is_empty() {
            &self.service
        } else {
            &self.id
        }
    }

    /// The instance on `node`; its indexes are set when it is written.
    pub(crate) fn into_service(self, node: String) -> Service {
        Service {
            node,
            id: self.effective_id().to_string(),
            service: self.service,
            tags: self.tags,
            address: self.address,
            port: self.port,
            tagged_addresses: self.tagged_addresses,
            meta: self.meta,
            weights: self.weights,
            enable_tag_override: self.enable_tag_override,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A check as given in a register request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckDefinition {
    /// Check ID.
    pub check_id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: HealthStatus,
    /// Notes.
    pub notes: String,
    /// Output.
    pub output: String,
    /// The service checked, if any.
    pub service_id: Option<String>,
    /// How the agent runs it (`ttl`, `http`, ...; empty for a catalog check).
    pub kind: String,
}

/// Consul's catalog register request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Node UUID.
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Tagged addresses.
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    pub node_meta: BTreeMap<String, String>,
    /// A service to register on the node.
    pub service: Option<ServiceDefinition>,
    /// Checks to register on the node.
    pub checks: Vec<CheckDefinition>,
}

/// Consul's catalog deregister request: the most specific of check, service, node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeregisterRequest {
    /// The node.
    pub node: String,
    /// A service on it (removed with its checks).
    pub service_id: Option<String>,
    /// A check on it.
    pub check_id: Option<String>,
}

/// What happens to the keys a session holds when it ends (Consul's `Behavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SessionBehavior {
    /// The locks are released; the keys stay.
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

impl SessionBehavior {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// A session: what applications hold locks with. It ends when destroyed, when any of its
/// checks goes critical or is removed, when its node is deregistered, or (with a TTL) when
/// its owner stops renewing it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Session {
    /// Its ID (a UUID).
    pub id: String,
    /// A human-readable name.
    pub name: String,
    /// The node it is tied to.
    pub node: String,
    /// Checks on the node that must not go critical (default `serfHealth`).
    pub node_checks: Vec<String>,
    /// Service checks on the node that must not go critical.
    pub service_checks: Vec<String>,
    /// After the session ends, how long its keys cannot be acquired by another.
    pub lock_delay: std::time::Duration,
    /// What happens to its keys when it ends.
    pub behavior: SessionBehavior,
    /// Without a renewal within (up to twice) this, the session ends.
    pub ttl: Option<std::time::Duration>,
    /// Log index that created it.
    pub create_index: u64,
    /// Log index that last changed it.
    pub modify_index: u64,
}

impl Session {
    /// Whether check `check_id` (on the session's node) is one of the session's.
    pub fn uses_check(&self, check_id: &str) -> bool {
        self.node_checks.iter().any(|c| c == check_id)
            || self.service_checks.iter().any(|c| c == check_id)
    }
}
