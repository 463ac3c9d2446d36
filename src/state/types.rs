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

/// The longest ID, name, node name or tag a registration may carry: far more than any real
/// one, and short enough that whatever is registered can be named in a URL again (to read
/// or deregister it).
pub const MAX_NAME_LEN: usize = 512;
/// Metadata pairs per node or service (Consul's limit).
pub const MAX_META_PAIRS: usize = 64;
/// Bytes per metadata key (Consul's limit).
pub const MAX_META_KEY_LEN: usize = 128;
/// Bytes per metadata value (Consul's limit).
pub const MAX_META_VALUE_LEN: usize = 512;
/// Tags per service.
pub const MAX_TAGS: usize = 256;

/// `value` (what `field` holds) if it is at most [`MAX_NAME_LEN`] bytes.
fn bounded_name(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "{field} is {} bytes long (limit: {MAX_NAME_LEN})",
            value.len()
        ));
    }
    Ok(())
}

/// Metadata within Consul's limits (pairs, key and value lengths), with Consul's messages.
pub fn check_meta(what: &str, meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > MAX_META_PAIRS {
        return Err(format!(
            "{what} metadata cannot contain more than {MAX_META_PAIRS} key/value pairs"
        ));
    }
    for (k, v) in meta {
        let short = |s: &str| s.chars().take(32).collect::<String>();
        if k.len() > MAX_META_KEY_LEN {
            return Err(format!(
                "Couldn't load metadata pair ('{}…'): Key is too long (limit: {MAX_META_KEY_LEN} characters)",
                short(k)
            ));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(format!(
                "Couldn't load metadata pair ('{k}'): Value is too long (limit: {MAX_META_VALUE_LEN} characters)"
            ));
        }
    }
    Ok(())
}

impl ServiceDefinition {
    /// Whether the definition is within the bounds on IDs, names, tags and metadata.
    pub fn check_bounds(&self) -> Result<(), String> {
        bounded_name("Service ID", &self.id)?;
        bounded_name("Service name", &self.service)?;
        if self.tags.len() > MAX_TAGS {
            return Err(format!("a service may have at most {MAX_TAGS} tags"));
        }
        for t in &self.tags {
            bounded_name("A tag", t)?;
        }
        check_meta("Service", &self.meta)
    }
}

impl CheckDefinition {
    /// Whether the check's ID and name are within [`MAX_NAME_LEN`].
    pub fn check_bounds(&self) -> Result<(), String> {
        bounded_name("Check ID", &self.check_id)?;
        bounded_name("Check name", &self.name)
    }
}

impl RegisterRequest {
    /// Whether the registration is within the bounds on names, tags and metadata.
    pub fn check_bounds(&self) -> Result<(), String> {
        bounded_name("Node name", &self.node)?;
        check_meta("Node", &self.node_meta)?;
        if let Some(s) = &self.service {
            s.check_bounds()?;
        }
        self.checks
            .iter()
            .try_for_each(CheckDefinition::check_bounds)
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;

    #[test]
    fn registrations_are_bounded_as_consul_bounds_metadata() {
        let meta = |n: usize, k: usize, v: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("{i:0>k$}"), "v".repeat(v)))
                .collect()
        };
        assert!(check_meta("Node", &meta(64, 128, 512)).is_ok());
        assert!(
            check_meta("Node", &meta(65, 8, 1))
                .unwrap_err()
                .contains("64 key/value")
        );
        assert!(
            check_meta("Node", &meta(1, 129, 1))
                .unwrap_err()
                .contains("Key is too long")
        );
        assert!(
            check_meta("Node", &meta(1, 8, 513))
                .unwrap_err()
                .contains("Value is too long")
        );
        let svc = |id: usize, tags: usize| ServiceDefinition {
            id: "x".repeat(id),
            service: "web".into(),
            tags: vec!["t".into(); tags],
            ..Default::default()
        };
        assert!(svc(512, 256).check_bounds().is_ok());
        assert!(
            svc(513, 0)
                .check_bounds()
                .unwrap_err()
                .contains("Service ID")
        );
        assert!(svc(1, 257).check_bounds().is_err());
        let req = RegisterRequest {
            node: "n".repeat(100_000),
            ..Default::default()
        };
        assert!(req.check_bounds().unwrap_err().contains("Node name"));
    }
}

/// One service instance with its node and the checks that decide its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// The node.
    pub node: Node,
    /// The instance.
    pub service: Service,
    /// Node-level checks, then the instance's own.
    pub checks: Vec<Check>,
}
