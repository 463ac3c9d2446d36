//! Agent configuration: one TOML file per agent, parsed strictly (unknown keys are errors)
//! and validated before anything starts, so a mistake is reported as one line naming the
//! file, line and key. Also the federation [`topology`] files that agent configs are
//! derived from.

pub mod topology;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::GoDuration;
use crate::transport::identity::Identity;
use crate::transport::tls::TlsFiles;
use crate::vocab::Role;

/// A configuration problem: where it is and what is wrong. Never retryable: the file must
/// be fixed.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file concerned.
    pub file: PathBuf,
    /// 1-based line, when it can be located.
    pub line: Option<usize>,
    /// The dotted key at fault, when there is one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut s = self.file.display().to_string();
        if let Some(line) = self.line {
            s.push_str(&format!(":{line}"));
        }
        if let Some(key) = &self.key {
            s.push_str(&format!(": `{key}`"));
        }
        s.push_str(": ");
        s.push_str(&self.message.replace('\n', " "));
        s
    }
}

/// Default HTTP API port (Consul's).
pub const DEFAULT_HTTP_PORT: u16 = 8500;
/// Default DNS port (Consul's).
pub const DEFAULT_DNS_PORT: u16 = 8600;
/// Default LAN gossip port (UDP).
pub const DEFAULT_LAN_PORT: u16 = 8301;
/// Default QUIC port (UDP): RPC, Raft and WAN gossip.
pub const DEFAULT_QUIC_PORT: u16 = 8300;

/// The ports an agent listens on, each on its bind address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// HTTP API (TCP), default 8500.
    pub http: u16,
    /// DNS (UDP and TCP), default 8600.
    pub dns: u16,
    /// LAN gossip (UDP), default 8301.
    pub lan: u16,
    /// QUIC (UDP), default 8300: `rpc`, `raft` and `wan-gossip` ALPNs.
    pub quic: u16,
    /// The HTTP API over TLS (TCP; Consul's 8501), with the agent's certificate; off
    /// unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            http: DEFAULT_HTTP_PORT,
            dns: DEFAULT_DNS_PORT,
            lan: DEFAULT_LAN_PORT,
            quic: DEFAULT_QUIC_PORT,
            https: None,
        }
    }
}

/// The three PEM files of an agent. Relative paths are relative to the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The federation CA certificate.
    pub ca_file: PathBuf,
    /// This agent's certificate (`server.<dc>.<domain>` or `client.<dc>.<domain>`).
    pub cert_file: PathBuf,
    /// This agent's private key.
    pub key_file: PathBuf,
    /// HTTPS API clients must present a certificate signed by the CA (Consul's
    /// `verify_incoming`; agent-to-agent QUIC always requires one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify_incoming: bool,
}

/// A peer address given as `ip` or `ip:port`; the port defaults per use (LAN or QUIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinAddr {
    /// The address.
    pub ip: IpAddr,
    /// The port if one was given.
    pub port: Option<u16>,
}

impl fmt::Display for JoinAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.ip, p)),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl std::str::FromStr for JoinAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(JoinAddr {
                ip: sa.ip(),
                port: Some(sa.port()),
            });
        }
        s.parse::<IpAddr>()
            .map(|ip| JoinAddr { ip, port: None })
            .map_err(|_| format!("invalid address {s:?}: expected IP or IP:PORT"))
    }
}

impl<'de> Deserialize<'de> for JoinAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for JoinAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The gossip encryption key: 32 random bytes, base64 (as Consul's `encrypt`).
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey(pub [u8; 32]);

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// A fresh random key (what `consulate keygen` prints).
    pub fn generate() -> GossipKey {
        GossipKey(rand::random())
    }

    /// The base64 form used in config files.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl std::str::FromStr for GossipKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("not valid base64: {e}"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("key is {} bytes, expected 32", b.len()))?;
        Ok(GossipKey(key))
    }
}

impl<'de> Deserialize<'de> for GossipKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for GossipKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

