//! `consulate watch` and `consulate event`: Consul's watches (a blocking query run in a
//! loop, a handler run with the result on stdin at start and on every change, never for
//! an unchanged result) and firing a user event.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{CliError, Client};

/// What a watch follows (Consul's `-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchType {
    /// One KV key (`-key`).
    Key,
    /// Every key under a prefix (`-prefix`).
    Keyprefix,
    /// The service names of the catalog.
    Services,
    /// The nodes of the catalog.
    Nodes,
    /// One service's healthy or all instances (`-service`, `-tag`, `-passingonly`).
    Service,
    /// Checks of a service (`-service`) or in a state (`-state`, default any).
    Checks,
    /// User events (`-name`).
    Event,
}

/// A watch: its type and parameters.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    /// What to follow.
    pub kind: Option<WatchType>,
    /// `-key`.
    pub key: Option<String>,
    /// `-prefix`.
    pub prefix: Option<String>,
    /// `-service`.
    pub service: Option<String>,
    /// `-tag`.
    pub tag: Option<String>,
    /// `-passingonly`.
    pub passing_only: bool,
    /// `-state`.
    pub state: Option<String>,
    /// `-name`.
    pub name: Option<String>,
    /// `-datacenter`.
    pub datacenter: Option<String>,
}

fn required<'a>(v: &'a Option<String>, flag: &str, kind: &str) -> Result<&'a str, CliError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CliError::Input(format!("-{flag} is required for a {kind} watch")))
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .unwrap_or_default()
        .trim_start_matches('=')
        .to_string()
}

impl WatchSpec {
    /// The blocking query the watch runs, without its index (pure).
    pub fn path(&self) -> Result<String, CliError> {
        let kind = self
            .kind
            .ok_or_else(|| CliError::Input("-type is required".into()))?;
        let mut params: Vec<String> = Vec::new();
        let base = match kind {
            WatchType::Key => format!("/v1/kv/{}", required(&self.key, "key", "key")?),
            WatchType::Keyprefix => {
                params.push("recurse".into());
                format!("/v1/kv/{}", required(&self.prefix, "prefix", "keyprefix")?)
            }
            WatchType::Services => "/v1/catalog/services".into(),
            WatchType::Nodes => "/v1/catalog/nodes".into(),
            WatchType::Service => {
                if let Some(t) = self.tag.as_deref().filter(|t| !t.is_empty()) {
                    params.push(format!("tag={}", enc(t)));
                }
                if self.passing_only {
                    params.push("passing".into());
                }
                format!(
                    "/v1/health/service/{}",
                    enc(required(&self.service, "service", "service")?)
                )
            }
            WatchType::Checks => match (&self.service, &self.state) {
                (Some(s), _) => format!("/v1/health/checks/{}", enc(s)),
                (None, s) => format!("/v1/health/state/{}", enc(s.as_deref().unwrap_or("any"))),
            },
            WatchType::Event => {
                if let Some(n) = self.name.as_deref().filter(|n| !n.is_empty()) {
                    params.push(format!("name={}", enc(n)));
                }
                "/v1/event/list".into()
            }
        };
        if let Some(dc) = self.datacenter.as_deref().filter(|d| !d.is_empty()) {
            params.push(format!("dc={}", enc(dc)));
        }
        Ok(match params.is_empty() {
            true => base,
            false => format!("{base}?{}", params.join("&")),
        })
    }
}

impl WatchSpec {
    /// The handler's input from an answer (`None`: 404): a key watch gets the entry
    /// itself (or `null`), as Consul's; the others the answer as it is.
    fn result(&self, answer: Option<Value>) -> Value {
        match (self.kind, answer) {
            (Some(WatchType::Key), Some(Value::Array(mut entries))) if !entries.is_empty() => {
                entries.swap_remove(0)
            }
            (Some(WatchType::Key), _) | (_, None) => Value::Null,
            (_, Some(v)) => v,
        }
    }
}

/// How long each blocking query of a watch waits.
const WATCH_WAIT: &str = "5m";

/// The longest pause between retries after the agent failed to answer.
const MAX_RETRY: Duration = Duration::from_secs(20);

/// Decides whether a new answer runs the handler, as Consul's watch plan does (pure).
#[derive(Debug, Default)]
pub struct WatchState {
    index: u64,
    last: Option<Value>,
}

impl WatchState {
    /// The index the next blocking query waits on.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Takes an answer at `index`: `Some(result)` when the handler runs (the first
    /// answer, and any answer that differs from the last one handled).
    pub fn answer(&mut self, index: u64, result: Value) -> Option<&Value> {
        // An index that went backwards (a restored snapshot, another leader) restarts
        // the wait from zero, as Consul's watches do.
        self.index = if index < self.index { 0 } else { index };
        if self.last.as_ref() == Some(&result) {
            return None;
        }
        self.last = Some(result);
        self.last.as_ref()
    }
}

