//! Network coordinates of the DC's nodes, as their agents report them (Consul keeps them in
//! its Raft state too): updates for nodes in the catalog only, removed with their node; and
//! the estimated round trips from a node that `?near=` sorts answers by.

use std::time::Duration;

use super::{CommandResult, State, Table};
use crate::coordinate::Coordinate;

/// Where `?near=` measures from: a node, or the node with an address (`_ip`: the
/// request's source).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Near {
    /// A node by name.
    Node(String),
    /// The node registered with this address.
    Address(String),
}

/// One node's reported coordinate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeCoordinate {
    /// The node.
    pub node: String,
    /// Where it is.
    pub coord: Coordinate,
}

impl State {
    /// Records the coordinates of nodes in the catalog (others are ignored, as Consul
    /// does: a node deregistered while its update was in flight stays gone).
    pub(super) fn coordinates_update(
        &mut self,
        index: u64,
        updates: Vec<NodeCoordinate>,
    ) -> CommandResult {
        let mut changed = false;
        for u in updates {
            if self.data.nodes.contains_key(&u.node) && u.coord.is_valid() {
                self.data.coordinates.insert(u.node, u.coord);
                changed = true;
            }
        }
        if changed {
            self.touch(Table::Coordinates, index);
        }
        CommandResult::Ok
    }

    /// Forgets a deregistered node's coordinate.
    pub(super) fn coordinate_remove(&mut self, index: u64, node: &str) {
        if self.data.coordinates.remove(node).is_some() {
            self.touch(Table::Coordinates, index);
        }
    }

    /// The coordinates of every node (or of one), by node name.
    pub fn coordinates(&self, node: Option<&str>) -> Vec<NodeCoordinate> {
        self.data
            .coordinates
            .iter()
            .filter(|(n, _)| node.is_none_or(|want| want == n.as_str()))
            .map(|(n, c)| NodeCoordinate {
                node: n.clone(),
                coord: c.clone(),
            })
            .collect()
    }

    /// The estimated round trip from `near` to each node (`Duration::MAX` for a node
    /// without a coordinate); `None` when `near` has no coordinate, and answers are then
    /// left unsorted (as Consul does).
    pub fn distances_from(&self, near: &Near) -> Option<impl Fn(&str) -> Duration + '_> {
        let node = match near {
            Near::Node(name) => Some(name.as_str()),
            Near::Address(addr) => self
                .data
                .nodes
                .values()
                .find(|n| n.address == *addr)
                .map(|n| n.node.as_str()),
        };
        let from = node.and_then(|n| self.data.coordinates.get(n))?;
        Some(move |node: &str| {
            self.data
                .coordinates
                .get(node)
                .filter(|c| c.is_compatible_with(from))
                .map_or(Duration::MAX, |c| from.distance_to(c))
        })
    }
}