/// The DNS interface's settings (Consul's `dns_config`, same names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Answer from any server's copy of the state, without asking the leader (default true).
    pub allow_stale: bool,
    /// With `allow_stale`: a server that has not heard from its leader for longer sends
    /// the lookup to the leader (default `87600h`).
    pub max_stale: GoDuration,
    /// TTL of node answers (default `0s`).
    pub node_ttl: GoDuration,
    /// TTL of service answers by service name: exact names, `prefix*`, and `*` for every
    /// other service (default: 0 for all).
    pub service_ttl: std::collections::BTreeMap<String, GoDuration>,
    /// Only instances whose every check passes; by default instances with a warning are
    /// included and only critical ones left out (as Consul).
    pub only_passing: bool,
    /// Cap on records per answer (0: no cap).
    pub a_record_limit: usize,
    /// DNS servers to forward names outside the domain to (`ip` or `ip:port`, port 53);
    /// without any such names are REFUSED.
    pub recursors: Vec<JoinAddr>,
    /// How long one recursor gets to answer before the next is tried (default `2s`).
    pub recursor_timeout: GoDuration,
    /// The SOA record's timers.
    pub soa: SoaConfig,
    /// Names in another DC that cannot be reached are answered from the last answer a
    /// server of this DC got for them, up to this old, with a TTL of at most
    /// [`STALE_DNS_TTL`] (off unless set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_stale_if_error: Option<GoDuration>,
    /// Service and prepared-query lookups are answered from the agent cache, as an HTTP
    /// `?cached` request is (Consul's `use_cache`; implies `allow_stale`).
    pub use_cache: bool,
    /// With `use_cache`: an answer older than this is fetched again (Consul's
    /// `cache_max_age`; `0s`: whatever its age).
    pub cache_max_age: GoDuration,
}

/// The longest TTL of a DNS answer given from a last-known answer of an unreachable DC.
pub const STALE_DNS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            allow_stale: true,
            max_stale: GoDuration(std::time::Duration::from_secs(87600 * 3600)),
            node_ttl: GoDuration(std::time::Duration::ZERO),
            service_ttl: Default::default(),
            only_passing: false,
            a_record_limit: 0,
            recursors: Vec::new(),
            recursor_timeout: GoDuration(std::time::Duration::from_secs(2)),
            soa: SoaConfig::default(),
            remote_stale_if_error: None,
            use_cache: false,
            cache_max_age: GoDuration(std::time::Duration::ZERO),
        }
    }
}

impl DnsConfig {
    fn is_default(&self) -> bool {
        *self == DnsConfig::default()
    }
}

/// The SOA timers in seconds (Consul's `dns_config.soa`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoaConfig {
    /// Refresh (default 3600).
    pub refresh: u32,
    /// Retry (default 600).
    pub retry: u32,
    /// Expire (default 86400).
    pub expire: u32,
    /// How long resolvers cache negative answers (default 0).
    pub min_ttl: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

