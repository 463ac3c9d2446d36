//! The words every layer shares, defined once at the bottom of the crate: what role an
//! agent plays, how consistent a read must be, and how long a blocking query may wait.
//! Nothing here depends on any other module.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The service every server is registered as (Consul's `consul`), by the leader's
/// reconciliation; the agents' anti-entropy leaves it alone.
pub const CONSUL_SERVICE: &str = "consul";

/// Whether an agent runs Raft for its DC (server) or only forwards to servers (client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the DC's Raft state and joins the WAN pool.
    Server,
    /// Keeps no Raft state; sends its requests to a live server of its DC.
    Client,
}

impl Role {
    /// The name used in certificates, configs and metrics (`server` or `client`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The consistency mode of a read, as Consul's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// Answered by the leader from its state.
    Leader,
    /// Answered by any server from its local state.
    Stale,
    /// Answered by the leader after confirming leadership with a quorum.
    Consistent,
}

impl ReadMode {
    /// The `X-Consul-Effective-Consistency` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Leader => "leader",
            ReadMode::Stale => "stale",
            ReadMode::Consistent => "consistent",
        }
    }

    /// Whether only the DC's leader may answer a read in this mode.
    pub fn needs_leader(self) -> bool {
        self != ReadMode::Stale
    }
}

/// The longest blocking wait a client may ask for (Consul: 10 minutes).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The longest a blocking query waits, whoever asks and however it travelled: [`MAX_WAIT`]
/// plus Consul's jitter of up to a sixteenth, so that many waiters do not return together.
pub const MAX_WAIT_WITH_JITTER: Duration = Duration::from_millis(600_000 + 600_000 / 16);

/// A random (version 4) UUID, hyphenated: Consul's form of every generated ID (sessions,
/// ACL accessors, secrets, policies, roles).
pub fn random_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The node's catalog UUID, derived from its persistent node id.
pub fn node_uuid(id: u64) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, &id.to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d.as_ref()[..16]);
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}
