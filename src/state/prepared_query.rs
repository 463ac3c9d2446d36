//! Prepared queries (Consul's `/v1/query`): definitions kept in the DC's Raft state, found
//! by ID, by name, or through a template whose name is the longest prefix of the name
//! asked (`name_prefix_match`, rendered with `${name.full}`, `${name.prefix}`,
//! `${name.suffix}` and `${match(N)}`), and the local part of an execution: the healthy
//! instances a definition selects in this DC. Failing over to other DCs is the
//! dispatcher's (it needs the router); this module is pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::ServiceHealth;
use super::{CommandResult, HealthStatus, State, Table};

/// Consul's only template type.
pub const NAME_PREFIX_MATCH: &str = "name_prefix_match";

/// A stored prepared query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedQuery {
    /// Its UUID.
    pub id: String,
    /// Its name (unique; a template's name is the prefix it matches).
    pub name: String,
    /// A session the query is deleted with.
    pub session: String,
    /// The token the query runs with (empty: the executing request's).
    pub token: String,
    /// What it selects.
    pub service: ServiceQuery,
    /// The TTL of its DNS answers (Go duration; empty: the agent's default).
    pub dns_ttl: String,
    /// Set for a template.
    pub template: Option<QueryTemplate>,
    /// Log index it was created at.
    pub create_index: u64,
    /// Log index it was last changed at.
    pub modify_index: u64,
}

/// The service part of a definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceQuery {
    /// The service name.
    pub service: String,
    /// Where to go when this DC has no healthy instance.
    pub failover: Failover,
    /// Sort by estimated round trip from this node (`_agent`: the executing agent's).
    pub near: String,
    /// Leave out instances with a warning check too (critical ones always are).
    pub only_passing: bool,
    /// Checks that do not count towards health.
    pub ignore_check_ids: Vec<String>,
    /// Tags every instance must carry; `!tag`: must not carry.
    pub tags: Vec<String>,
    /// Node metadata every instance's node must carry.
    pub node_meta: BTreeMap<String, String>,
    /// Service metadata every instance must carry.
    pub service_meta: BTreeMap<String, String>,
}

/// Consul's `Failover`, with one field of ours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// Try this many other DCs, nearest first by network coordinates.
    pub nearest_n: u32,
    /// Then these DCs, in order.
    pub datacenters: Vec<String>,
    /// Beyond Consul: fail over while fewer instances than this are selected here (0 and 1
    /// mean Consul's rule: only when none is).
    pub min_passing: u32,
}

/// A template's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTemplate {
    /// `name_prefix_match`.
    pub kind: String,
    /// Matched against the full name asked; its groups are `${match(N)}`.
    pub regexp: String,
    /// Drop tags that render empty.
    pub remove_empty_tags: bool,
}

/// Why a definition is refused (a 400 with this text).
pub fn validate(q: &PreparedQuery) -> Result<(), String> {
    match &q.template {
        Some(t) => {
            if t.kind != NAME_PREFIX_MATCH {
                return Err(format!("Bad Template.Type '{}'", t.kind));
            }
            if !t.regexp.is_empty() {
                regex_automata::meta::Regex::new(&t.regexp)
                    .map_err(|e| format!("Bad Regexp: {e}"))?;
            }
        }
        None if q.service.service.is_empty() => {
            return Err("Must provide a Service name to query".into());
        }
        None => {}
    }
    if q.name.is_empty() && q.session.is_empty() && q.template.is_none() {
        return Err("Must be bound to a session".into());
    }
    if uuid::Uuid::parse_str(&q.name).is_ok() {
        return Err("Query name cannot be a UUID".into());
    }
    Ok(())
}

impl State {
    /// Creates a query (`create`: its ID must be new) or replaces one (it must exist); its
    /// name must be free.
    pub(super) fn prepared_query_set(
        &mut self,
        index: u64,
        mut q: PreparedQuery,
        create: bool,
    ) -> CommandResult {
        if let Err(why) = validate(&q) {
            return CommandResult::Rejected(why);
        }
        match (create, self.data.prepared_queries.contains_key(&q.id)) {
            (true, true) => return CommandResult::Rejected("Query ID must be new".into()),
            (false, false) => {
                return CommandResult::Rejected(format!(
                    "Cannot modify non-existent prepared query: '{}'",
                    q.id
                ));
            }
            _ => {}
        }
        let taken = self
            .data
            .prepared_queries
            .values()
            .any(|other| other.id != q.id && !q.name.is_empty() && other.name == q.name);
        if taken {
            return CommandResult::Rejected(format!(
                "Name '{}' aliases an existing query name",
                q.name
            ));
        }
        if !q.session.is_empty() && !self.data.sessions.contains_key(&q.session) {
            return CommandResult::Rejected(format!("Invalid session {:?}", q.session));
        }
        q.create_index = self
            .data
            .prepared_queries
            .get(&q.id)
            .map_or(index, |old| old.create_index);
        q.modify_index = index;
        self.data.prepared_queries.insert(q.id.clone(), q);
        self.touch(Table::PreparedQueries, index);
        CommandResult::Ok
    }

