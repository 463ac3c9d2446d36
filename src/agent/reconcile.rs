//! Catalog reconciliation on the leader (Consul's `serfHealth`): every LAN member is a
//! catalog node with a `serfHealth` check, passing while the member is alive and critical
//! once it is failed; every server also carries service `consul` (its RPC port), which
//! operators and tools find the DC's servers by (`consul.service.consul`); a member that
//! left is deregistered with its services, and so is a node whose member was forgotten. [`reconcile_plan`] is the pure diff; [`run`] applies it
//! whenever membership or leadership changes, and every few seconds regardless, so that a
//! new leader repeats it and nothing is missed across failovers.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::local::NodeInfo;
use crate::dispatch::Dispatcher;
use crate::gossip::{Member, MemberStatus};
use crate::rpc::{Read, ReadOptions, RpcError, Write};
use crate::state::query::{Query, QueryResult};
use crate::state::{
    Check, CheckDefinition, Command, DeregisterRequest, HealthStatus, Node, RegisterRequest,
    Service, ServiceDefinition,
};
use crate::vocab::ReadMode;

/// The node check gossip owns (Consul's name).
pub const SERF_CHECK_ID: &str = "serfHealth";
const SERF_CHECK_NAME: &str = "Serf Health Status";
const OUTPUT_ALIVE: &str = "Agent alive and reachable";
const OUTPUT_FAILED: &str = "Agent not live or unreachable";

use crate::vocab::CONSUL_SERVICE;

/// How often the leader reconciles even when nothing was signalled.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

fn member_node(m: &Member, datacenter: &str) -> NodeInfo {
    NodeInfo {
        id: m.id.clone(),
        name: m.name.clone(),
        address: m.gossip_addr.ip().to_string(),
        datacenter: datacenter.to_string(),
        server: m.role == crate::vocab::Role::Server,
        port: m.quic.map_or(0, |q| q.port()),
    }
}

/// Service `consul` as a server registers it: its RPC (QUIC) port, and Consul's metadata
/// where it means something here.
fn consul_service(m: &Member) -> ServiceDefinition {
    ServiceDefinition {
        id: CONSUL_SERVICE.to_string(),
        service: CONSUL_SERVICE.to_string(),
        port: m.quic.map_or(8300, |q| q.port()),
        meta: [
            ("raft_version".to_string(), "3".to_string()),
            ("version".to_string(), m.build.clone()),
        ]
        .into(),
        ..ServiceDefinition::default()
    }
}

/// What to write so that the catalog's nodes, `serfHealth` checks and `consul` services
/// match `members` (of this DC). `nodes` are the catalog's nodes, `serf_checks` its
/// `serfHealth` checks, `consul` its instances of service `consul`.
pub fn reconcile_plan(
    datacenter: &str,
    members: &[Member],
    nodes: &[Node],
    serf_checks: &[Check],
    consul: &[Service],
) -> Vec<Command> {
    let mut plan = Vec::new();
    let deregister = |node: &str| {
        Command::Deregister(DeregisterRequest {
            node: node.to_string(),
            service_id: None,
            check_id: None,
        })
    };
    for m in members.iter().filter(|m| m.datacenter == datacenter) {
        let in_catalog = nodes.iter().find(|n| n.node == m.name);
        let (status, output) = match m.status {
            MemberStatus::Left => {
                if in_catalog.is_some() {
                    plan.push(deregister(&m.name));
                }
                continue;
            }
            MemberStatus::Alive => (HealthStatus::Passing, OUTPUT_ALIVE),
            MemberStatus::Failed => (HealthStatus::Critical, OUTPUT_FAILED),
        };
        let info = member_node(m, datacenter);
        let node_ok = in_catalog.is_some_and(|n| info.matches(n));
        let check_ok = serf_checks.iter().any(|c| {
            c.node == m.name
                && c.status == status
                && c.output == output
                && c.name == SERF_CHECK_NAME
        });
        if !(node_ok && check_ok) {
            let mut req: RegisterRequest = info.register();
            req.checks = vec![CheckDefinition {
                check_id: SERF_CHECK_ID.to_string(),
                name: SERF_CHECK_NAME.to_string(),
                status,
                notes: String::new(),
                output: output.to_string(),
                service_id: None,
                kind: String::new(),
            }];
            plan.push(Command::Register(Box::new(req)));
        }
        if m.role == crate::vocab::Role::Server {
            let want = consul_service(m);
            let have = consul.iter().find(|s| s.node == m.name);
            if !have.is_some_and(|s| s.port == want.port && s.meta == want.meta) {
                let mut req: RegisterRequest = info.register();
                req.service = Some(want);
                plan.push(Command::Register(Box::new(req)));
            }
        }
    }
    // A node that gossip registered (it has serfHealth) but no member names any more was
    // reaped after the reconnect timeout: it goes too.
    for c in serf_checks {
        if !members.iter().any(|m| m.name == c.node) {
            plan.push(deregister(&c.node));
        }
    }
    plan
}

