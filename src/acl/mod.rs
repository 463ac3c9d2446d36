//! Access control, Consul's token/policy system (1.4+): the rule language ([`rules`]), the
//! tokens, policies and roles as stored ([`model`]), and the [`Authorizer`] a resolved token
//! becomes, which answers "may this token do that to this resource", and the cache of
//! tokens resolved elsewhere with its down policy ([`cache`]). Resolving a secret to its
//! policies (state, replication) and enforcing at the endpoints live with the callers.

pub mod cache;
pub mod model;
pub mod rules;

use std::fmt;

pub use cache::{DownPolicy, ResolvedTokens};
pub use rules::{Access, Resource, Rules, Scalar};

/// How a server's ACL replication stands (Consul's `/v1/acl/replication`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicationStatus {
    /// Whether this DC replicates (ACLs on, not the primary).
    pub enabled: bool,
    /// Whether this server replicates now (it leads its DC).
    pub running: bool,
    /// The primary DC.
    pub source_datacenter: String,
    /// `tokens` (with `enable_token_replication`) or `policies`.
    pub replication_type: String,
    /// The primary's ACL index last replicated.
    pub replicated_index: u64,
    /// The same, for tokens (0 when tokens are not replicated).
    pub replicated_token_index: u64,
    /// When replication last succeeded (RFC 3339; empty: never).
    pub last_success: String,
    /// When it last failed (RFC 3339; empty: never).
    pub last_error: String,
    /// Why it last failed.
    pub last_error_message: String,
}

/// A token's secret as it travels with a request: never shown in logs or debug output.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// What a request needs: an access level on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The resource.
    pub target: Target,
    /// The level needed.
    pub needed: Access,
}

/// A resource a permission is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A named resource (`key "app/x"`).
    Named(Resource, String),
    /// A single-rule resource (`operator`).
    Scalar(Scalar),
}

impl Permission {
    /// `needed` on the named resource `name` of `kind`.
    pub fn named(kind: Resource, name: impl Into<String>, needed: Access) -> Permission {
        Permission {
            target: Target::Named(kind, name.into()),
            needed,
        }
    }

    /// `needed` on a single-rule resource.
    pub fn scalar(s: Scalar, needed: Access) -> Permission {
        Permission {
            target: Target::Scalar(s),
            needed,
        }
    }
}

impl fmt::Display for Permission {
    /// Consul's wording: `permission 'key:write' on "app/x"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Named(kind, name) => write!(
                f,
                "permission '{}:{}' on {name:?}",
                kind.as_str(),
                self.needed.as_str()
            ),
            Target::Scalar(s) => {
                write!(f, "permission '{}:{}'", s.as_str(), self.needed.as_str())
            }
        }
    }
}

/// Why an ACL check failed. Both are 403 in Consul's API; neither is fixed by retrying.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum AclError {
    /// The token does not grant what the request needs.
    #[error("Permission denied: token with AccessorID '{accessor}' lacks {permission}")]
    PermissionDenied {
        /// The token's public id (never its secret).
        accessor: String,
        /// What was missing, in Consul's words.
        permission: String,
    },
    /// The secret presented belongs to no token (or an expired one).
    #[error("ACL not found")]
    NotFound,
    /// ACLs are disabled on this agent (the ACL endpoints answer this).
    #[error("ACL support disabled")]
    Disabled,
}

/// What a token may do, resolved from its policies (or one of the built-in kinds). Sent
/// from a server to an agent that asked (the agent checks its own endpoints with it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Authorizer {
    /// The token's AccessorID, named in denials.
    accessor: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Kind {
    /// `global-management`: everything, the ACL system included.
    Management,
    /// The token's merged rules; where none applies, `default_allow` decides (never for
    /// the ACL system itself, which only an `acl` rule or management grants).
    Rules { rules: Rules, default_allow: bool },
}

impl Authorizer {
    /// A management token's authorizer.
    pub fn management(accessor: impl Into<String>) -> Authorizer {
        Authorizer {
            accessor: accessor.into(),
            kind: Kind::Management,
        }
    }

    /// An authorizer of `rules` (a token's policies merged), falling back to the agent's
    /// `default_policy` where no rule applies.
    pub fn of_rules(accessor: impl Into<String>, rules: Rules, default_allow: bool) -> Authorizer {
        Authorizer {
            accessor: accessor.into(),
            kind: Kind::Rules {
                rules,
                default_allow,
            },
        }
    }

    /// The token's AccessorID.
    pub fn accessor(&self) -> &str {
        &self.accessor
    }

    /// Whether the token may do `p`.
    pub fn allows(&self, p: &Permission) -> bool {
        match &p.target {
            Target::Named(kind, name) => self.allows_named(*kind, name, p.needed),
            Target::Scalar(s) => match &self.kind {
                Kind::Management => true,
                Kind::Rules {
                    rules,
                    default_allow,
                } => match rules.scalar.get(s) {
                    Some(rule) => rule.allows(p.needed),
                    None => *default_allow && *s != Scalar::Acl,
                },
            },
        }
    }

