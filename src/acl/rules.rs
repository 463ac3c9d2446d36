//! The ACL rule language: a policy's `Rules`, written in HCL or in the same structure as
//! JSON (Consul's two forms), parsed strictly into [`Rules`]. HCL goes through the
//! `hcl-rs` crate into its JSON form, so both forms share one decoder.
//!
//! ```hcl
//! key_prefix "app/" { policy = "write" }
//! service_prefix "" { policy = "read" }
//! operator = "read"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a rule grants. Ordered by precedence when several policies set a rule for the same
/// resource: deny > write > list > read (Consul's `takesPrecedenceOver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Reading.
    Read,
    /// Listing keys (and reading); KV only.
    List,
    /// Reading, listing and changing.
    Write,
    /// Nothing, whatever else grants it.
    Deny,
}

impl Access {
    /// Whether a rule of this level allows `needed` (Consul's `enforce`): write grants
    /// everything, list grants list and read, read only read, deny nothing.
    pub fn allows(self, needed: Access) -> bool {
        match self {
            Access::Write => true,
            Access::List => matches!(needed, Access::List | Access::Read),
            Access::Read => needed == Access::Read,
            Access::Deny => false,
        }
    }

    /// The word Consul uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::List => "list",
            Access::Write => "write",
            Access::Deny => "deny",
        }
    }

    /// The stronger of two rules for the same resource.
    pub fn merge(self, other: Access) -> Access {
        self.max(other)
    }
}

/// The kinds of named resources a rule can cover (each as `kind "name"` for one name and
/// `kind_prefix "p"` for every name starting with `p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Agent endpoints of the named node.
    Agent,
    /// User events.
    Event,
    /// KV keys.
    Key,
    /// Nodes in the catalog.
    Node,
    /// Prepared queries.
    Query,
    /// Services in the catalog and on agents.
    Service,
    /// Sessions, by the node they belong to.
    Session,
}

impl Resource {
    /// Every kind.
    pub const ALL: [Resource; 7] = [
        Resource::Agent,
        Resource::Event,
        Resource::Key,
        Resource::Node,
        Resource::Query,
        Resource::Service,
        Resource::Session,
    ];

    /// The rule's keyword (`key`, `service`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Key => "key",
            Resource::Node => "node",
            Resource::Query => "query",
            Resource::Service => "service",
            Resource::Session => "session",
        }
    }
}

/// The resources with a single rule for all of them (`operator = "read"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scalar {
    /// The ACL system itself (tokens, policies, roles).
    Acl,
    /// The gossip keyring.
    Keyring,
    /// Raft and autopilot operations.
    Operator,
}

impl Scalar {
    /// The rule's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Scalar::Acl => "acl",
            Scalar::Keyring => "keyring",
            Scalar::Operator => "operator",
        }
    }
}

/// Rules for one kind of named resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segments {
    /// `kind "name"`: exactly that name.
    pub exact: BTreeMap<String, Access>,
    /// `kind_prefix "p"`: names starting with `p`.
    pub prefix: BTreeMap<String, Access>,
}

impl Segments {
    /// The rule that decides for `name`: an exact rule, else the longest matching prefix.
    pub fn lookup(&self, name: &str) -> Option<Access> {
        if let Some(a) = self.exact.get(name) {
            return Some(*a);
        }
        // Every prefix of `name` sorts at or before it, and a longer prefix after a shorter
        // one: walking back from `name`, the first rule that is a prefix is the longest.
        self.prefix
            .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(name)))
            .rev()
            .find(|(p, _)| name.starts_with(p.as_str()))
            .map(|(_, a)| *a)
    }

    fn merge(&mut self, other: &Segments) {
        for (name, a) in &other.exact {
            let e = self.exact.entry(name.clone()).or_insert(*a);
            *e = e.merge(*a);
        }
        for (name, a) in &other.prefix {
            let e = self.prefix.entry(name.clone()).or_insert(*a);
            *e = e.merge(*a);
        }
    }
}

/// A policy's rules, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Named resources by kind.
    pub named: BTreeMap<Resource, Segments>,
    /// Single-rule resources.
    pub scalar: BTreeMap<Scalar, Access>,
}

/// Why rules could not be parsed (the message says where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Failed to parse ACL rules: {0}")]
pub struct RulesError(pub String);

