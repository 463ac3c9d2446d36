//! Federation topology files: a whole federation (datacenters, their agents, roles and
//! addresses) described once, from which every agent's [`AgentConfig`] is derived. Each
//! agent gets its own 127.x address, so all of them can use the default ports on one
//! machine.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{AgentConfig, ConfigError, GossipKey, JoinAddr, Limits, Ports, TlsConfig};
use crate::pki::{self, AgentCertSpec};
use crate::vocab::Role;

/// One agent of a topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyAgent {
    /// Node name, unique in the federation.
    pub name: String,
    /// Server or client.
    pub role: Role,
    /// The address every listener of this agent binds to.
    pub address: IpAddr,
}

/// One datacenter of a topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyDc {
    /// Datacenter name.
    pub name: String,
    /// Its agents: 1, 3 or 5 servers and any number of clients.
    pub agents: Vec<TopologyAgent>,
}

fn default_domain() -> String {
    "consul".into()
}

/// A federation description, as in `topology/local-2dc.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// DNS domain and certificate suffix, default `consul`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Ports used by every agent (each agent has its own address).
    #[serde(default)]
    pub ports: Ports,
    /// Gossip encryption key shared by every agent, if any.
    #[serde(default)]
    pub encrypt: Option<GossipKey>,
    /// Limits on HTTP clients, the same for every agent (e.g. a benchmark loading one
    /// agent with more connections than the default cap).
    #[serde(default)]
    pub limits: Limits,
    /// The datacenters.
    pub datacenters: Vec<TopologyDc>,
}

