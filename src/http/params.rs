//! Consul's query-parameter conventions, parsed once for every endpoint: bare and valued
//! boolean flags, Go-syntax durations, consistency modes, blocking-query parameters.

use std::time::Duration;

use crate::acl::Secret;
use crate::duration::parse_go_duration;
use crate::rpc::ReadOptions;
use crate::vocab::{MAX_WAIT, ReadMode};

use super::error::HttpError;

/// Default blocking wait (Consul: 5 minutes).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The query string of one request, in order (bare flags map to ""; a name may repeat),
/// the ACL token it carries, and its `Cache-Control` directives (for `?cached`).
pub struct Params(
    pub Vec<(String, String)>,
    pub Option<Secret>,
    pub crate::cache::CacheControl,
);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, HttpError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| HttpError::BadRequest(format!("Invalid query string: {e}")))?;
        let token = token_of(&parts.headers, &pairs);
        let cache = parts
            .headers
            .get(axum::http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(crate::cache::CacheControl::parse)
            .unwrap_or_default();
        Ok(Params(pairs, token, cache))
    }
}

/// The address of the client connected to the API, set on every request by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The request's source IP, as Consul takes it for `?near=_ip`: the first address of
/// `X-Forwarded-For`, else the connected client's.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, HttpError> {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        Ok(ClientIp(forwarded.or(peer)))
    }
}

/// The request's ACL token, where Consul looks for it: `X-Consul-Token`, then
/// `Authorization: Bearer`, then `?token=`. An empty one is no token.
fn token_of(headers: &axum::http::HeaderMap, pairs: &[(String, String)]) -> Option<Secret> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-consul-token")
        .or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ")))
        .map(str::trim)
        .or_else(|| {
            pairs
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.as_str())
        })
        .filter(|t| !t.is_empty())
        .map(|t| Secret(t.to_string()))
}

impl Params {
    /// The same request for datacenter `dc` (its `?dc=` replaced).
    pub fn for_dc(&self, dc: Option<&str>) -> Params {
        let mut pairs: Vec<(String, String)> =
            self.0.iter().filter(|(k, _)| k != "dc").cloned().collect();
        if let Some(dc) = dc {
            pairs.push(("dc".into(), dc.into()));
        }
        Params(pairs, self.1.clone(), self.2)
    }

    /// The ACL token the request carries (`None`: the agent's default, or anonymous).
    pub fn token(&self) -> Option<Secret> {
        self.1.clone()
    }

    /// Whether a flag is present (`?recurse`, `?recurse=`, `?recurse=1` all count, as Consul).
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// Whether a flag is on: present and not spelled off (`?passing=false`, `?wan=0`, as
    /// clients that always send the parameter do).
    pub fn enabled(&self, name: &str) -> bool {
        self.flag(name) && !matches!(self.get(name), Some("false" | "0"))
    }

    /// A raw value (the first, if the name repeats).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for a repeatable parameter (`?tag=a&tag=b`).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `?node-meta=key:value` pairs; one without a colon is a 400.
    pub fn node_meta(&self) -> Result<Vec<(String, String)>, HttpError> {
        self.all("node-meta")
            .into_iter()
            .map(|kv| match kv.split_once(':') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(HttpError::BadRequest(format!(
                    "Invalid node-meta {kv:?}: expected key:value"
                ))),
            })
            .collect()
    }

    /// An unsigned integer parameter; a malformed one is a 400.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, HttpError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    HttpError::BadRequest(format!("Invalid {name}: {v:?} is not a number"))
                })
            })
            .transpose()
    }

    /// A Go-syntax duration parameter (`120000ms`, `5m`, `1m30s`).
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, HttpError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                parse_go_duration(v)
                    .ok_or_else(|| HttpError::BadRequest(format!("Invalid {name}: {v:?}")))
            })
            .transpose()
    }

    /// How long a blocking request answered from this agent's own state may wait
    /// (`?wait=`, default 5 minutes, at most [`MAX_WAIT`]).
    pub fn local_wait(&self) -> Result<Duration, HttpError> {
        Ok(self.duration("wait")?.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT))
    }

    /// The datacenter asked for, if any.
    pub fn dc(&self) -> Option<&str> {
        self.get("dc").filter(|d| !d.is_empty())
    }

    /// Consistency mode and blocking parameters of a read.
    pub fn read_options(&self) -> Result<ReadOptions, HttpError> {
        let max_stale = self.duration("max_stale")?;
        let stale = self.flag("stale") || max_stale.is_some();
        let consistent = self.flag("consistent");
        if stale && consistent {
            return Err(HttpError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ));
        }
        let mode = match (stale, consistent) {
            (true, _) => ReadMode::Stale,
            (_, true) => ReadMode::Consistent,
            _ => ReadMode::Leader,
        };
        let min_index = self.u64("index")?.unwrap_or(0);
        let wait = self.duration("wait")?.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
        // Consul adds up to wait/16 of jitter so that many waiters do not return together.
        let jitter = wait.mul_f64(rand::random::<f64>() / 16.0);
        Ok(ReadOptions {
            mode,
            max_stale,
            min_index,
            stale_if_error: self.2.stale_if_error,
            wait: if min_index > 0 {
                wait + jitter
            } else {
                Duration::ZERO
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None,
            Default::default(),
        )
    }

    #[test]
    fn consistency_modes_and_blocking() {
        assert_eq!(params(&[]).read_options().unwrap().mode, ReadMode::Leader);
        assert_eq!(
            params(&[("stale", "")]).read_options().unwrap().mode,
            ReadMode::Stale
        );
        assert_eq!(
            params(&[("max_stale", "5s")]).read_options().unwrap().mode,
            ReadMode::Stale
        );
        assert_eq!(
            params(&[("consistent", "1")]).read_options().unwrap().mode,
            ReadMode::Consistent
        );
        let both = params(&[("stale", ""), ("consistent", "")]).read_options();
        assert!(
            matches!(both, Err(HttpError::BadRequest(m)) if m.contains("conflicting semantics"))
        );
        let o = params(&[("index", "7"), ("wait", "10m")])
            .read_options()
            .unwrap();
        assert_eq!(o.min_index, 7);
        assert!(o.wait >= Duration::from_secs(600) && o.wait <= Duration::from_secs(600) * 17 / 16);
        let capped = params(&[("index", "7"), ("wait", "1h")])
            .read_options()
            .unwrap();
        assert!(capped.wait <= crate::vocab::MAX_WAIT_WITH_JITTER);
        assert!(params(&[("index", "x")]).read_options().is_err());
        assert_eq!(
            params(&[("wait", "1s")]).read_options().unwrap().wait,
            Duration::ZERO,
            "no index: answer now"
        );
    }
}
