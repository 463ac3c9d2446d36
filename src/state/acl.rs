//! ACL tables: policies, roles and tokens (found by AccessorID, and by SecretID through an
//! index rebuilt from the tokens), the one-time bootstrap, and the rules every ACL write
//! must pass (Consul's): names valid and unique, links to policies and roles resolved to
//! both ID and name, a token's secret and locality fixed once made, built-ins protected.

use std::sync::Arc;

use imbl::OrdMap;

use crate::acl::model::{
    self, ANONYMOUS_ACCESSOR, GLOBAL_MANAGEMENT_ID, Link, Policy, Role, Token,
};
use crate::acl::{AclError, Authorizer, Rules};

use super::{CommandResult, State, Table};

/// Consul's rule for policy and role names: letters, digits, `-` and `_`.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl State {
    /// A policy by ID (the built-in management policy is always there).
    pub fn acl_policy(&self, id: &str) -> Option<Policy> {
        match self.data.acl_policies.get(id) {
            Some(p) => Some(p.clone()),
            None if id == GLOBAL_MANAGEMENT_ID => Some(model::global_management()),
            None => None,
        }
    }

    /// A policy by name.
    pub fn acl_policy_named(&self, name: &str) -> Option<Policy> {
        self.acl_policies().into_iter().find(|p| p.name == name)
    }

    /// Every policy, the built-in one included, by ID.
    pub fn acl_policies(&self) -> Vec<Policy> {
        let mut all: Vec<Policy> = self.data.acl_policies.values().cloned().collect();
        if !self.data.acl_policies.contains_key(GLOBAL_MANAGEMENT_ID) {
            all.push(model::global_management());
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        all
    }

    /// A role by ID.
    pub fn acl_role(&self, id: &str) -> Option<&Role> {
        self.data.acl_roles.get(id)
    }

    /// A role by name.
    pub fn acl_role_named(&self, name: &str) -> Option<&Role> {
        self.data.acl_roles.values().find(|r| r.name == name)
    }

    /// Every role, by ID.
    pub fn acl_roles(&self) -> impl Iterator<Item = &Role> {
        self.data.acl_roles.values()
    }

    /// A token by AccessorID (the anonymous token is always there).
    pub fn acl_token(&self, accessor: &str) -> Option<Token> {
        match self.data.acl_tokens.get(accessor) {
            Some(t) => Some(t.clone()),
            None if accessor == ANONYMOUS_ACCESSOR => Some(model::anonymous()),
            None => None,
        }
    }

    /// A token by SecretID. Looked up by the secret's SHA-256 (so the lookup's timing
    /// says nothing about the secrets stored) and confirmed in constant time.
    pub fn acl_token_by_secret(&self, secret: &str) -> Option<Token> {
        let token = match self.acl_secrets.get(&model::secret_digest(secret)) {
            Some(accessor) => self.acl_token(accessor),
            None if model::secrets_equal(secret, model::ANONYMOUS_SECRET) => {
                self.acl_token(ANONYMOUS_ACCESSOR)
            }
            None => None,
        }?;
        model::secrets_equal(&token.secret_id, secret).then_some(token)
    }

    /// What the holder of `secret` (`None`: the anonymous token) may do at `now_ms()` (Unix
    /// milliseconds, read only for a token that expires: a clock read costs as much as the
    /// rest of a cached lookup), with
    /// `default_allow` where no rule applies; an unknown or expired secret is `ACL not
    /// found`.
    ///
    /// Resolved tokens are kept until the next change of the ACL tables (so that a read
    /// costs a hash and a map lookup, not a merge of rules), and each thread remembers the
    /// last one it resolved (so that a stream of requests with one token costs a
    /// constant-time comparison of secrets); an expiring one is checked against the clock
    /// on every use.
    pub fn acl_authorizer(
        &self,
        secret: Option<&str>,
        default_allow: bool,
        now_ms: impl Fn() -> u64,
    ) -> Result<Arc<Authorizer>, AclError> {
        if let Some(authz) = self.acl_resolved.last(secret, default_allow, &now_ms) {
            return Ok(authz);
        }
        let key = (secret.map(model::secret_digest), default_allow);
        let found = self
            .acl_resolved
            .map
            .read()
            .expect("acl cache")
            .get(&key)
            .cloned();
        if let Some((expires, authz)) = found.filter(|(e, _)| e.is_none_or(|t| t > now_ms())) {
            self.acl_resolved
                .remember(secret, default_allow, expires, &authz);
            return Ok(authz);
        }
        let token = match secret {
            None => self.acl_token(ANONYMOUS_ACCESSOR),
            Some(s) => self.acl_token_by_secret(s),
        }
        .filter(|t| t.expiration_ms.is_none_or(|e| e > now_ms()))
        .ok_or(AclError::NotFound)?;
        let authz = Arc::new(match self.acl_rules_of(&token) {
            None => Authorizer::management(token.accessor_id),
            Some(rules) => Authorizer::of_rules(token.accessor_id, rules, default_allow),
        });
        let mut cache = self.acl_resolved.map.write().expect("acl cache");
        if cache.len() >= RESOLVED_MAX {
            cache.clear();
        }
        cache.insert(key, (token.expiration_ms, authz.clone()));
        drop(cache);
        self.acl_resolved
            .remember(secret, default_allow, token.expiration_ms, &authz);
        Ok(authz)
    }

    /// Every token, the anonymous one included, by AccessorID.
    pub fn acl_tokens(&self) -> Vec<Token> {
        let mut all: Vec<Token> = self.data.acl_tokens.values().cloned().collect();
        if !self.data.acl_tokens.contains_key(ANONYMOUS_ACCESSOR) {
            all.push(model::anonymous());
            all.sort_by(|a, b| a.accessor_id.cmp(&b.accessor_id));
        }
        all
    }

    /// The rules a token grants: its policies' and its roles' policies', merged (links to
    /// deleted policies or roles are skipped, as Consul does); `None` for a management
    /// token.
    pub fn acl_rules_of(&self, token: &Token) -> Option<Rules> {
        let mut ids: Vec<&str> = token.policies.iter().map(|l| l.id.as_str()).collect();
        for role in &token.roles {
            if let Some(r) = self.data.acl_roles.get(&role.id) {
                ids.extend(r.policies.iter().map(|l| l.id.as_str()));
            }
        }
        if ids.contains(&GLOBAL_MANAGEMENT_ID) {
            return None;
        }
        let mut rules = Rules::default();
        for id in ids {
            if let Some(r) = self.acl_compiled.get(id) {
                rules.merge(r);
            }
        }
        Some(rules)
    }

    /// The global part of the ACL tables (what other DCs replicate).
    pub fn acl_global(&self) -> crate::state::query::AclSet {
        crate::state::query::AclSet {
            policies: self.data.acl_policies.values().cloned().collect(),
            roles: self.data.acl_roles.values().cloned().collect(),
            tokens: self
                .data
                .acl_tokens
                .values()
                .filter(|t| !t.local)
                .cloned()
                .collect(),
        }
    }

    /// The writes that make this DC's global ACL objects those of `primary` (deletions
    /// first, then policies before the roles and tokens that link to them); `Local` tokens
    /// are left alone. Empty when they already match.
    pub fn acl_replication_plan(
        &self,
        primary: &crate::state::query::AclSet,
    ) -> Vec<super::Command> {
        use super::Command;
        use std::collections::BTreeMap;
        let same_policy = |a: &Policy, b: &Policy| {
            (&a.name, &a.description, &a.rules, &a.datacenters)
                == (&b.name, &b.description, &b.rules, &b.datacenters)
        };
        let same_role = |a: &Role, b: &Role| {
            (&a.name, &a.description, &a.policies) == (&b.name, &b.description, &b.policies)
        };
        let same_token = |a: &Token, b: &Token| {
            (
                &a.secret_id,
                &a.description,
                &a.policies,
                &a.roles,
                a.expiration_ms,
                a.create_ms,
            ) == (
                &b.secret_id,
                &b.description,
                &b.policies,
                &b.roles,
                b.expiration_ms,
                b.create_ms,
            )
        };
        let policies: BTreeMap<&str, &Policy> = primary
            .policies
            .iter()
            .map(|p| (p.id.as_str(), p))
            .collect();
        let roles: BTreeMap<&str, &Role> =
            primary.roles.iter().map(|r| (r.id.as_str(), r)).collect();
        let tokens: BTreeMap<&str, &Token> = primary
            .tokens
            .iter()
            .map(|t| (t.accessor_id.as_str(), t))
            .collect();
        let mut plan = Vec::new();
        for (accessor, t) in self.data.acl_tokens.iter() {
            if !t.local && !tokens.contains_key(accessor.as_str()) {
                plan.push(Command::AclTokenDelete {
                    accessor: accessor.clone(),
                });
            }
        }
        for id in self.data.acl_roles.keys() {
            if !roles.contains_key(id.as_str()) {
                plan.push(Command::AclRoleDelete { id: id.clone() });
            }
        }
        for id in self.data.acl_policies.keys() {
            if !policies.contains_key(id.as_str()) {
                plan.push(Command::AclPolicyDelete { id: id.clone() });
            }
        }
        for (id, p) in &policies {
            if self
                .data
                .acl_policies
                .get(*id)
                .is_none_or(|l| !same_policy(l, p))
            {
                plan.push(Command::AclPolicySet(Box::new((*p).clone())));
            }
        }
        for (id, r) in &roles {
            if self
                .data
                .acl_roles
                .get(*id)
                .is_none_or(|l| !same_role(l, r))
            {
                plan.push(Command::AclRoleSet(Box::new((*r).clone())));
            }
        }
        for (accessor, t) in &tokens {
            if self
                .data
                .acl_tokens
                .get(*accessor)
                .is_none_or(|l| !same_token(l, t))
            {
                plan.push(Command::AclTokenSet(Box::new((*t).clone())));
            }
        }
        if !primary.tokens.is_empty() && self.data.acl_bootstrap.is_none() {
            // The primary's bootstrap covers the federation: none here afterwards.
            plan.push(Command::AclReplicated);
        }
        plan
    }

    /// Whether the ACL system was bootstrapped, and at which index.
    pub fn acl_bootstrapped(&self) -> Option<u64> {
        self.data.acl_bootstrap
    }

    /// The one-time bootstrap: `token` becomes a management token.
    pub(super) fn acl_bootstrap(&mut self, index: u64, mut token: Token) -> CommandResult {
        if let Some(at) = self.data.acl_bootstrap {
            return CommandResult::Rejected(format!(
                "ACL bootstrap no longer allowed (reset index: {at})"
            ));
        }
        self.data.acl_bootstrap = Some(index);
        token.policies = vec![model::management_link()];
        token.roles.clear();
        token.local = false;
        self.acl_token_set(index, token)
    }

    pub(super) fn acl_policy_set(&mut self, index: u64, mut policy: Policy) -> CommandResult {
        if !valid_name(&policy.name, 128) {
            return CommandResult::Rejected(format!(
                "Invalid Policy: invalid Name {:?}",
                policy.name
            ));
        }
        if let Err(e) = Rules::parse(&policy.rules) {
            return CommandResult::Rejected(format!("Invalid Policy: {e}"));
        }
        if self
            .acl_policies()
            .iter()
            .any(|p| p.name == policy.name && p.id != policy.id)
        {
            return CommandResult::Rejected(format!(
                "Invalid Policy: A Policy with Name {:?} already exists",
                policy.name
            ));
        }
        if policy.id == GLOBAL_MANAGEMENT_ID {
            let builtin = model::global_management();
            if policy.rules != builtin.rules || policy.name != builtin.name {
                return CommandResult::Rejected(
                    "Changing the Rules or Name of the builtin global-management policy is not permitted"
                        .into(),
                );
            }
        }
        let create = self
            .data
            .acl_policies
            .get(&policy.id)
            .map_or(index, |p| p.create_index);
        policy.create_index = create;
        policy.modify_index = index;
        // Links carry names: a renamed policy is renamed in every link to it.
        let (id, name) = (&policy.id, &policy.name);
        relink(
            &mut self.data.acl_tokens,
            |t| &t.policies,
            |t| &mut t.policies,
            id,
            name,
        );
        relink(
            &mut self.data.acl_roles,
            |r| &r.policies,
            |r| &mut r.policies,
            id,
            name,
        );
        if let Ok(rules) = Rules::parse(&policy.rules) {
            self.acl_compiled.insert(policy.id.clone(), rules);
        }
        self.data.acl_policies.insert(policy.id.clone(), policy);
        self.touch(Table::Acl, index);
        CommandResult::Ok
    }

    /// Replicated from the primary: this DC is never bootstrapped on its own.
    pub(super) fn acl_replicated(&mut self, index: u64) -> CommandResult {
        if self.data.acl_bootstrap.is_none() {
            self.data.acl_bootstrap = Some(index);
            self.touch(Table::Acl, index);
        }
        CommandResult::Ok
    }

    pub(super) fn acl_policy_delete(&mut self, index: u64, id: &str) -> CommandResult {
        if id == GLOBAL_MANAGEMENT_ID {
            return CommandResult::Rejected(
                "Deletion of the builtin global-management policy is not permitted".into(),
            );
        }
        if self.data.acl_policies.remove(id).is_some() {
            self.acl_compiled.remove(id);
            self.touch(Table::Acl, index);
        }
        CommandResult::Ok
    }

    pub(super) fn acl_role_set(&mut self, index: u64, mut role: Role) -> CommandResult {
        if !valid_name(&role.name, 256) {
            return CommandResult::Rejected(format!("Invalid Role: invalid Name {:?}", role.name));
        }
        if self
            .data
            .acl_roles
            .values()
            .any(|r| r.name == role.name && r.id != role.id)
        {
            return CommandResult::Rejected(format!(
                "Invalid Role: A Role with Name {:?} already exists",
                role.name
            ));
        }
        if let Err(e) = self.resolve_policy_links(&mut role.policies) {
            return CommandResult::Rejected(e);
        }
        role.create_index = self
            .data
            .acl_roles
            .get(&role.id)
            .map_or(index, |r| r.create_index);
        role.modify_index = index;
        let (id, name) = (&role.id, &role.name);
        relink(
            &mut self.data.acl_tokens,
            |t| &t.roles,
            |t| &mut t.roles,
            id,
            name,
        );
        self.data.acl_roles.insert(role.id.clone(), role);
        self.touch(Table::Acl, index);
        CommandResult::Ok
    }

    pub(super) fn acl_role_delete(&mut self, index: u64, id: &str) -> CommandResult {
        if self.data.acl_roles.remove(id).is_some() {
            self.touch(Table::Acl, index);
        }
        CommandResult::Ok
    }

    pub(super) fn acl_token_set(&mut self, index: u64, mut token: Token) -> CommandResult {
        if token.accessor_id.is_empty() || token.secret_id.is_empty() {
            return CommandResult::Rejected("A token needs an AccessorID and a SecretID".into());
        }
        if let Some(owner) = self
            .acl_secrets
            .get(&model::secret_digest(&token.secret_id))
            && *owner != token.accessor_id
        {
            return CommandResult::Rejected("Invalid Token: SecretID is already in use".into());
        }
        let old = self.acl_token(&token.accessor_id);
        if let Some(old) = &old {
            if old.secret_id != token.secret_id {
                return CommandResult::Rejected(
                    "Changing a token's SecretID is not permitted".into(),
                );
            }
            if old.local != token.local {
                return CommandResult::Rejected(
                    "Cannot toggle local mode of a token; create a new token instead".into(),
                );
            }
            token.create_ms = old.create_ms;
        }
        if let Err(e) = self.resolve_policy_links(&mut token.policies) {
            return CommandResult::Rejected(e);
        }
        for link in &mut token.roles {
            let role = match (link.id.is_empty(), link.name.is_empty()) {
                (false, _) => self.data.acl_roles.get(&link.id),
                (true, false) => self.acl_role_named(&link.name),
                (true, true) => None,
            };
            match role {
                Some(r) => {
                    link.id = r.id.clone();
                    link.name = r.name.clone();
                }
                None => {
                    return CommandResult::Rejected(format!(
                        "cannot find role {:?}",
                        if link.id.is_empty() {
                            &link.name
                        } else {
                            &link.id
                        }
                    ));
                }
            }
        }
        token.create_index = old.as_ref().map_or(index, |t| t.create_index);
        token.modify_index = index;
        self.acl_secrets.insert(
            model::secret_digest(&token.secret_id),
            token.accessor_id.clone(),
        );
        self.data
            .acl_tokens
            .insert(token.accessor_id.clone(), token);
        self.touch(Table::Acl, index);
        CommandResult::Ok
    }

    pub(super) fn acl_token_delete(&mut self, index: u64, accessor: &str) -> CommandResult {
        if accessor == ANONYMOUS_ACCESSOR {
            return CommandResult::Rejected(
                "Delete operation not permitted on the anonymous token".into(),
            );
        }
        if let Some(t) = self.data.acl_tokens.remove(accessor) {
            self.acl_secrets.remove(&model::secret_digest(&t.secret_id));
            self.touch(Table::Acl, index);
        }
        CommandResult::Ok
    }

    /// Fills in both the ID and the name of each link to a policy (given either); an
    /// unknown policy is an error, a repeated one is dropped.
    fn resolve_policy_links(&self, links: &mut Vec<Link>) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for link in links.drain(..) {
            let policy = if !link.id.is_empty() {
                self.acl_policy(&link.id)
            } else {
                self.acl_policy_named(&link.name)
            };
            let Some(p) = policy else {
                return Err(format!(
                    "cannot find policy {:?}",
                    if link.id.is_empty() {
                        &link.name
                    } else {
                        &link.id
                    }
                ));
            };
            if seen.insert(p.id.clone()) {
                out.push(Link {
                    id: p.id,
                    name: p.name,
                });
            }
        }
        *links = out;
        Ok(())
    }
}