fn default_domain() -> String {
    "consul".into()
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// One agent's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's node name, unique within its datacenter.
    pub node_name: String,
    /// The datacenter this agent belongs to.
    pub datacenter: String,
    /// `server` (holds Raft state, joins WAN) or `client`.
    pub role: Role,
    /// The DNS domain, also the suffix of certificate identities. Default `consul`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Where servers keep Raft state; relative paths are relative to the config file.
    pub data_dir: PathBuf,
    /// The address every listener binds to.
    pub bind_addr: IpAddr,
    /// The address others are told to reach us at. Defaults to `bind_addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<IpAddr>,
    /// Servers only: the address other DCs reach this server's QUIC port at (`ip` or
    /// `ip:port`; default: the advertised address on the QUIC port), for a server behind
    /// NAT or a relay (Consul's `advertise_addr_wan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_addr_wan: Option<JoinAddr>,
    /// Listening ports.
    #[serde(default)]
    pub ports: Ports,
    /// LAN gossip addresses to join at start (`ip` or `ip:port`, default port 8301).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lan_join: Vec<JoinAddr>,
    /// Servers only: QUIC addresses of servers in other DCs to join the WAN pool through
    /// (`ip` or `ip:port`, default port 8300).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wan_join: Vec<JoinAddr>,
    /// Servers only: how many servers form this DC's cluster on first start. Without it a
    /// server waits to be added to an existing cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_expect: Option<u32>,
    /// Servers only: how many Raft entries must be applied since the last snapshot for the
    /// next one to be taken (Consul's `raft_snapshot_threshold`; default 16,384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_snapshot_threshold: Option<u64>,
    /// Servers only: how often a server checks the threshold, at a random moment between
    /// one and two of these (Consul's `raft_snapshot_interval`, Go syntax; default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_snapshot_interval: Option<GoDuration>,
    /// Servers only: how many entries a snapshot leaves in the log behind it, so that a
    /// follower that fell that far behind catches up from the log instead of a snapshot
    /// (Consul's `raft_trailing_logs`; default 10,240).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_trailing_logs: Option<u64>,
    /// The certificate files.
    pub tls: TlsConfig,
    /// The LAN gossip encryption key (base64 of 32 bytes); unset means plaintext gossip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<GossipKey>,
    /// How often anti-entropy fully re-syncs this agent's services and checks with the
    /// catalog (Go syntax, default `60s`); changes are synced at once regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<GoDuration>,
    /// The shortest time between two reports of this agent's network coordinate to the
    /// servers (Consul's `sync_coordinate_interval_min`, default `15s`; large DCs report
    /// less often, 64 updates a second in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_coordinate_interval_min: Option<GoDuration>,
    /// How often a check whose output changed but whose status did not is written to the
    /// catalog (Consul's `check_update_interval`, Go syntax, default `5m`); status changes
    /// are written at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_update_interval: Option<GoDuration>,
    /// How long a failed or left LAN member is remembered before it is forgotten and its
    /// node removed from the catalog (Go syntax, default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_timeout: Option<GoDuration>,
    /// The DNS interface.
    #[serde(default, skip_serializing_if = "DnsConfig::is_default")]
    pub dns: DnsConfig,
    /// Limits on what clients of the HTTP API may hold (Consul's `limits`).
    #[serde(default, skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// The datacenter whose servers hold the global ACL tokens, policies and roles, which
    /// the other DCs replicate (Consul's; default: this agent's own datacenter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_datacenter: Option<String>,
    /// Access control (Consul's `acl` block; off by default).
    #[serde(default, skip_serializing_if = "AclConfig::is_default")]
    pub acl: AclConfig,
    /// Servers: the leader's automatic management of the Raft configuration (Consul's
    /// `autopilot` block).
    #[serde(default, skip_serializing_if = "AutopilotConfig::is_default")]
    pub autopilot: AutopilotConfig,
    /// The least severe log lines written (`trace`, `debug`, `info`, `warn`, `error`, or
    /// a `tracing` filter directive; default `info`; the `RUST_LOG` variable wins).
    /// Re-read by `agent/reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Services this agent registers, in Consul's service-definition shape (`[[services]]`
    /// tables with `name`, `id`, `port`, `tags`, `meta`, `checks`, ...; keys in either
    /// spelling). Re-read by `agent/reload`, which replaces them and keeps the services
    /// registered through the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// Checks this agent runs that belong to no service defined above (`[[checks]]`, in
    /// Consul's check-definition shape). Re-read by `agent/reload`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<serde_json::Value>,
    /// Whether the agent serves the web UI at `/ui/` (Consul's `ui_config.enabled`;
    /// default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ui: bool,
    /// The file this config was read from, which `agent/reload` reads again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Consul's `autopilot` block (the dead-server cleanup), same names where Consul has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutopilotConfig {
    /// Whether the leader removes dead servers from the Raft configuration (default true).
    pub cleanup_dead_servers: bool,
    /// Voters the cleanup never goes below (default: `bootstrap_expect`, else none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_quorum: Option<usize>,
    /// How long a server must have been failed or left in LAN gossip before it is
    /// removed (a consulate setting; default `30s`).
    pub dead_server_after: GoDuration,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            cleanup_dead_servers: true,
            min_quorum: None,
            dead_server_after: GoDuration(std::time::Duration::from_secs(30)),
        }
    }
}

impl AutopilotConfig {
    fn is_default(&self) -> bool {
        *self == AutopilotConfig::default()
    }
}

/// Limits on the HTTP API's clients (Consul's `limits` block, same names and defaults
/// where Consul has the setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent HTTP connections one client IP may hold (Consul's, default 200); one
    /// more is answered 429 and closed.
    pub http_max_conns_per_client: usize,
    /// How long a request's body may take to arrive in full (default `30s`, as the
    /// headers'); past it the request is answered 408.
    pub http_body_read_timeout: GoDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http_max_conns_per_client: 200,
            http_body_read_timeout: GoDuration(std::time::Duration::from_secs(30)),
        }
    }
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Limits::default()
    }
}

