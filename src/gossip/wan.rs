//! The WAN pool: the servers of every datacenter, and only servers, in one chitchat pool
//! carried by QUIC ([`super::quic`]). Each server publishes its DC, its WAN QUIC address,
//! its build and whether it leads its DC. Servers join through configured `wan_join`
//! addresses; once one server of a DC is in the pool, the others are pulled in by
//! flood-join (as Consul's): every server gossips with the servers of its own DC that LAN
//! gossip knows and the WAN pool does not.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::quic::QuicGossip;
use super::{
    Gossip, GossipError, GossipOptions, KEY_BUILD, KEY_DC, KEY_ID, KEY_LEADER, KEY_QUIC, KEY_ROLE,
    Member, MemberStatus, PoolConfig,
};
use crate::metrics::GossipMetrics;
use crate::vocab::Role;

/// WAN gossip timings: Consul's WAN pool gossips less often than the LAN pool.
pub fn default_options() -> GossipOptions {
    GossipOptions {
        interval: Duration::from_millis(500),
        phi_threshold: 8.0,
        reconnect_timeout: Duration::from_secs(72 * 3600),
    }
}

/// How often flood-join looks for servers of this DC missing from the WAN pool.
const FLOOD_EVERY: Duration = Duration::from_secs(1);

/// What a server publishes in the WAN pool and where it joins.
#[derive(Debug, Clone)]
pub struct WanConfig {
    /// Node name (the member is `node.dc`).
    pub node: String,
    /// Node UUID.
    pub node_id: String,
    /// Its datacenter.
    pub datacenter: String,
    /// The federation's domain: the pool's cluster id (federations never mix).
    pub domain: String,
    /// The QUIC address other DCs reach this server at.
    pub advertise: SocketAddr,
    /// WAN addresses of servers to join through (`wan_join`).
    pub seeds: Vec<SocketAddr>,
    /// Timings.
    pub options: GossipOptions,
}

impl Gossip {
    /// Joins the WAN pool through `carrier`; the member list is kept current until
    /// `shutdown` fires.
    pub async fn wan(
        config: WanConfig,
        carrier: &Arc<QuicGossip>,
        metrics: GossipMetrics,
        shutdown: CancellationToken,
    ) -> Result<Gossip, GossipError> {
        let kvs = vec![
            (KEY_ROLE.to_string(), "server".to_string()),
            (KEY_DC.to_string(), config.datacenter.clone()),
            (KEY_QUIC.to_string(), config.advertise.to_string()),
            (KEY_BUILD.to_string(), env!("CARGO_PKG_VERSION").to_string()),
            (KEY_ID.to_string(), config.node_id.clone()),
            (KEY_LEADER.to_string(), "false".to_string()),
        ];
        Gossip::start(
            PoolConfig {
                network: "WAN",
                name: format!("{}.{}", config.node, config.datacenter),
                cluster_id: format!("wan.{}", config.domain.trim_end_matches('.')),
                listen: config.advertise,
                advertise: config.advertise,
                seeds: config.seeds,
                kvs,
                options: config.options,
                generation: super::now_micros(),
                swim: None,
            },
            carrier.as_ref(),
            metrics,
            shutdown,
        )
        .await
    }

    /// WAN pool: publishes whether this server leads its DC.
    pub async fn set_leader(&self, leader: bool) {
        self.publish(KEY_LEADER, if leader { "true" } else { "false" })
            .await;
    }
}

/// The WAN addresses of this DC's live servers (from LAN gossip) that the WAN pool does not
/// list as alive: the ones flood-join gossips with. Pure.
pub fn missing_from_wan(
    datacenter: &str,
    me: SocketAddr,
    lan: &[Member],
    wan: &[Member],
) -> Vec<SocketAddr> {
    let in_wan: HashSet<SocketAddr> = wan
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| m.gossip_addr)
        .collect();
    lan.iter()
        .filter(|m| {
            m.role == Role::Server && m.status == MemberStatus::Alive && m.datacenter == datacenter
        })
        .filter_map(|m| m.wan)
        .filter(|a| *a != me && !in_wan.contains(a))
        .collect()
}

/// Flood-join: pulls this DC's servers into the WAN pool, on every LAN change and every
/// second while any is missing, until `shutdown` fires.
pub async fn flood_join(
    wan: Gossip,
    datacenter: String,
    me: SocketAddr,
    mut lan: watch::Receiver<Vec<Member>>,
    shutdown: CancellationToken,
) {
    let members = wan.members();
    loop {
        let missing =
            missing_from_wan(&datacenter, me, &lan.borrow_and_update(), &members.borrow());
        for addr in missing {
            wan.gossip_with(addr);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = lan.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(FLOOD_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, dc: &str, role: Role, addr: &str, wan: Option<&str>) -> Member {
        Member {
            name: name.into(),
            id: String::new(),
            gossip_addr: addr.parse().unwrap(),
            role,
            datacenter: dc.into(),
            quic: None,
            wan: wan.map(|w| w.parse().unwrap()),
            http: None,
            build: String::new(),
            leader: false,
            status: MemberStatus::Alive,
            generation: 1,
        }
    }

    #[test]
    fn flood_join_targets_only_live_local_servers_missing_from_the_pool() {
        let me: SocketAddr = "127.0.1.1:8300".parse().unwrap();
        let lan = vec![
            member(
                "s1",
                "dc1",
                Role::Server,
                "127.0.1.1:8301",
                Some("127.0.1.1:8300"),
            ),
            member(
                "s2",
                "dc1",
                Role::Server,
                "127.0.1.2:8301",
                Some("127.0.1.2:8300"),
            ),
            member(
                "s3",
                "dc1",
                Role::Server,
                "127.0.1.3:8301",
                Some("127.0.1.3:8300"),
            ),
            member("c1", "dc1", Role::Client, "127.0.1.9:8301", None),
            {
                let mut m = member(
                    "s4",
                    "dc1",
                    Role::Server,
                    "127.0.1.4:8301",
                    Some("127.0.1.4:8300"),
                );
                m.status = MemberStatus::Failed;
                m
            },
        ];
        let mut wan = vec![
            member("s1.dc1", "dc1", Role::Server, "127.0.1.1:8300", None),
            member("s2.dc1", "dc1", Role::Server, "127.0.1.2:8300", None),
            member("s3.dc1", "dc1", Role::Server, "127.0.1.3:8300", None),
            member("x1.dc2", "dc2", Role::Server, "127.0.2.1:8300", None),
        ];
        assert_eq!(
            missing_from_wan("dc1", me, &lan, &wan),
            Vec::<SocketAddr>::new()
        );
        wan.remove(2);
        assert_eq!(
            missing_from_wan("dc1", me, &lan, &wan),
            vec!["127.0.1.3:8300".parse::<SocketAddr>().unwrap()]
        );
        wan[0].status = MemberStatus::Failed;
        assert_eq!(
            missing_from_wan("dc1", me, &lan, &wan).len(),
            1,
            "self is never joined"
        );
    }
}