/// Most resolved tokens a server keeps between two changes of the ACL tables.
const RESOLVED_MAX: usize = 4096;

/// Tokens a state resolved since its ACL tables last changed: by (SHA-256 of the secret,
/// `None` for the anonymous token; the default policy), when the token expires and what
/// it may do; and, per thread, the last one resolved.
///
/// The per-thread memo skips the hash, the lock and the map of a lookup: a client sends one
/// token on every request of its connection. It is keyed by this state's identity and
/// the version of its ACL tables, so a change of any ACL object, or a request to another
/// state of the same process (in-process clusters in tests), never reuses it; secrets are
/// compared in constant time, and a hit is no faster for a guess that shares a prefix
/// with the remembered secret.
#[derive(Debug)]
pub(super) struct ResolvedTokens {
    /// Which state (unique in the process) and which version of its ACL tables.
    epoch: (u64, u64),
    /// The resolved tokens.
    map: std::sync::RwLock<std::collections::HashMap<ResolvedKey, Resolved>>,
}

/// A resolved token's key: the SHA-256 of its secret (`None`: anonymous), the default
/// policy.
type ResolvedKey = (Option<[u8; 32]>, bool);

/// A resolved token: when it expires, what it may do.
type Resolved = (Option<u64>, Arc<Authorizer>);