/// Access control settings (Consul's `acl` block: same names, values and defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Whether requests are checked against tokens at all.
    pub enabled: bool,
    /// What a token may do where none of its rules applies: `allow` or `deny`.
    pub default_policy: AclDefaultPolicy,
    /// What happens when a token cannot be resolved because the primary DC is unreachable.
    pub down_policy: crate::acl::DownPolicy,
    /// How long a resolved token is cached by agents and non-primary servers.
    pub token_ttl: GoDuration,
    /// Whether non-primary DCs replicate tokens (policies and roles always are).
    pub enable_token_replication: bool,
    /// The tokens the agent itself holds.
    pub tokens: AclTokens,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            enabled: false,
            default_policy: AclDefaultPolicy::Allow,
            down_policy: crate::acl::DownPolicy::ExtendCache,
            token_ttl: GoDuration(std::time::Duration::from_secs(30)),
            enable_token_replication: false,
            tokens: AclTokens::default(),
        }
    }
}

impl AclConfig {
    fn is_default(&self) -> bool {
        *self == AclConfig::default()
    }
}

/// `acl.default_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDefaultPolicy {
    /// Whatever no rule denies is allowed.
    Allow,
    /// Whatever no rule allows is denied.
    Deny,
}

/// `acl.tokens`: secrets the agent holds. Shown as `<hidden>` in debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclTokens {
    /// Servers: a management token created when the DC's ACL system first starts, instead
    /// of `consulate acl bootstrap` (Consul's `initial_management`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_management: Option<String>,
    /// The agent's own token: anti-entropy, check updates, reconciliation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Non-primary servers: the token replication uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<String>,
    /// The token of requests that carry none (instead of the anonymous token); DNS uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl std::fmt::Debug for AclTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |t: &Option<String>| t.as_ref().map(|_| "<hidden>");
        f.debug_struct("AclTokens")
            .field("initial_management", &shown(&self.initial_management))
            .field("agent", &shown(&self.agent))
            .field("replication", &shown(&self.replication))
            .field("default", &shown(&self.default))
            .finish()
    }
}

