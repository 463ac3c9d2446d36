//! Tokens, policies and roles as the DC's state stores them (policies and roles with
//! Consul's JSON field names; a token's times are Unix milliseconds here, RFC 3339 in the
//! API), and the built-in ones every DC has.

use serde::{Deserialize, Serialize};

/// The ID of the built-in policy that grants everything.
pub const GLOBAL_MANAGEMENT_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Its name.
pub const GLOBAL_MANAGEMENT_NAME: &str = "global-management";
/// The AccessorID of the anonymous token (requests without a token).
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
/// The anonymous token's SecretID.
pub const ANONYMOUS_SECRET: &str = "anonymous";

/// The rules of `global-management`, as Consul shows them.
pub const GLOBAL_MANAGEMENT_RULES: &str = r#"
acl = "write"
agent_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "write"
}
keyring = "write"
node_prefix "" {
  policy = "write"
}
operator = "write"
query_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" {
  policy = "write"
}"#;

/// A reference from a token or role to a policy (or from a token to a role), by ID or
/// name; stored with both filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The ID.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The name.
    #[serde(rename = "Name", default)]
    pub name: String,
}

/// A named set of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Its ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Its unique name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// The rules as written (HCL or JSON), parsed when a token is resolved.
    #[serde(rename = "Rules", default)]
    pub rules: String,
    /// The DCs it applies in (empty: all).
    #[serde(rename = "Datacenters", default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    /// The Raft index that created it.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// The Raft index that last changed it.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// A named set of policies that tokens can carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Its unique name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Its policies.
    #[serde(rename = "Policies", default)]
    pub policies: Vec<Link>,
    /// The Raft index that created it.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// The Raft index that last changed it.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// A token: a secret presented with requests, granting its policies' and roles' rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The public ID, safe to log and show.
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    /// The secret presented in requests.
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Its policies.
    #[serde(rename = "Policies", default)]
    pub policies: Vec<Link>,
    /// Its roles.
    #[serde(rename = "Roles", default)]
    pub roles: Vec<Link>,
    /// Whether it stays in the DC it was made in (not replicated).
    #[serde(rename = "Local", default)]
    pub local: bool,
    /// When it stops working (Unix milliseconds), if it expires (the API shows it as
    /// `ExpirationTime`, RFC 3339).
    #[serde(
        rename = "ExpirationMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_ms: Option<u64>,
    /// When it was made (Unix milliseconds; the API's `CreateTime`).
    #[serde(rename = "CreateMs", default)]
    pub create_ms: u64,
    /// The Raft index that created it.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// The Raft index that last changed it.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl Token {
    /// Whether it has expired at `now_ms` (Unix milliseconds).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiration_ms.is_some_and(|t| t <= now_ms)
    }

    /// Whether it carries the built-in management policy.
    pub fn is_management(&self) -> bool {
        self.policies.iter().any(|p| p.id == GLOBAL_MANAGEMENT_ID)
    }
}

/// The built-in management policy.
pub fn global_management() -> Policy {
    Policy {
        id: GLOBAL_MANAGEMENT_ID.into(),
        name: GLOBAL_MANAGEMENT_NAME.into(),
        description: "Builtin Policy that grants unlimited access".into(),
        rules: GLOBAL_MANAGEMENT_RULES.into(),
        ..Policy::default()
    }
}

/// A link to the built-in management policy: what makes a token a management token.
pub fn management_link() -> Link {
    Link {
        id: GLOBAL_MANAGEMENT_ID.into(),
        name: GLOBAL_MANAGEMENT_NAME.into(),
    }
}

/// The built-in anonymous token (no policies until an operator gives it some).
pub fn anonymous() -> Token {
    Token {
        accessor_id: ANONYMOUS_ACCESSOR.into(),
        secret_id: ANONYMOUS_SECRET.into(),
        description: "Anonymous Token".into(),
        ..Token::default()
    }
}

/// The wall clock in Unix milliseconds (token creation and expiry).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The key a secret is found by (its SHA-256): a lookup by it says nothing, by its
/// timing, about the secrets stored.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Access, Resource, Rules, Scalar};

    #[test]
    fn the_management_policy_parses_and_grants_everything() {
        let r = Rules::parse(GLOBAL_MANAGEMENT_RULES).unwrap();
        for kind in Resource::ALL {
            assert_eq!(
                r.named[&kind].lookup("anything"),
                Some(Access::Write),
                "{kind:?}"
            );
        }
        for s in [Scalar::Acl, Scalar::Keyring, Scalar::Operator] {
            assert_eq!(r.scalar[&s], Access::Write);
        }
    }

    #[test]
    fn tokens_expire_and_secrets_compare_whole() {
        let t = Token {
            expiration_ms: Some(1_000),
            ..anonymous()
        };
        assert!(!t.expired(999) && t.expired(1_000));
        assert!(!anonymous().expired(u64::MAX));
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd") && !secrets_equal("abc", "ab"));
    }
}
