//! Forming a DC's cluster without a manual step: the decision of what a server that is not
//! yet part of a cluster should do, given the servers it can see. Pure; the agent runs the
//! probing loop around it.
//!
//! Rules (Consul's `bootstrap_expect`): once `expect` servers of the DC that are themselves
//! configured to bootstrap, none of which has Raft state, have found each other, the one
//! with the lowest Raft id initializes the cluster with all of them (servers without
//! `bootstrap_expect` are left out: they join later); the others wait for it. If any visible server already belongs
//! to a cluster, there is nothing to bootstrap: ask it to add us. A server that has Raft
//! state never gets here, so a restart never re-bootstraps.

use std::collections::BTreeMap;

use super::ServerNode;

/// A server seen while bootstrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenServer {
    /// Its Raft id.
    pub id: u64,
    /// Its name and address.
    pub node: ServerNode,
    /// Whether it already has Raft state.
    pub initialized: bool,
    /// Its `bootstrap_expect`, if it is configured to bootstrap.
    pub expect: Option<u32>,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not enough servers yet, or another server will initialize.
    Wait,
    /// Initialize the cluster with these members.
    Initialize(BTreeMap<u64, ServerNode>),
    /// A cluster exists: ask this (initialized) server to add us.
    Join(ServerNode),
}

/// Decides for server `me` expecting `expect` servers, having seen `peers` (not including
/// itself).
pub fn decide(me: &SeenServer, expect: Option<u32>, peers: &[SeenServer]) -> Decision {
    if let Some(member) = peers.iter().find(|p| p.initialized) {
        return Decision::Join(member.node.clone());
    }
    let Some(expect) = expect else {
        return Decision::Wait;
    };
    let mut all: BTreeMap<u64, ServerNode> = peers
        .iter()
        .filter(|p| p.expect.is_some())
        .map(|p| (p.id, p.node.clone()))
        .collect();
    all.insert(me.id, me.node.clone());
    if all.len() < expect as usize {
        return Decision::Wait;
    }
    if all.keys().next() == Some(&me.id) {
        Decision::Initialize(all)
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u64, initialized: bool) -> SeenServer {
        SeenServer {
            expect: Some(3),
            id,
            node: ServerNode {
                name: format!("s{id}"),
                addr: format!("127.0.0.{id}:8300"),
            },
            initialized,
        }
    }

    #[test]
    fn lowest_id_initializes_once_enough_are_seen() {
        assert_eq!(
            decide(&s(1, false), Some(3), &[s(2, false)]),
            Decision::Wait
        );
        match decide(&s(1, false), Some(3), &[s(2, false), s(3, false)]) {
            Decision::Initialize(m) => assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3]),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            decide(&s(2, false), Some(3), &[s(1, false), s(3, false)]),
            Decision::Wait
        );
    }

    #[test]
    fn an_existing_cluster_is_joined_not_bootstrapped() {
        assert_eq!(
            decide(&s(1, false), Some(3), &[s(2, false), s(3, true)]),
            Decision::Join(s(3, true).node)
        );
        assert_eq!(
            decide(&s(4, false), None, &[s(1, true)]),
            Decision::Join(s(1, true).node)
        );
    }

    #[test]
    fn servers_that_do_not_bootstrap_are_not_counted_or_chosen() {
        let joiner = SeenServer {
            expect: None,
            ..s(1, false)
        };
        // The joiner has the lowest id but is not a candidate: s2 bootstraps s2..s4.
        match decide(
            &s(2, false),
            Some(3),
            &[joiner.clone(), s(3, false), s(4, false)],
        ) {
            Decision::Initialize(m) => assert_eq!(m.keys().copied().collect::<Vec<_>>(), [2, 3, 4]),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            decide(&s(2, false), Some(3), &[joiner, s(3, false)]),
            Decision::Wait
        );
    }

    #[test]
    fn without_bootstrap_expect_a_server_waits() {
        assert_eq!(
            decide(&s(1, false), None, &[s(2, false), s(3, false)]),
            Decision::Wait
        );
    }
}
