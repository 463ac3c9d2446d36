//! Reads of the state as typed, serializable queries: the same [`Query`] runs locally or is
//! forwarded to the leader, and names the tables whose indexes a blocking read waits on.

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use std::collections::BTreeMap;

use super::{Check, HealthStatus, KvEntry, Node, Service, Session, State, Table};
use crate::acl::model::{Policy, Role, Token};

/// Node metadata pairs a node must carry (`?node-meta=key:value`, all of them).
pub type NodeMetaFilter = Vec<(String, String)>;

/// A read of the DC's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// One KV entry.
    KvGet {
        /// The key.
        key: String,
    },
    /// Every KV entry under a prefix (`?recurse`).
    KvList {
        /// The prefix.
        prefix: String,
    },
    /// The keys under a prefix (`?keys`), cut after `separator` if one is given.
    KvKeys {
        /// The prefix.
        prefix: String,
        /// Group keys up to the first separator after the prefix.
        separator: Option<String>,
    },
    /// `catalog/nodes`.
    Nodes {
        /// Required node metadata.
        node_meta: NodeMetaFilter,
    },
    /// `catalog/services`: every service name with its tags.
    Services {
        /// Only services on nodes carrying this metadata.
        node_meta: NodeMetaFilter,
    },
    /// `internal/ui/services`: every service summed up (instances, nodes, health).
    ServiceSummaries,
    /// `catalog/service/:name`: the instances of one service with their nodes.
    ServiceNodes {
        /// The service name.
        service: String,
        /// Tags every instance must carry.
        tags: Vec<String>,
        /// Required node metadata.
        node_meta: NodeMetaFilter,
    },
    /// `catalog/node/:node`: a node and its services.
    NodeServices {
        /// The node name.
        node: String,
    },
    /// `health/service/:name`: instances with their node and every check that applies.
    ServiceHealth {
        /// The service name.
        service: String,
        /// Tags every instance must carry.
        tags: Vec<String>,
        /// Only instances whose every check (node and service) passes.
        passing: bool,
        /// Required node metadata.
        node_meta: NodeMetaFilter,
    },
    /// `health/checks/:service`: the checks of a service's instances.
    ServiceChecks {
        /// The service name.
        service: String,
    },
    /// `health/node/:node`: every check on a node.
    NodeChecks {
        /// The node name.
        node: String,
    },
    /// Every check with this ID, on any node (e.g. every `serfHealth`).
    CheckById {
        /// The check ID.
        check_id: String,
    },
    /// `health/state/:state`: every check in a state (`None`: any state).
    ChecksInState {
        /// The state asked for.
        state: Option<HealthStatus>,
    },
    /// `session/info/:id`: one session (none or one).
    SessionInfo {
        /// The session ID.
        id: String,
    },
    /// `session/node/:node`: the sessions tied to a node.
    NodeSessions {
        /// The node name.
        node: String,
    },
    /// `session/list`: every session.
    Sessions,
    /// `acl/policies`.
    AclPolicies,
    /// `acl/policy/:id` or `acl/policy/name/:name` (none or one).
    AclPolicy(AclName),
    /// `acl/roles`.
    AclRoles,
    /// `acl/role/:id` or `acl/role/name/:name` (none or one).
    AclRole(AclName),
    /// `acl/tokens`.
    AclTokens,
    /// `acl/token/:accessor` (none or one).
    AclToken {
        /// Its AccessorID.
        accessor: String,
    },
    /// `acl/token/self`: the token whose secret this is (none or one).
    AclTokenSelf {
        /// The secret.
        secret: crate::acl::Secret,
    },
    /// What other DCs replicate from the primary: every policy and role, and every token
    /// that is not `Local` (secrets included).
    AclReplication,
    /// `GET /v1/query` (`None`) or `/v1/query/:id` (by ID only).
    PreparedQueries {
        /// Only this one.
        id: Option<String>,
    },
    /// A transaction of reads and checks only (`/v1/txn` without writes).
    Txn(Vec<super::txn::TxnOp>),
    /// `coordinate/nodes` (`None`) or `coordinate/node/:node`.
    Coordinates {
        /// Only this node's.
        node: Option<String>,
    },
    /// Another query's answer narrowed by a `?filter=` expression (the filter module's
    /// language), applied where the data is, after the state lock is released.
    Filtered {
        /// The query answered (one the filter module accepts).
        query: Box<Query>,
        /// The expression.
        filter: String,
    },
    /// Another query's answer sorted by estimated round trip from a node (`?near=`).
    Near {
        /// Where distances are measured from.
        near: super::coordinates::Near,
        /// The query answered (catalog nodes or service instances).
        query: Box<Query>,
    },
}