/// Where rendered configs point: the certificates and the per-agent data dirs.
#[derive(Debug, Clone)]
pub struct RenderPaths {
    /// Directory holding the CA and agent certificates (named as `pki` names them).
    pub certs_dir: PathBuf,
    /// Directory under which each agent gets `<node>/`.
    pub state_dir: PathBuf,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let err = |line, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key: None,
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
        let topo: Topology = toml::from_str(&text).map_err(|e| {
            err(
                e.span().map(|s| super::line_at(&text, s.start)),
                e.message().to_string(),
            )
        })?;
        topo.validate().map_err(|m| err(None, m))?;
        Ok(topo)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut dcs = HashSet::new();
        if self.datacenters.is_empty() {
            return Err("no datacenters".into());
        }
        for dc in &self.datacenters {
            if !dcs.insert(&dc.name) {
                return Err(format!("datacenter {} listed twice", dc.name));
            }
            if !dc.agents.iter().any(|a| a.role == Role::Server) {
                return Err(format!("datacenter {} has no server", dc.name));
            }
            for a in &dc.agents {
                if !names.insert(&a.name) {
                    return Err(format!("agent name {} used twice", a.name));
                }
                if !addrs.insert(a.address) {
                    return Err(format!("address {} used twice", a.address));
                }
            }
        }
        Ok(())
    }

    /// Every agent with its datacenter, in file order.
    pub fn agents(&self) -> impl Iterator<Item = (&TopologyDc, &TopologyAgent)> {
        self.datacenters
            .iter()
            .flat_map(|dc| dc.agents.iter().map(move |a| (dc, a)))
    }

    /// The certificate spec of one agent.
    pub fn cert_spec<'a>(
        &'a self,
        dc: &'a TopologyDc,
        agent: &'a TopologyAgent,
    ) -> AgentCertSpec<'a> {
        AgentCertSpec {
            role: agent.role,
            datacenter: &dc.name,
            domain: &self.domain,
            node: Some(&agent.name),
        }
    }

    /// Derives every agent's config: LAN join = the other servers of its DC; WAN join (servers)
    /// = the first server of every other DC; `bootstrap_expect` = the DC's server count.
    pub fn render(&self, paths: &RenderPaths) -> Vec<AgentConfig> {
        let ca = pki::ca_paths(&paths.certs_dir, &self.domain);
        let join = |ip| JoinAddr { ip, port: None };
        self.agents()
            .map(|(dc, a)| {
                let servers: Vec<&TopologyAgent> = dc
                    .agents
                    .iter()
                    .filter(|x| x.role == Role::Server)
                    .collect();
                let certs = pki::agent_paths(&paths.certs_dir, &self.cert_spec(dc, a));
                let is_server = a.role == Role::Server;
                AgentConfig {
                    node_name: a.name.clone(),
                    datacenter: dc.name.clone(),
                    role: a.role,
                    domain: self.domain.clone(),
                    data_dir: paths.state_dir.join(&a.name),
                    bind_addr: a.address,
                    advertise_addr: None,
                    advertise_addr_wan: None,
                    ports: self.ports.clone(),
                    lan_join: servers
                        .iter()
                        .filter(|s| s.name != a.name)
                        .map(|s| join(s.address))
                        .collect(),
                    wan_join: if is_server {
                        self.datacenters
                            .iter()
                            .filter(|other| other.name != dc.name)
                            .filter_map(|other| {
                                other.agents.iter().find(|x| x.role == Role::Server)
                            })
                            .map(|s| join(s.address))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    bootstrap_expect: is_server.then_some(servers.len() as u32),
                    raft_snapshot_threshold: None,
                    raft_snapshot_interval: None,
                    raft_trailing_logs: None,
                    tls: TlsConfig {
                        ca_file: ca.cert.clone(),
                        cert_file: certs.cert,
                        key_file: certs.key,
                        verify_incoming: false,
                    },
                    encrypt: self.encrypt.clone(),
                    sync_interval: None,
                    sync_coordinate_interval_min: None,
                    check_update_interval: None,
                    dns: Default::default(),
                    limits: self.limits,
                    reconnect_timeout: None,
                    primary_datacenter: None,
                    acl: Default::default(),
                    autopilot: Default::default(),
                    log_level: None,
                    services: Vec::new(),
                    checks: Vec::new(),
                    ui: true,
                    source: None,
                }
            })
            .collect()
    }

    /// Turns ACLs on in `configs` (rendered from this topology), Consul's way for a
    /// federation: every agent checks tokens with `default_policy = "deny"`; the first DC
    /// is the primary, whose servers create `management` as the initial management token;
    /// the other DCs' servers replicate tokens with it; every agent syncs with it.
    pub fn secure(&self, configs: &mut [AgentConfig], management: &str) {
        let Some(primary) = self.datacenters.first().map(|dc| dc.name.clone()) else {
            return;
        };
        for cfg in configs {
            let server = cfg.role == Role::Server;
            let in_primary = cfg.datacenter == primary;
            cfg.primary_datacenter = Some(primary.clone());
            cfg.acl.enabled = true;
            cfg.acl.default_policy = super::AclDefaultPolicy::Deny;
            cfg.acl.enable_token_replication = !in_primary;
            cfg.acl.tokens.agent = Some(management.to_string());
            cfg.acl.tokens.initial_management =
                (server && in_primary).then(|| management.to_string());
            cfg.acl.tokens.replication = (server && !in_primary).then(|| management.to_string());
        }
    }

    /// Writes each of `configs` (rendered from this topology) as `<out>/<node>.toml`;
    /// returns the files written.
    pub fn write_configs(
        &self,
        configs: &[AgentConfig],
        out: &Path,
    ) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out)?;
        configs
            .iter()
            .map(|cfg| {
                let file = out.join(format!("{}.toml", cfg.node_name));
                let body = toml::to_string_pretty(&cfg).map_err(std::io::Error::other)?;
                let header = format!(
                    "# consulate agent config for {} ({} in {}), rendered from a topology.\n# Every key is documented in README.md (\"Agent configuration\").\n\n",
                    cfg.node_name, cfg.role, cfg.datacenter
                );
                std::fs::write(&file, header + &body)?;
                Ok(file)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_s_limits_reach_every_agent() {
        let topo: Topology = toml::from_str(
            "[limits]\nhttp_max_conns_per_client = 0\n[[datacenters]]\nname = \"dc1\"\n\
             agents = [{ name = \"s1\", role = \"server\", address = \"127.0.0.1\" }]\n",
        )
        .unwrap();
        let paths = RenderPaths {
            certs_dir: "/c".into(),
            state_dir: "/s".into(),
        };
        let cfg = &topo.render(&paths)[0];
        assert_eq!(cfg.limits.http_max_conns_per_client, 0);
        assert_eq!(
            cfg.limits.http_body_read_timeout,
            Limits::default().http_body_read_timeout
        );
        let back: AgentConfig = toml::from_str(&toml::to_string(cfg).unwrap()).unwrap();
        assert_eq!(back.limits, cfg.limits);
    }

    #[test]
    fn shipped_topologies_render_consistent_configs() {
        for (file, dcs) in [
            ("topology/local-2dc.toml", 2),
            ("topology/local-3dc.toml", 3),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let topo = Topology::load(&path).unwrap();
            assert_eq!(topo.datacenters.len(), dcs);
            let paths = RenderPaths {
                certs_dir: "/c".into(),
                state_dir: "/s".into(),
            };
            let cfgs = topo.render(&paths);
            assert_eq!(cfgs.len(), dcs * 4);
            for cfg in &cfgs {
                match cfg.role {
                    Role::Server => {
                        assert_eq!(cfg.bootstrap_expect, Some(3));
                        assert_eq!(cfg.lan_join.len(), 2);
                        assert_eq!(cfg.wan_join.len(), dcs - 1);
                    }
                    Role::Client => {
                        assert!(cfg.wan_join.is_empty() && cfg.bootstrap_expect.is_none());
                        assert_eq!(cfg.lan_join.len(), 3);
                    }
                }
                // Rendered configs parse back to the same thing (modulo file checks).
                let text = toml::to_string(cfg).unwrap();
                let back: AgentConfig = toml::from_str(&text).unwrap();
                assert_eq!(&back, cfg);
            }
        }
    }
}