/// Where a dotted key is defined in a TOML document (1-based line).
fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    for part in key.split('.') {
        item = item.get(part)?;
    }
    let span = item.span().or_else(|| {
        // Whole tables have no span of their own: fall back to the key's first value.
        item.as_table_like()?.iter().find_map(|(_, v)| v.span())
    })?;
    Some(line_at(text, span.start))
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config `text`; `path` is used for messages and to resolve
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: e.span().map(|s| line_at(text, s.start)),
            key: None,
            message: e.message().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca_file,
            &mut cfg.tls.cert_file,
            &mut cfg.tls.key_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate().map_err(|(key, message)| ConfigError {
            file: path.to_path_buf(),
            line: line_of(text, key),
            key: Some(key.to_string()),
            message,
        })?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Cross-field checks serde cannot express. Returns the offending key and the problem.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(level) = &self.log_level {
            crate::logging::filter(level).map_err(|e| ("log_level", e))?;
        }
        if !valid_name(&self.node_name) {
            return Err((
                "node_name",
                "must be 1-63 letters, digits, '-' or '_'".into(),
            ));
        }
        if !valid_name(&self.datacenter) || self.datacenter.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err((
                "datacenter",
                "must be 1-63 lowercase letters, digits, '-' or '_'".into(),
            ));
        }
        if self.domain.is_empty() || !self.domain.trim_end_matches('.').split('.').all(valid_name) {
            return Err(("domain", format!("{:?} is not a DNS domain", self.domain)));
        }
        if self.role == Role::Client {
            if !self.wan_join.is_empty() {
                return Err(("wan_join", "only servers join the WAN pool".into()));
            }
            if self.advertise_addr_wan.is_some() {
                return Err((
                    "advertise_addr_wan",
                    "only servers join the WAN pool".into(),
                ));
            }
            if self.bootstrap_expect.is_some() {
                return Err((
                    "bootstrap_expect",
                    "only servers bootstrap a cluster".into(),
                ));
            }
            for (key, set) in [
                (
                    "raft_snapshot_threshold",
                    self.raft_snapshot_threshold.is_some(),
                ),
                (
                    "raft_snapshot_interval",
                    self.raft_snapshot_interval.is_some(),
                ),
                ("raft_trailing_logs", self.raft_trailing_logs.is_some()),
            ] {
                if set {
                    return Err((key, "only servers keep a Raft log".into()));
                }
            }
        }
        if let Some(primary) = &self.primary_datacenter
            && (!valid_name(primary) || primary.chars().any(|c| c.is_ascii_uppercase()))
        {
            return Err((
                "primary_datacenter",
                "must be 1-63 lowercase letters, digits, '-' or '_'".into(),
            ));
        }
        let tokens = &self.acl.tokens;
        for (key, token) in [
            ("acl.tokens.initial_management", &tokens.initial_management),
            ("acl.tokens.agent", &tokens.agent),
            ("acl.tokens.replication", &tokens.replication),
            ("acl.tokens.default", &tokens.default),
        ] {
            if token.as_ref().is_some_and(|t| {
                t.is_empty() || t.len() > 128 || t.chars().any(char::is_whitespace)
            }) {
                return Err((key, "must be 1-128 characters without spaces".into()));
            }
        }
        if self.role == Role::Client {
            for (key, set) in [
                (
                    "acl.tokens.initial_management",
                    tokens.initial_management.is_some(),
                ),
                ("acl.tokens.replication", tokens.replication.is_some()),
            ] {
                if set {
                    return Err((key, "only servers hold it".into()));
                }
            }
        }
        if self.acl.token_ttl.0.is_zero() {
            return Err(("acl.token_ttl", "must be above 0".into()));
        }
        if self.raft_snapshot_threshold == Some(0) {
            return Err(("raft_snapshot_threshold", "must be at least 1".into()));
        }
        if self
            .raft_snapshot_interval
            .is_some_and(|d| d.0 < std::time::Duration::from_millis(5))
        {
            return Err(("raft_snapshot_interval", "must be at least 5ms".into()));
        }
        if self.bootstrap_expect == Some(0) {
            return Err(("bootstrap_expect", "must be at least 1".into()));
        }
        let p = &self.ports;
        let mut ports = [p.http, p.dns, p.lan, p.quic, p.https.unwrap_or(0)];
        ports.sort_unstable();
        // Port 0 (an ephemeral port, used by tests) may repeat.
        if ports.windows(2).any(|w| w[0] == w[1] && w[0] != 0) {
            return Err(("ports", "two listeners share a port".into()));
        }
        for (key, file) in [
            ("tls.ca_file", &self.tls.ca_file),
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
        ] {
            if !file.is_file() {
                return Err((key, format!("{} does not exist", file.display())));
            }
        }
        Ok(())
    }

    /// The identity this agent's certificate must carry.
    pub fn identity(&self) -> Identity {
        Identity {
            role: self.role,
            datacenter: self.datacenter.clone(),
        }
    }

    /// The TLS files as the transport wants them.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.tls.ca_file.clone(),
            cert_file: self.tls.cert_file.clone(),
            key_file: self.tls.key_file.clone(),
        }
    }

    /// The address advertised to peers.
    pub fn advertise(&self) -> IpAddr {
        self.advertise_addr.unwrap_or(self.bind_addr)
    }

    /// The address other DCs reach this server at, given its bound QUIC port.
    pub fn wan_advertise(&self, quic_port: u16) -> SocketAddr {
        match self.advertise_addr_wan {
            Some(a) => SocketAddr::new(a.ip, a.port.unwrap_or(quic_port)),
            None => SocketAddr::new(self.advertise(), quic_port),
        }
    }

    /// The WAN addresses to join through (`wan_join`, default port: the QUIC port).
    pub fn wan_seeds(&self) -> Vec<SocketAddr> {
        self.wan_join
            .iter()
            .map(|a| SocketAddr::new(a.ip, a.port.unwrap_or(self.ports.quic)))
            .collect()
    }

    /// Where the HTTP API binds.
    pub fn http_bind(&self) -> SocketAddr {
        SocketAddr::new(self.bind_addr, self.ports.http)
    }

    /// Where the HTTPS API binds, when it is on.
    pub fn https_bind(&self) -> Option<SocketAddr> {
        self.ports
            .https
            .map(|port| SocketAddr::new(self.bind_addr, port))
    }

    /// Where the QUIC endpoint binds.
    pub fn quic_bind(&self) -> SocketAddr {
        SocketAddr::new(self.bind_addr, self.ports.quic)
    }
}