/// Runs `handler` through `sh -c` with `result` on its stdin and `CONSUL_INDEX` set;
/// waits for it.
async fn run_handler(handler: &str, index: u64, result: &Value) -> Result<(), CliError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(handler)
        .env("CONSUL_INDEX", index.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Input(format!("cannot run the handler: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut body = serde_json::to_vec(result).unwrap_or_default();
        body.push(b'\n');
        // A handler that does not read its input is not an error.
        let _ = stdin.write_all(&body).await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| CliError::Input(format!("the handler: {e}")))?;
    if !status.success() {
        eprintln!("watch: handler exited with {status}");
    }
    Ok(())
}

/// `consulate watch`: without a handler prints the current result and returns; with one,
/// runs it at start and on every change until `stop` fires (SIGTERM, Ctrl-C).
pub async fn watch(
    c: &Client,
    spec: &WatchSpec,
    handler: Option<&str>,
    stop: CancellationToken,
) -> Result<String, CliError> {
    let path = spec.path()?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let Some(handler) = handler else {
        let (v, _) = c.get_indexed(&path, "watch").await?;
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&spec.result(v)).unwrap_or_default()
        ));
    };
    let mut state = WatchState::default();
    let mut retry = Duration::from_secs(1);
    loop {
        let query = format!("{path}{sep}index={}&wait={WATCH_WAIT}", state.index());
        let answer = tokio::select! {
            a = c.get_indexed(&query, "watch") => a,
            () = stop.cancelled() => return Ok(String::new()),
        };
        match answer {
            Ok((v, index)) => {
                retry = Duration::from_secs(1);
                if let Some(result) = state.answer(index, spec.result(v)) {
                    run_handler(handler, index, result).await?;
                }
            }
            Err(e) => {
                eprintln!("watch: {e}; retrying in {retry:?}");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = stop.cancelled() => return Ok(String::new()),
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// A user event to fire (`consulate event`).
#[derive(Debug, Clone, Default)]
pub struct EventSpec {
    /// `-name`.
    pub name: String,
    /// `-node` (a regex on node names).
    pub node: Option<String>,
    /// `-service` (a regex on service names).
    pub service: Option<String>,
    /// `-tag` (a regex on the service's tags).
    pub tag: Option<String>,
    /// `-datacenter`.
    pub datacenter: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// `consulate event`: fires the event; prints its ID as Consul's CLI does.
pub async fn fire(c: &Client, e: &EventSpec) -> Result<String, CliError> {
    let mut params = Vec::new();
    for (k, v) in [
        ("node", &e.node),
        ("service", &e.service),
        ("tag", &e.tag),
        ("dc", &e.datacenter),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            params.push(format!("{k}={}", enc(v)));
        }
    }
    let query = match params.is_empty() {
        true => String::new(),
        false => format!("?{}", params.join("&")),
    };
    let answer = c
        .put(
            &format!("/v1/event/fire/{}{query}", enc(&e.name)),
            e.payload.clone(),
            "event/fire",
        )
        .await?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|err| CliError::Input(format!("event/fire: bad answer: {err}")))?;
    Ok(format!(
        "Event ID: {}\n",
        v.get("ID").and_then(Value::as_str).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_watches_its_endpoint() {
        let spec = |kind| WatchSpec {
            kind: Some(kind),
            ..Default::default()
        };
        let mut s = spec(WatchType::Key);
        assert!(s.path().is_err(), "a key watch needs -key");
        s.key = Some("app/config".into());
        assert_eq!(s.path().unwrap(), "/v1/kv/app/config");
        let mut s = spec(WatchType::Keyprefix);
        s.prefix = Some("app/".into());
        assert_eq!(s.path().unwrap(), "/v1/kv/app/?recurse");
        let mut s = spec(WatchType::Service);
        s.service = Some("web".into());
        s.tag = Some("v1".into());
        s.passing_only = true;
        s.datacenter = Some("dc2".into());
        assert_eq!(
            s.path().unwrap(),
            "/v1/health/service/web?tag=v1&passing&dc=dc2"
        );
        assert_eq!(
            spec(WatchType::Checks).path().unwrap(),
            "/v1/health/state/any"
        );
        let mut s = spec(WatchType::Event);
        s.name = Some("deploy".into());
        assert_eq!(s.path().unwrap(), "/v1/event/list?name=deploy");
        assert_eq!(spec(WatchType::Nodes).path().unwrap(), "/v1/catalog/nodes");
    }

    #[test]
    fn the_handler_runs_at_start_and_on_change_only() {
        let mut w = WatchState::default();
        assert!(
            w.answer(5, Value::Null).is_some(),
            "the first answer runs it"
        );
        assert_eq!(w.index(), 5);
        assert!(
            w.answer(6, Value::Null).is_none(),
            "same result, new index: not run"
        );
        assert!(w.answer(7, serde_json::json!(["a"])).is_some());
        assert!(w.answer(7, serde_json::json!(["a"])).is_none());
        assert!(w.answer(3, serde_json::json!(["b"])).is_some());
        assert_eq!(w.index(), 0, "an index that went back restarts from zero");
    }
}