    /// Whether the token may do `needed` to `name` of `kind` ([`Authorizer::allows`]
    /// without building a [`Permission`]: what filtering a list asks per entry).
    pub fn allows_named(&self, kind: Resource, name: &str, needed: Access) -> bool {
        match &self.kind {
            Kind::Management => true,
            Kind::Rules {
                rules,
                default_allow,
            } => match rules.named.get(&kind).and_then(|s| s.lookup(name)) {
                Some(rule) => rule.allows(needed),
                None => *default_allow,
            },
        }
    }

    /// Whether the token may write every name of `kind` under `prefix` (a recursive
    /// delete): write on the prefix itself, and no rule for a longer name under it that
    /// grants less (Consul's `KeyWritePrefix`).
    pub fn allows_write_under(&self, kind: Resource, prefix: &str) -> bool {
        self.allows_under(kind, prefix, Access::Write)
    }

    /// Whether the token may read every `kind` resource whose name starts with `prefix`
    /// (a transaction's `get-tree`).
    pub fn allows_read_under(&self, kind: Resource, prefix: &str) -> bool {
        self.allows_under(kind, prefix, Access::Read)
    }

    fn allows_under(&self, kind: Resource, prefix: &str, access: Access) -> bool {
        if !self.allows(&Permission::named(kind, prefix, access)) {
            return false;
        }
        let Kind::Rules { rules, .. } = &self.kind else {
            return true;
        };
        let Some(segments) = rules.named.get(&kind) else {
            return true;
        };
        segments
            .exact
            .iter()
            .chain(&segments.prefix)
            .filter(|(name, _)| name.starts_with(prefix))
            .all(|(_, a)| a.allows(access))
    }

    /// `Ok` when the token may do `p`, else the 403 saying what it lacks.
    pub fn check(&self, p: &Permission) -> Result<(), AclError> {
        if self.allows(p) {
            Ok(())
        } else {
            Err(AclError::PermissionDenied {
                accessor: self.accessor.clone(),
                permission: p.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rules: &str, default_allow: bool) -> Authorizer {
        Authorizer::of_rules("acc-1", Rules::parse(rules).unwrap(), default_allow)
    }

    #[test]
    fn rules_decide_and_the_default_policy_fills_the_gaps() {
        let t = token(
            r#"
            key_prefix "app/" { policy = "write" }
            service_prefix "" { policy = "read" }
        "#,
            false,
        );
        let key = |k: &str, a| Permission::named(Resource::Key, k, a);
        assert!(t.allows(&key("app/x", Access::Write)));
        assert!(!t.allows(&key("other/x", Access::Write)));
        assert!(!t.allows(&key("other/x", Access::Read)), "deny by default");
        assert!(t.allows(&Permission::named(Resource::Service, "web", Access::Read)));
        assert!(!t.allows(&Permission::named(Resource::Service, "web", Access::Write)));
        let open = token(r#"key_prefix "secret/" { policy = "deny" }"#, true);
        assert!(
            open.allows(&key("app/x", Access::Write)),
            "allow by default"
        );
        assert!(!open.allows(&key("secret/x", Access::Read)));
        assert!(
            !open.allows(&Permission::scalar(Scalar::Acl, Access::Read)),
            "the ACL system is never granted by default"
        );
        assert!(open.allows(&Permission::scalar(Scalar::Operator, Access::Write)));
        let admin = Authorizer::management("root");
        assert!(admin.allows(&Permission::scalar(Scalar::Acl, Access::Write)));
        assert!(admin.allows(&key("anything", Access::Write)));
    }

    #[test]
    fn a_recursive_write_needs_write_on_everything_under_the_prefix() {
        let t = token(
            r#"
            key_prefix "app/" { policy = "write" }
            key "app/locked" { policy = "read" }
        "#,
            false,
        );
        assert!(
            !t.allows_write_under(Resource::Key, "app/"),
            "app/locked is read-only"
        );
        assert!(t.allows_write_under(Resource::Key, "app/x/"));
        assert!(!t.allows_write_under(Resource::Key, "other/"));
        assert!(Authorizer::management("m").allows_write_under(Resource::Key, ""));
    }

    #[test]
    fn a_denial_names_the_token_and_the_permission_in_consuls_words() {
        let t = token(r#"key_prefix "app/" { policy = "read" }"#, false);
        let e = t
            .check(&Permission::named(Resource::Key, "app/x", Access::Write))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'key:write' on \"app/x\""
        );
        let e = t
            .check(&Permission::scalar(Scalar::Operator, Access::Read))
            .unwrap_err();
        assert!(e.to_string().ends_with("lacks permission 'operator:read'"));
        assert_eq!(AclError::NotFound.to_string(), "ACL not found");
    }
}