/// Reconciles while this server leads, until `shutdown` fires.
pub async fn run(
    dispatcher: Dispatcher,
    mut members: watch::Receiver<Vec<Member>>,
    shutdown: CancellationToken,
) {
    let Some(raft) = dispatcher.raft().cloned() else {
        return;
    };
    let mut leadership = raft.raft().metrics();
    loop {
        if raft.is_leader() {
            let current = members.borrow_and_update().clone();
            match shutdown
                .run_until_cancelled(reconcile_once(&dispatcher, &current))
                .await
            {
                None => return,
                Some(Err(e)) => warn!(error = %e, "catalog reconciliation failed; will retry"),
                Some(Ok(())) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = members.changed() => if r.is_err() { return },
            r = leadership.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

async fn reconcile_once(dispatcher: &Dispatcher, members: &[Member]) -> Result<(), RpcError> {
    // Leader-only work: read and written here, never forwarded.
    let read = |query| Read {
        dc: None,
        query,
        opts: ReadOptions::now(ReadMode::Stale),
        token: None, // leader-only work is not checked against ACLs
    };
    let nodes = dispatcher
        .on_leader(read(Query::Nodes { node_meta: vec![] }))
        .await?;
    let checks = dispatcher
        .on_leader(read(Query::CheckById {
            check_id: SERF_CHECK_ID.to_string(),
        }))
        .await?;
    let consul = dispatcher
        .on_leader(read(Query::ServiceNodes {
            service: CONSUL_SERVICE.to_string(),
            tags: Vec::new(),
            node_meta: Vec::new(),
        }))
        .await?;
    let (QueryResult::Nodes(nodes), QueryResult::Checks(checks), QueryResult::ServiceNodes(consul)) =
        (nodes.result, checks.result, consul.result)
    else {
        return Err(RpcError::Protocol("unexpected query result shape".into()));
    };
    let consul: Vec<Service> = consul.into_iter().map(|(_, s)| s).collect();
    let plan = reconcile_plan(dispatcher.datacenter(), members, &nodes, &checks, &consul);
    if !plan.is_empty() {
        debug!(
            writes = plan.len(),
            "reconciling the catalog with LAN membership"
        );
        let write = Write {
            dc: None,
            cmd: Command::Batch(plan),
            token: None,
        };
        dispatcher.on_leader(write).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use crate::vocab::Role;

    fn member(name: &str, status: MemberStatus) -> Member {
        Member {
            name: name.into(),
            id: format!("id-{name}"),
            gossip_addr: "127.0.0.9:8301".parse().unwrap(),
            role: Role::Client,
            datacenter: "dc1".into(),
            quic: Some("127.0.0.9:8300".parse().unwrap()),
            wan: None,
            http: None,
            build: "0".into(),
            leader: false,
            status,
            generation: 1,
        }
    }

    fn sync(s: &mut State, members: &[Member], at: &mut u64) -> usize {
        let plan_of = |s: &State| {
            let nodes: Vec<Node> = s.nodes().cloned().collect();
            let checks: Vec<Check> = s
                .checks()
                .filter(|c| c.check_id == SERF_CHECK_ID)
                .cloned()
                .collect();
            let consul: Vec<Service> = s.service_instances(CONSUL_SERVICE).cloned().collect();
            reconcile_plan("dc1", members, &nodes, &checks, &consul)
        };
        let plan = plan_of(s);
        let n = plan.len();
        for c in plan {
            *at += 1;
            s.apply(*at, c, std::time::Instant::now());
        }
        assert!(plan_of(s).is_empty(), "converged");
        n
    }

    fn serf(s: &State, node: &str) -> Option<HealthStatus> {
        s.node_checks(node)
            .find(|c| c.check_id == SERF_CHECK_ID)
            .map(|c| c.status)
    }

    #[test]
    fn members_become_nodes_with_serf_health() {
        let mut s = State::default();
        let mut at = 0;
        let mut ms = vec![
            member("a", MemberStatus::Alive),
            member("b", MemberStatus::Alive),
        ];
        let mut other_dc = member("x", MemberStatus::Alive);
        other_dc.datacenter = "dc2".into();
        ms.push(other_dc);
        assert_eq!(sync(&mut s, &ms, &mut at), 2);
        assert_eq!(serf(&s, "a"), Some(HealthStatus::Passing));
        assert!(s.node("x").is_none(), "other DCs' members are not ours");

        ms[1].status = MemberStatus::Failed;
        assert_eq!(sync(&mut s, &ms, &mut at), 1);
        assert_eq!(serf(&s, "b"), Some(HealthStatus::Critical));
        ms[1].status = MemberStatus::Alive;
        assert_eq!(sync(&mut s, &ms, &mut at), 1);
        assert_eq!(serf(&s, "b"), Some(HealthStatus::Passing));

        ms[0].status = MemberStatus::Left;
        assert_eq!(sync(&mut s, &ms, &mut at), 1);
        assert!(s.node("a").is_none(), "a member that left is deregistered");
        ms.remove(1);
        assert_eq!(sync(&mut s, &ms, &mut at), 1);
        assert!(s.node("b").is_none(), "a forgotten member is deregistered");
    }

    #[test]
    fn servers_carry_service_consul_until_they_leave() {
        let mut s = State::default();
        let mut at = 0;
        let mut ms = vec![
            member("s1", MemberStatus::Alive),
            member("c1", MemberStatus::Alive),
        ];
        ms[0].role = Role::Server;
        assert_eq!(sync(&mut s, &ms, &mut at), 3, "two nodes and one service");
        let consul: Vec<&Service> = s.service_instances(CONSUL_SERVICE).collect();
        assert_eq!(consul.len(), 1);
        assert_eq!((consul[0].node.as_str(), consul[0].port), ("s1", 8300));
        ms[0].status = MemberStatus::Failed;
        assert_eq!(sync(&mut s, &ms, &mut at), 1, "serfHealth only");
        assert_eq!(s.service_instances(CONSUL_SERVICE).count(), 1);
        ms[0].status = MemberStatus::Left;
        assert_eq!(sync(&mut s, &ms, &mut at), 1);
        assert_eq!(s.service_instances(CONSUL_SERVICE).count(), 0);
    }
}