    /// Deletes a query (no error if absent).
    pub(super) fn prepared_query_delete(&mut self, index: u64, id: &str) -> CommandResult {
        if self.data.prepared_queries.remove(id).is_some() {
            self.touch(Table::PreparedQueries, index);
        }
        CommandResult::Ok
    }

    /// Deletes the queries bound to an ended session.
    pub(super) fn prepared_queries_of_session_end(&mut self, index: u64, session: &str) {
        let bound: Vec<String> = self
            .data
            .prepared_queries
            .values()
            .filter(|q| q.session == session)
            .map(|q| q.id.clone())
            .collect();
        for id in &bound {
            self.data.prepared_queries.remove(id);
        }
        if !bound.is_empty() {
            self.touch(Table::PreparedQueries, index);
        }
    }

    /// Every query, by ID.
    pub fn prepared_queries(&self) -> impl Iterator<Item = &PreparedQuery> {
        self.data.prepared_queries.values()
    }

    /// The query `id_or_name` names, rendered for that name: by ID, by exact name, else
    /// the template whose name is the longest prefix of it (Consul's order).
    pub fn prepared_query_for(&self, id_or_name: &str) -> Option<PreparedQuery> {
        if let Some(q) = self.data.prepared_queries.get(id_or_name) {
            return Some(render(q, id_or_name));
        }
        let queries = || self.data.prepared_queries.values();
        if let Some(q) = queries().find(|q| q.template.is_none() && q.name == id_or_name) {
            return Some(q.clone());
        }
        queries()
            .filter(|q| q.template.is_some() && id_or_name.starts_with(q.name.as_str()))
            .max_by_key(|q| q.name.len())
            .map(|q| render(q, id_or_name))
    }