impl Rules {
    /// Parses rules written in HCL or JSON (an object whose first non-blank character is
    /// `{`). Empty text is no rules.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        if text.trim().is_empty() {
            return Ok(Rules::default());
        }
        let value: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| RulesError(e.to_string()))?
        } else {
            hcl::from_str(text).map_err(|e| RulesError(e.to_string()))?
        };
        Rules::from_value(&value)
    }

    fn from_value(value: &serde_json::Value) -> Result<Rules, RulesError> {
        let top = value
            .as_object()
            .ok_or_else(|| RulesError("rules must be an object of rule blocks".into()))?;
        let mut rules = Rules::default();
        for (word, body) in top {
            if let Some(scalar) = [Scalar::Acl, Scalar::Keyring, Scalar::Operator]
                .into_iter()
                .find(|s| s.as_str() == word)
            {
                let access = access_of(word, body)?;
                if access == Access::List {
                    return Err(RulesError(format!(
                        "{word}: \"list\" is only a policy for keys"
                    )));
                }
                rules.scalar.insert(scalar, access);
                continue;
            }
            let (kind, prefix) = match word.strip_suffix("_prefix") {
                Some(k) => (k, true),
                None => (word.as_str(), false),
            };
            let resource = Resource::ALL
                .into_iter()
                .find(|r| r.as_str() == kind)
                .ok_or_else(|| RulesError(format!("unknown rule {word:?}")))?;
            let segments = rules.named.entry(resource).or_default();
            for (name, block) in blocks(word, body)? {
                let access = block_policy(word, &name, block)?;
                if access == Access::List && resource != Resource::Key {
                    return Err(RulesError(format!(
                        "{word} {name:?}: \"list\" is only a policy for keys"
                    )));
                }
                let map = if prefix {
                    &mut segments.prefix
                } else {
                    &mut segments.exact
                };
                let e = map.entry(name).or_insert(access);
                *e = e.merge(access);
            }
        }
        Ok(rules)
    }

    /// These rules and `other`'s together, the stronger rule winning where both set one.
    pub fn merge(&mut self, other: &Rules) {
        for (kind, segments) in &other.named {
            self.named.entry(*kind).or_default().merge(segments);
        }
        for (scalar, a) in &other.scalar {
            let e = self.scalar.entry(*scalar).or_insert(*a);
            *e = e.merge(*a);
        }
    }
}

