//! Consul's query-parameter conventions, parsed once for every endpoint: bare and valued
//! boolean flags, Go-syntax durations, consistency modes, blocking-query parameters.

use std::collections::HashMap;
use std::time::Duration;

use crate::dispatch::ReadOptions;
use crate::raft::ReadMode;

use super::error::HttpError;

/// Default blocking wait (Consul: 5 minutes).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest blocking wait (Consul: 10 minutes).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The query string of one request (bare flags map to "").
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, HttpError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(Params)
            .map_err(|e| HttpError::BadRequest(format!("Invalid query string: {e}")))
    }
}

impl Params {
    /// Whether a flag is present (`?recurse`, `?recurse=`, `?recurse=1` all count, as Consul).
    pub fn flag(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// A raw value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
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
            wait: if min_index > 0 {
                wait + jitter
            } else {
                Duration::ZERO
            },
        })
    }
}

/// Parses Go's `time.ParseDuration` syntax: a sequence of decimal numbers with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` (`1h30m`, `1.5s`, `120000ms`). Negative values are
/// rejected: no Consul parameter takes one.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
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
        )
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("120000ms"), Some(Duration::from_secs(120)));
        assert_eq!(d("525s"), Some(Duration::from_secs(525)));
        assert_eq!(d("5m"), Some(Duration::from_secs(300)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in ["", "5", "s", "-1s", "1x", "1.2.3s"] {
            assert_eq!(d(bad), None, "{bad}");
        }
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
        assert!(capped.wait <= MAX_WAIT * 17 / 16);
        assert!(params(&[("index", "x")]).read_options().is_err());
        assert_eq!(
            params(&[("wait", "1s")]).read_options().unwrap().wait,
            Duration::ZERO,
            "no index: answer now"
        );
    }
}
