//! Tokens resolved by someone else and kept for `acl.token_ttl`, and what `acl.down_policy`
//! grants when that someone cannot be reached: client agents resolve tokens through their
//! DC's servers, and servers of a DC that does not replicate tokens through the primary DC.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::model::{ANONYMOUS_ACCESSOR, secret_digest};
use super::{AclError, Authorizer, Rules, Secret};

/// `acl.down_policy` (Consul's values): what a token that cannot be resolved now may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownPolicy {
    /// Keep using a cached resolution past its TTL; a token never resolved gets what
    /// `default_policy` grants.
    ExtendCache,
    /// As `extend-cache` (the refresh happens in the request, not in the background).
    AsyncCache,
    /// Deny everything.
    Deny,
    /// Allow everything but the ACL system itself.
    Allow,
}

/// A token's cache key: the digest of its secret (`None`: the anonymous token), so no
/// secret is kept in the clear.
type Key = Option<[u8; 32]>;

/// Most tokens kept; past it, expired entries are dropped (and all if none had expired).
const MAX_ENTRIES: usize = 4096;

/// Tokens resolved elsewhere, by the digest of their secret.
pub struct ResolvedTokens {
    ttl: Duration,
    down: DownPolicy,
    default_allow: bool,
    entries: Mutex<HashMap<Key, (Instant, Authorizer)>>,
    /// Resolutions by how they were answered (`cached`, `resolved`, `refused`,
    /// `down_policy`).
    counted: prometheus::IntCounterVec,
}

impl std::fmt::Debug for ResolvedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedTokens")
            .field("ttl", &self.ttl)
            .field("down", &self.down)
            .field("default_allow", &self.default_allow)
            .finish_non_exhaustive()
    }
}

impl ResolvedTokens {
    /// Resolutions kept for `ttl`; `down` when none can be made; `default_allow` is the
    /// agent's `default_policy`; each resolution counted in `counted` (label `how`).
    pub fn new(
        ttl: Duration,
        down: DownPolicy,
        default_allow: bool,
        counted: prometheus::IntCounterVec,
    ) -> ResolvedTokens {
        ResolvedTokens {
            ttl,
            down,
            default_allow,
            entries: Mutex::default(),
            counted,
        }
    }

    /// What `secret` may do: a resolution younger than the TTL, else `fetch`'s answer
    /// (`None`: whoever resolves tokens could not be reached, and the down policy decides).
    /// A token the resolver refuses (unknown, expired, deleted) is forgotten, so a cached
    /// copy never outlives its deletion once the resolver has said so.
    pub async fn resolve<F, Fut>(
        &self,
        secret: Option<&Secret>,
        now: Instant,
        fetch: F,
    ) -> Result<Authorizer, AclError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<Result<Authorizer, AclError>>>,
    {
        let key = secret.map(|s| secret_digest(&s.0));
        let cached = self.entries().get(&key).cloned();
        if let Some((at, authz)) = &cached
            && now.saturating_duration_since(*at) < self.ttl
        {
            self.count("cached");
            return Ok(authz.clone());
        }
        match fetch().await {
            Some(Ok(authz)) => {
                self.count("resolved");
                self.insert(key, authz.clone(), now);
                Ok(authz)
            }
            Some(Err(e)) => {
                self.count("refused");
                self.entries().remove(&key);
                Err(e)
            }
            None => {
                self.count("down_policy");
                Ok(self.when_down(cached.map(|(_, authz)| authz)))
            }
        }
    }

    /// What a token may do when it cannot be resolved, given its last resolution (Consul's
    /// down policies; `extend-cache` without one falls back to `default_policy`).
    fn when_down(&self, cached: Option<Authorizer>) -> Authorizer {
        let root = |allow| Authorizer::of_rules(ANONYMOUS_ACCESSOR, Rules::default(), allow);
        match (self.down, cached) {
            (DownPolicy::ExtendCache | DownPolicy::AsyncCache, Some(authz)) => authz,
            (DownPolicy::ExtendCache | DownPolicy::AsyncCache, None) => root(self.default_allow),
            (DownPolicy::Allow, _) => root(true),
            (DownPolicy::Deny, _) => root(false),
        }
    }