/// The global part of a DC's ACL tables, as replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSet {
    /// Every stored policy.
    pub policies: Vec<Policy>,
    /// Every role.
    pub roles: Vec<Role>,
    /// Every stored token that is not `Local`.
    pub tokens: Vec<Token>,
}

/// An ACL policy or role, named by ID or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclName {
    /// By ID.
    Id(String),
    /// By name.
    Name(String),
}

pub use super::types::ServiceHealth;

/// What a [`Query`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryResult {
    /// KV entries (empty: not found).
    Kv(Vec<KvEntry>),
    /// Key names.
    Keys(Vec<String>),
    /// Catalog nodes.
    Nodes(Vec<Node>),
    /// Service names with the union of their instances' tags.
    ServiceTags(BTreeMap<String, Vec<String>>),
    /// Every service summed up.
    ServiceSummaries(Vec<ServiceSummary>),
    /// Service instances with their nodes.
    ServiceNodes(Vec<(Node, Service)>),
    /// A node and its services (`None`: no such node).
    NodeServices(Option<(Node, Vec<Service>)>),
    /// Instances with their health.
    Health(Vec<ServiceHealth>),
    /// Health checks.
    Checks(Vec<Check>),
    /// Sessions.
    Sessions(Vec<Session>),
    /// ACL policies.
    AclPolicies(Vec<Policy>),
    /// ACL roles.
    AclRoles(Vec<Role>),
    /// ACL tokens.
    AclTokens(Vec<Token>),
    /// The ACL tables' global part.
    AclSet(Box<AclSet>),
    /// Nodes' network coordinates.
    Coordinates(Vec<super::coordinates::NodeCoordinate>),
    /// Prepared query definitions.
    PreparedQueries(Vec<super::prepared_query::PreparedQuery>),
    /// What a read-only transaction answered.
    Txn(super::txn::TxnOutcome),
}

/// One service of a DC summed up, as Consul's UI lists services (`internal/ui/services`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The service name.
    pub name: String,
    /// The union of its instances' tags, sorted.
    pub tags: Vec<String>,
    /// The nodes its instances run on, sorted.
    pub nodes: Vec<String>,
    /// How many instances it has.
    pub instances: usize,
    /// Its distinct checks (an instance's own and its node's) passing, warning, critical.
    pub checks: [usize; 3],
    /// Its instances by their worst check: passing, warning, critical.
    pub health: [usize; 3],
}

/// Every service of `state` summed up.
fn summaries(state: &State) -> Vec<ServiceSummary> {
    use std::collections::BTreeSet;
    let rank = |s: HealthStatus| match s {
        HealthStatus::Passing => 0,
        HealthStatus::Warning => 1,
        HealthStatus::Critical => 2,
    };
    state
        .service_names()
        .map(|(name, list)| {
            let mut sum = ServiceSummary {
                name: name.to_string(),
                ..ServiceSummary::default()
            };
            let (mut tags, mut nodes, mut seen) =
                (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
            for s in list {
                sum.instances += 1;
                tags.extend(s.tags.iter());
                nodes.insert(s.node.as_str());
                let mut worst = 0;
                for c in state
                    .node_checks(&s.node)
                    .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                {
                    worst = worst.max(rank(c.status));
                    if seen.insert((c.node.as_str(), c.check_id.as_str())) {
                        sum.checks[rank(c.status)] += 1;
                    }
                }
                sum.health[worst] += 1;
            }
            sum.tags = tags.into_iter().cloned().collect();
            sum.nodes = nodes.into_iter().map(str::to_string).collect();
            sum
        })
        .collect()
}

fn meta_matches(node: &Node, filter: &NodeMetaFilter) -> bool {
    filter
        .iter()
        .all(|(k, v)| node.meta.get(k).is_some_and(|have| have == v))
}

/// Whether the instance carries every tag, compared case-insensitively (as Consul's tag
/// filter, and as DNS names are).
fn tags_match(service: &Service, tags: &[String]) -> bool {
    tags.iter()
        .all(|t| service.tags.iter().any(|have| have.eq_ignore_ascii_case(t)))
}

/// Service names with the union of their instances' tags (`catalog/services`).
pub fn group_tags<'a>(
    instances: impl Iterator<Item = &'a Service>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in instances {
        out.entry(s.service.clone())
            .or_default()
            .extend(s.tags.iter().cloned());
    }
    for tags in out.values_mut() {
        tags.sort();
        tags.dedup();
    }
    out
}