/// `body` of `word` as (label, block) pairs: `{"label": {...}}`, or a list of such objects
/// (HCL repeats a block type that way in its JSON form).
fn blocks<'a>(
    word: &str,
    body: &'a serde_json::Value,
) -> Result<Vec<(String, &'a serde_json::Value)>, RulesError> {
    let parts: Vec<&serde_json::Value> = match body {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for part in parts {
        let obj = part.as_object().ok_or_else(|| {
            RulesError(format!(
                "{word} needs a name: {word} \"name\" {{ policy = ... }}"
            ))
        })?;
        for (name, block) in obj {
            out.push((name.clone(), block));
        }
    }
    Ok(out)
}

/// The `policy` of one labelled block (`intentions`, which applies to service mesh, is
/// accepted and ignored).
fn block_policy(word: &str, name: &str, block: &serde_json::Value) -> Result<Access, RulesError> {
    let items: Vec<&serde_json::Value> = match block {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut policy = None;
    for item in items {
        let obj = item.as_object().ok_or_else(|| {
            RulesError(format!(
                "{word} {name:?}: expected a block {{ policy = ... }}"
            ))
        })?;
        for (field, v) in obj {
            match field.as_str() {
                "policy" => policy = Some(access_of(&format!("{word} {name:?}"), v)?),
                "intentions" if word.starts_with("service") => {}
                other => {
                    return Err(RulesError(format!(
                        "{word} {name:?}: unknown field {other:?}"
                    )));
                }
            }
        }
    }
    policy.ok_or_else(|| RulesError(format!("{word} {name:?}: missing policy")))
}

fn access_of(what: &str, v: &serde_json::Value) -> Result<Access, RulesError> {
    match v.as_str() {
        Some("read") => Ok(Access::Read),
        Some("list") => Ok(Access::List),
        Some("write") => Ok(Access::Write),
        Some("deny") => Ok(Access::Deny),
        _ => Err(RulesError(format!(
            "{what}: policy must be \"read\", \"write\", \"list\" or \"deny\", not {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_and_json_forms_parse_to_the_same_rules() {
        let hcl = r#"
            key_prefix "app/" { policy = "write" }
            key_prefix "" { policy = "read" }
            key "app/secret" { policy = "deny" }
            service_prefix "" {
              policy = "read"
              intentions = "read"
            }
            service "web" { policy = "write" }
            operator = "read"
        "#;
        let json = r#"{
            "key_prefix": {"app/": {"policy": "write"}, "": {"policy": "read"}},
            "key": {"app/secret": {"policy": "deny"}},
            "service_prefix": {"": {"policy": "read", "intentions": "read"}},
            "service": {"web": {"policy": "write"}},
            "operator": "read"
        }"#;
        let a = Rules::parse(hcl).unwrap();
        assert_eq!(a, Rules::parse(json).unwrap());
        let keys = &a.named[&Resource::Key];
        assert_eq!(keys.lookup("app/x"), Some(Access::Write));
        assert_eq!(keys.lookup("app/secret"), Some(Access::Deny), "exact wins");
        assert_eq!(keys.lookup("other"), Some(Access::Read), "empty prefix");
        assert_eq!(a.scalar[&Scalar::Operator], Access::Read);
        assert_eq!(Rules::parse("  ").unwrap(), Rules::default());
    }

    #[test]
    fn the_longest_prefix_wins() {
        let r = Rules::parse(
            r#"
            key_prefix "a/" { policy = "deny" }
            key_prefix "a/b/" { policy = "write" }
            key_prefix "a/b/c" { policy = "read" }
        "#,
        )
        .unwrap();
        let k = &r.named[&Resource::Key];
        assert_eq!(k.lookup("a/x"), Some(Access::Deny));
        assert_eq!(k.lookup("a/b/x"), Some(Access::Write));
        assert_eq!(k.lookup("a/b/cd"), Some(Access::Read));
        assert_eq!(k.lookup("b"), None);
        assert_eq!(k.lookup("a/b/é"), Some(Access::Write), "multi-byte names");
    }

    #[test]
    fn across_policies_deny_beats_write_beats_list_beats_read() {
        let mut r = Rules::parse(r#"key_prefix "x/" { policy = "read" }"#).unwrap();
        r.merge(&Rules::parse(r#"key_prefix "x/" { policy = "write" }"#).unwrap());
        assert_eq!(r.named[&Resource::Key].lookup("x/1"), Some(Access::Write));
        r.merge(&Rules::parse(r#"key_prefix "x/" { policy = "list" }"#).unwrap());
        assert_eq!(r.named[&Resource::Key].lookup("x/1"), Some(Access::Write));
        r.merge(&Rules::parse(r#"key_prefix "x/" { policy = "deny" }"#).unwrap());
        assert_eq!(r.named[&Resource::Key].lookup("x/1"), Some(Access::Deny));
        r.merge(&Rules::parse(r#"operator = "write""#).unwrap());
        r.merge(&Rules::parse(r#"operator = "read""#).unwrap());
        assert_eq!(r.scalar[&Scalar::Operator], Access::Write);
    }

    #[test]
    fn levels_grant_what_consul_grants() {
        use Access::*;
        let table = [
            (Write, [true, true, true]),
            (List, [true, true, false]),
            (Read, [true, false, false]),
            (Deny, [false, false, false]),
        ];
        for (rule, [read, list, write]) in table {
            assert_eq!(rule.allows(Read), read, "{rule:?} read");
            assert_eq!(rule.allows(List), list, "{rule:?} list");
            assert_eq!(rule.allows(Write), write, "{rule:?} write");
        }
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (text, says) in [
            (r#"key_prefix "a/" { policy = "admin" }"#, "policy must be"),
            (r#"kee "a" { policy = "read" }"#, "unknown rule \"kee\""),
            (
                r#"service "a" { policy = "list" }"#,
                "only a policy for keys",
            ),
            (r#"operator = "list""#, "only a policy for keys"),
            (r#"key "a" { polcy = "read" }"#, "unknown field \"polcy\""),
            (r#"key "a" { }"#, "missing policy"),
            (r#"key_prefix = "read""#, "needs a name"),
            ("{\"key\": ", "Failed to parse ACL rules"),
            ("key_prefix \"a\" {", "Failed to parse ACL rules"),
        ] {
            let e = Rules::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