/// The last token a thread resolved.
struct LastResolved {
    epoch: (u64, u64),
    secret: Option<String>,
    default_allow: bool,
    expires: Option<u64>,
    authz: Arc<Authorizer>,
}

thread_local! {
    static LAST_RESOLVED: std::cell::RefCell<Option<LastResolved>> =
        const { std::cell::RefCell::new(None) };
}

impl Default for ResolvedTokens {
    fn default() -> Self {
        static STATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        ResolvedTokens {
            epoch: (STATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed), 0),
            map: Default::default(),
        }
    }
}

impl ResolvedTokens {
    /// Forgets every resolved token (the ACL tables changed).
    pub(super) fn clear(&mut self) {
        self.epoch.1 += 1;
        self.map.get_mut().expect("acl cache").clear();
    }

    /// This thread's last resolved token, if it is `secret`'s, of this version of the ACL
    /// tables, and not expired at `now_ms()`.
    fn last(
        &self,
        secret: Option<&str>,
        default_allow: bool,
        now_ms: &impl Fn() -> u64,
    ) -> Option<Arc<Authorizer>> {
        LAST_RESOLVED.with_borrow(|last| {
            let last = last.as_ref()?;
            let same = last.epoch == self.epoch
                && last.default_allow == default_allow
                && last.expires.is_none_or(|t| t > now_ms())
                && match (&last.secret, secret) {
                    (None, None) => true,
                    (Some(a), Some(b)) => model::secrets_equal(a, b),
                    _ => false,
                };
            same.then(|| last.authz.clone())
        })
    }