    /// The instances `q` selects in this DC, in catalog order: its service's instances
    /// with every tag (and none of the `!tags`), the node and service metadata asked, and
    /// no critical check (no warning either with `OnlyPassing`), ignored checks aside.
    pub fn prepared_query_local(&self, q: &ServiceQuery) -> Vec<ServiceHealth> {
        let ignored = |c: &super::Check| q.ignore_check_ids.contains(&c.check_id);
        self.service_instances(&q.service)
            .filter(|s| tags_select(&s.tags, &q.tags))
            .filter(|s| q.service_meta.iter().all(|(k, v)| s.meta.get(k) == Some(v)))
            .filter_map(|s| self.node(&s.node).map(|n| (n, s)))
            .filter(|(n, _)| q.node_meta.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
            .map(|(n, s)| ServiceHealth {
                node: n.clone(),
                service: s.clone(),
                checks: self
                    .node_checks(&n.node)
                    .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                    .cloned()
                    .collect(),
            })
            .filter(|h| {
                h.checks
                    .iter()
                    .filter(|c| !ignored(c))
                    .all(|c| match c.status {
                        HealthStatus::Critical => false,
                        HealthStatus::Warning => !q.only_passing,
                        _ => true,
                    })
            })
            .collect()
    }
}

/// Whether `have` carries every tag of `want` and none of its `!tags` (compared
/// case-insensitively, as Consul's prepared queries do).
fn tags_select(have: &[String], want: &[String]) -> bool {
    let has = |t: &str| have.iter().any(|h| h.eq_ignore_ascii_case(t));
    want.iter().all(|t| match t.strip_prefix('!') {
        Some(absent) => !has(absent),
        None => has(t),
    })
}

/// `q` as it runs for `name`: a template's strings interpolated (`${name.full}`,
/// `${name.prefix}`, `${name.suffix}`, `${match(N)}`); any other query unchanged.
pub fn render(q: &PreparedQuery, name: &str) -> PreparedQuery {
    let Some(t) = &q.template else {
        return q.clone();
    };
    let groups: Vec<String> = match regex_automata::meta::Regex::new(&t.regexp) {
        Ok(re) if !t.regexp.is_empty() => {
            let mut caps = re.create_captures();
            re.captures(name, &mut caps);
            (0..caps.group_len())
                .map(|i| {
                    caps.get_group(i)
                        .map_or(String::new(), |s| name[s].to_string())
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let suffix = name.strip_prefix(q.name.as_str()).unwrap_or_default();
    let fill = |text: &str| interpolate(text, name, &q.name, suffix, &groups);
    let mut out = q.clone();
    let s = &mut out.service;
    s.service = fill(&s.service);
    s.near = fill(&s.near);
    s.tags = s.tags.iter().map(|t| fill(t)).collect();
    if t.remove_empty_tags {
        s.tags.retain(|t| !t.is_empty() && t != "!");
    }
    s.ignore_check_ids = s.ignore_check_ids.iter().map(|c| fill(c)).collect();
    s.failover.datacenters = s.failover.datacenters.iter().map(|d| fill(d)).collect();
    s.node_meta = s
        .node_meta
        .iter()
        .map(|(k, v)| (k.clone(), fill(v)))
        .collect();
    s.service_meta = s
        .service_meta
        .iter()
        .map(|(k, v)| (k.clone(), fill(v)))
        .collect();
    out
}

/// Replaces each `${...}` Consul's templates know; unknown ones are left as they are.
fn interpolate(text: &str, full: &str, prefix: &str, suffix: &str, groups: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 2..start + end].trim();
        let value = match expr {
            "name.full" => Some(full.to_string()),
            "name.prefix" => Some(prefix.to_string()),
            "name.suffix" => Some(suffix.to_string()),
            _ => expr
                .strip_prefix("match(")
                .and_then(|e| e.strip_suffix(')'))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .map(|n| groups.get(n).cloned().unwrap_or_default()),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + end + 1]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, regexp: &str, service: &str) -> PreparedQuery {
        PreparedQuery {
            id: "t".into(),
            name: name.into(),
            session: String::new(),
            token: String::new(),
            service: ServiceQuery {
                service: service.into(),
                tags: vec!["${match(2)}".into(), "!canary".into()],
                ..Default::default()
            },
            dns_ttl: String::new(),
            template: Some(QueryTemplate {
                kind: NAME_PREFIX_MATCH.into(),
                regexp: regexp.into(),
                remove_empty_tags: true,
            }),
            create_index: 0,
            modify_index: 0,
        }
    }

    #[test]
    fn templates_render_names_and_match_groups() {
        let q = template("geo-", "^geo-([a-z]+)-?([a-z]*)$", "${match(1)}");
        let r = render(&q, "geo-web-primary");
        assert_eq!(r.service.service, "web");
        assert_eq!(r.service.tags, ["primary", "!canary"]);
        // An empty group's tag is removed with RemoveEmptyTags.
        let r = render(&q, "geo-db");
        assert_eq!(r.service.service, "db");
        assert_eq!(r.service.tags, ["!canary"]);
        let q = template("", "", "${name.full}");
        assert_eq!(render(&q, "anything").service.service, "anything");
        let q = template("pre-", "", "${name.suffix}-${name.prefix}-${unknown}");
        assert_eq!(render(&q, "pre-x").service.service, "x-pre--${unknown}");
    }

    #[test]
    fn definitions_are_validated_as_consul_does() {
        let mut q = template("geo-", "^geo-(", "x");
        assert!(validate(&q).unwrap_err().starts_with("Bad Regexp"));
        q.template.as_mut().unwrap().regexp = String::new();
        q.template.as_mut().unwrap().kind = "other".into();
        assert_eq!(validate(&q).unwrap_err(), "Bad Template.Type 'other'");
        q.template = None;
        q.service.service = String::new();
        assert_eq!(
            validate(&q).unwrap_err(),
            "Must provide a Service name to query"
        );
        q.service.service = "web".into();
        q.name = String::new();
        assert_eq!(validate(&q).unwrap_err(), "Must be bound to a session");
        q.name = "5b9a0a8b-4c4f-4a4b-9c1e-0c8f5b7e9a11".into();
        assert_eq!(validate(&q).unwrap_err(), "Query name cannot be a UUID");
        q.name = "web".into();
        assert_eq!(validate(&q), Ok(()));
    }

    #[test]
    fn tags_select_with_negation_ignoring_case() {
        let have = ["Primary".to_string(), "v2".to_string()];
        assert!(tags_select(&have, &["primary".into()]));
        assert!(tags_select(&have, &["!canary".into(), "v2".into()]));
        assert!(!tags_select(&have, &["!v2".into()]));
        assert!(!tags_select(&have, &["v3".into()]));
    }
}