    fn insert(&self, key: Key, authz: Authorizer, now: Instant) {
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (now, authz));
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Instant, Authorizer)>> {
        self.entries.lock().expect("resolved tokens lock")
    }

    fn count(&self, how: &str) {
        self.counted.with_label_values(&[how]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Access, Permission, Resource};

    fn tokens(down: DownPolicy, default_allow: bool) -> ResolvedTokens {
        let counted =
            prometheus::IntCounterVec::new(prometheus::Opts::new("resolutions", "test"), &["how"])
                .unwrap();
        ResolvedTokens::new(Duration::from_secs(30), down, default_allow, counted)
    }

    fn kv_writer() -> Authorizer {
        let rules = Rules::parse(r#"key_prefix "app/" { policy = "write" }"#).unwrap();
        Authorizer::of_rules("a1", rules, false)
    }

    fn may_write(authz: &Authorizer, key: &str) -> bool {
        authz
            .check(&Permission::named(Resource::Key, key, Access::Write))
            .is_ok()
    }

    async fn resolve(
        t: &ResolvedTokens,
        now: Instant,
        answer: Option<Result<Authorizer, AclError>>,
    ) -> Result<Authorizer, AclError> {
        let secret = Secret("s".into());
        t.resolve(Some(&secret), now, || async { answer }).await
    }

    fn how(t: &ResolvedTokens, how: &str) -> u64 {
        t.counted.with_label_values(&[how]).get()
    }

    #[tokio::test]
    async fn a_resolution_is_reused_within_its_ttl_then_fetched_again() {
        let t = tokens(DownPolicy::ExtendCache, false);
        let t0 = Instant::now();
        assert!(may_write(
            &resolve(&t, t0, Some(Ok(kv_writer()))).await.unwrap(),
            "app/x"
        ));
        // Within the TTL the fetch is not made (its answer would refuse).
        let within = t0 + Duration::from_secs(29);
        let cached = resolve(&t, within, Some(Err(AclError::NotFound))).await;
        assert!(cached.is_ok());
        assert_eq!(how(&t, "cached"), 1);
        // Past it, the resolver's answer wins, and a refusal forgets the token.
        let past = t0 + Duration::from_secs(31);
        assert!(matches!(
            resolve(&t, past, Some(Err(AclError::NotFound))).await,
            Err(AclError::NotFound)
        ));
        let later = resolve(&t, past, None).await.unwrap();
        assert!(
            !may_write(&later, "app/x"),
            "the deleted token is not resurrected"
        );
    }

    #[tokio::test]
    async fn every_down_policy_answers_as_consul_does() {
        let t0 = Instant::now();
        let past = t0 + Duration::from_secs(60);
        // (policy, default_allow, cached before?, may write app/x, may write other/x)
        let cases = [
            (DownPolicy::ExtendCache, false, true, true, false),
            (DownPolicy::AsyncCache, false, true, true, false),
            (DownPolicy::ExtendCache, false, false, false, false),
            (DownPolicy::ExtendCache, true, false, true, true),
            (DownPolicy::Deny, true, true, false, false),
            (DownPolicy::Allow, false, false, true, true),
        ];
        for (down, default_allow, cached, app, other) in cases {
            let t = tokens(down, default_allow);
            if cached {
                resolve(&t, t0, Some(Ok(kv_writer()))).await.unwrap();
            }
            let authz = resolve(&t, past, None).await.unwrap();
            let case = format!("{down:?} default_allow={default_allow} cached={cached}");
            assert_eq!(may_write(&authz, "app/x"), app, "{case}");
            assert_eq!(may_write(&authz, "other/x"), other, "{case}");
            assert_eq!(how(&t, "down_policy"), 1, "{case}");
        }
    }
}