    /// Makes `authz` this thread's last resolved token.
    fn remember(
        &self,
        secret: Option<&str>,
        default_allow: bool,
        expires: Option<u64>,
        authz: &Arc<Authorizer>,
    ) {
        LAST_RESOLVED.with_borrow_mut(|last| {
            *last = Some(LastResolved {
                epoch: self.epoch,
                secret: secret.map(str::to_string),
                default_allow,
                expires,
                authz: authz.clone(),
            });
        });
    }
}

/// Every stored policy's rules, parsed (policies are checked when written, so all parse).
pub(super) fn compile_policies(
    policies: &OrdMap<String, Policy>,
) -> std::collections::BTreeMap<String, Rules> {
    policies
        .iter()
        .filter_map(|(id, p)| Rules::parse(&p.rules).ok().map(|r| (id.clone(), r)))
        .collect()
}

/// Renames the links to `id` held by the entries of `map` (only the entries that hold a
/// stale name are copied).
fn relink<V: Clone>(
    map: &mut OrdMap<String, V>,
    links: impl Fn(&V) -> &Vec<Link>,
    links_mut: impl Fn(&mut V) -> &mut Vec<Link>,
    id: &str,
    name: &str,
) {
    let stale: Vec<String> = map
        .iter()
        .filter(|(_, v)| links(v).iter().any(|l| l.id == id && l.name != name))
        .map(|(k, _)| k.clone())
        .collect();
    for k in stale {
        if let Some(v) = map.get_mut(&k) {
            for l in links_mut(v).iter_mut().filter(|l| l.id == id) {
                l.name = name.to_string();
            }
        }
    }
}