/// The instances of `name` carrying `tags`, on nodes matching `node_meta`.
fn instances<'a>(
    state: &'a State,
    name: &'a str,
    tags: &'a [String],
    node_meta: &'a NodeMetaFilter,
) -> impl Iterator<Item = (&'a Node, &'a Service)> + 'a {
    state
        .service_instances(name)
        .filter(move |s| tags_match(s, tags))
        .filter_map(|s| state.node(&s.node).map(|n| (n, s)))
        .filter(move |(n, _)| meta_matches(n, node_meta))
}

impl Query {
    /// Whether it reads the ACL system (refused where ACLs are disabled).
    pub fn is_acl(&self) -> bool {
        self.tables() == [Table::Acl]
    }

    /// The tables whose changes can change this query's answer.
    pub fn tables(&self) -> &'static [Table] {
        match self {
            Query::KvGet { .. } | Query::KvList { .. } | Query::KvKeys { .. } => &[Table::Kv],
            Query::Nodes { .. } => &[Table::Nodes],
            Query::Services { .. } | Query::ServiceNodes { .. } | Query::NodeServices { .. } => {
                &[Table::Nodes, Table::Services]
            }
            Query::ServiceHealth { .. } | Query::ServiceSummaries => {
                &[Table::Nodes, Table::Services, Table::Checks]
            }
            Query::ServiceChecks { .. }
            | Query::NodeChecks { .. }
            | Query::ChecksInState { .. }
            | Query::CheckById { .. } => &[Table::Checks],
            Query::SessionInfo { .. } | Query::NodeSessions { .. } | Query::Sessions => {
                &[Table::Sessions]
            }
            Query::AclPolicies
            | Query::AclPolicy(_)
            | Query::AclRoles
            | Query::AclRole(_)
            | Query::AclTokens
            | Query::AclToken { .. }
            | Query::AclTokenSelf { .. }
            | Query::AclReplication => &[Table::Acl],
            Query::Coordinates { .. } => &[Table::Coordinates],
            Query::PreparedQueries { .. } => &[Table::PreparedQueries],
            Query::Txn(_) => &[Table::Kv, Table::Nodes, Table::Services, Table::Checks],
            Query::Near { query, .. } | Query::Filtered { query, .. } => query.tables(),
        }
    }

    /// The query a `?filter=` narrows (itself when it has none).
    pub fn inner(&self) -> &Query {
        match self {
            Query::Filtered { query, .. } => query,
            other => other,
        }
    }

    /// The query to run under the state lock, and the filter to apply to its answer once
    /// the lock is released: `catalog/services` with a filter lists every instance (the
    /// filter is on instances), to be grouped by name after filtering.
    pub fn for_filter(&self) -> (std::borrow::Cow<'_, Query>, Option<&str>) {
        match self {
            Query::Filtered { query, filter } => match &**query {
                Query::Services { node_meta } => (
                    std::borrow::Cow::Owned(Query::ServiceNodes {
                        service: String::new(),
                        tags: Vec::new(),
                        node_meta: node_meta.clone(),
                    }),
                    Some(filter),
                ),
                inner => (std::borrow::Cow::Borrowed(inner), Some(filter)),
            },
            other => (std::borrow::Cow::Borrowed(other), None),
        }
    }

    /// What a blocking read of this query waits on: the key or prefix it reads for KV
    /// (a write elsewhere in the store wakes nobody waiting here), else its tables.
    pub fn watch(&self, state: &State) -> Vec<watch::Receiver<u64>> {
        match self {
            Query::KvGet { key } => vec![state.watch_kv_key(key)],
            Query::KvList { prefix } | Query::KvKeys { prefix, .. } => {
                vec![state.watch_kv_prefix(prefix)]
            }
            _ => self.tables().iter().map(|t| state.watch(*t)).collect(),
        }
    }

    /// The index a blocking read of this query compares and `X-Consul-Index` reports, never
    /// below 1: an existing key's own `ModifyIndex` (as Consul), else the highest index of
    /// its tables.
    pub fn index(&self, state: &State) -> u64 {
        match self {
            Query::KvGet { key } => match state.kv_get(key) {
                Some(e) => e.modify_index.max(1),
                None => state.max_index(self.tables()),
            },
            _ => state.max_index(self.tables()),
        }
    }

    /// Answers the query from `state`.
    pub fn run(&self, state: &State) -> QueryResult {
        match self {
            Query::KvGet { key } => {
                QueryResult::Kv(state.kv_get(key).cloned().into_iter().collect())
            }
            Query::KvList { prefix } => QueryResult::Kv(state.kv_prefix(prefix).cloned().collect()),
            Query::KvKeys { prefix, separator } => {
                let mut keys: Vec<String> = Vec::new();
                for e in state.kv_prefix(prefix) {
                    let key = match separator.as_deref().filter(|s| !s.is_empty()) {
                        Some(sep) => match e.key[prefix.len()..].find(sep) {
                            Some(at) => &e.key[..prefix.len() + at + sep.len()],
                            None => &e.key,
                        },
                        None => &e.key,
                    };
                    // Keys come sorted, so grouped keys are adjacent.
                    if keys.last().map(String::as_str) != Some(key) {
                        keys.push(key.to_string());
                    }
                }
                QueryResult::Keys(keys)
            }
            Query::Nodes { node_meta } => QueryResult::Nodes(
                state
                    .nodes()
                    .filter(|n| meta_matches(n, node_meta))
                    .cloned()
                    .collect(),
            ),
            Query::Services { node_meta } => QueryResult::ServiceTags(group_tags(
                state
                    .service_names()
                    .flat_map(|(_, list)| list)
                    .filter(|s| {
                        node_meta.is_empty()
                            || state
                                .node(&s.node)
                                .is_some_and(|n| meta_matches(n, node_meta))
                    }),
            )),
            Query::ServiceSummaries => QueryResult::ServiceSummaries(summaries(state)),
            // An empty name lists every instance (a filtered `catalog/services`).
            Query::ServiceNodes {
                service,
                tags,
                node_meta,
            } if service.is_empty() => QueryResult::ServiceNodes(
                state
                    .service_names()
                    .flat_map(|(_, list)| list)
                    .filter(|s| tags_match(s, tags))
                    .filter_map(|s| state.node(&s.node).map(|n| (n, s)))
                    .filter(|(n, _)| meta_matches(n, node_meta))
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect(),
            ),
            Query::ServiceNodes {
                service,
                tags,
                node_meta,
            } => QueryResult::ServiceNodes(
                instances(state, service, tags, node_meta)
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect(),
            ),
            Query::NodeServices { node } => QueryResult::NodeServices(
                state
                    .node_named(node)
                    .map(|n| (n.clone(), state.node_services(&n.node).cloned().collect())),
            ),
            Query::ServiceHealth {
                service,
                tags,
                passing,
                node_meta,
            } => QueryResult::Health(
                instances(state, service, tags, node_meta)
                    .map(|(n, s)| ServiceHealth {
                        node: n.clone(),
                        service: s.clone(),
                        checks: state
                            .node_checks(&n.node)
                            .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                            .cloned()
                            .collect(),
                    })
                    .filter(|h| {
                        !passing || h.checks.iter().all(|c| c.status == HealthStatus::Passing)
                    })
                    .collect(),
            ),
            Query::ServiceChecks { service } => QueryResult::Checks(
                state
                    .service_instances(service)
                    .flat_map(|s| {
                        state
                            .node_checks(&s.node)
                            .filter(move |c| c.service_id == s.id)
                    })
                    .cloned()
                    .collect(),
            ),
            Query::NodeChecks { node } => {
                QueryResult::Checks(state.node_checks(node).cloned().collect())
            }
            Query::CheckById { check_id } => QueryResult::Checks(
                state
                    .checks()
                    .filter(|c| &c.check_id == check_id)
                    .cloned()
                    .collect(),
            ),
            Query::ChecksInState { state: wanted } => QueryResult::Checks(
                state
                    .checks()
                    .filter(|c| wanted.is_none_or(|w| c.status == w))
                    .cloned()
                    .collect(),
            ),
            Query::SessionInfo { id } => {
                QueryResult::Sessions(state.session(id).cloned().into_iter().collect())
            }
            Query::NodeSessions { node } => QueryResult::Sessions(
                state
                    .sessions()
                    .filter(|s| s.node == *node)
                    .cloned()
                    .collect(),
            ),
            Query::Sessions => QueryResult::Sessions(state.sessions().cloned().collect()),
            Query::Coordinates { node } => {
                QueryResult::Coordinates(state.coordinates(node.as_deref()))
            }
            Query::Txn(ops) => QueryResult::Txn(state.txn_read(ops)),
            Query::PreparedQueries { id } => QueryResult::PreparedQueries(
                state
                    .prepared_queries()
                    .filter(|q| id.as_ref().is_none_or(|id| *id == q.id))
                    .cloned()
                    .collect(),
            ),
            Query::Filtered { query, .. } => query.run(state),
            Query::Near { near, query } => {
                let mut result = query.run(state);
                if let Some(distance) = state.distances_from(near) {
                    match &mut result {
                        QueryResult::Nodes(nodes) => {
                            nodes.sort_by_cached_key(|n| distance(&n.node))
                        }
                        QueryResult::ServiceNodes(list) => {
                            list.sort_by_cached_key(|(n, _)| distance(&n.node))
                        }
                        QueryResult::Health(list) => {
                            list.sort_by_cached_key(|h| distance(&h.node.node))
                        }
                        _ => {}
                    }
                }
                result
            }
            Query::AclPolicies => QueryResult::AclPolicies(state.acl_policies()),
            Query::AclPolicy(which) => QueryResult::AclPolicies(
                match which {
                    AclName::Id(id) => state.acl_policy(id),
                    AclName::Name(name) => state.acl_policy_named(name),
                }
                .into_iter()
                .collect(),
            ),
            Query::AclRoles => QueryResult::AclRoles(state.acl_roles().cloned().collect()),
            Query::AclRole(which) => QueryResult::AclRoles(
                match which {
                    AclName::Id(id) => state.acl_role(id),
                    AclName::Name(name) => state.acl_role_named(name),
                }
                .cloned()
                .into_iter()
                .collect(),
            ),
            Query::AclTokens => QueryResult::AclTokens(state.acl_tokens()),
            Query::AclToken { accessor } => {
                QueryResult::AclTokens(state.acl_token(accessor).into_iter().collect())
            }
            Query::AclReplication => QueryResult::AclSet(Box::new(state.acl_global())),
            Query::AclTokenSelf { secret } => {
                QueryResult::AclTokens(state.acl_token_by_secret(&secret.0).into_iter().collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn keys_with_separator_group_like_consul() {
        let mut s = State::default();
        for (i, k) in ["web/a", "web/b/c", "web/b/d", "web/e", "weba"]
            .iter()
            .enumerate()
        {
            s.apply(
                i as u64 + 1,
                Command::KvSet {
                    key: k.to_string(),
                    value: bytes::Bytes::new(),
                    flags: 0,
                },
                std::time::Instant::now(),
            );
        }
        let q = Query::KvKeys {
            prefix: "web/".into(),
            separator: Some("/".into()),
        };
        assert_eq!(
            q.run(&s),
            QueryResult::Keys(vec!["web/a".into(), "web/b/".into(), "web/e".into()])
        );
        let all = Query::KvKeys {
            prefix: "web".into(),
            separator: None,
        };
        let QueryResult::Keys(k) = all.run(&s) else {
            panic!()
        };
        assert_eq!(k.len(), 5);
        let get = Query::KvGet { key: "nope".into() };
        assert_eq!(get.run(&s), QueryResult::Kv(vec![]));
    }
}
