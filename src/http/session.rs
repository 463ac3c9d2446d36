//! `/v1/session/...`: Consul's session endpoints. Sessions are created and destroyed
//! through the log; renewals go to the DC's leader, which keeps the TTL timers.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::HttpError;
use super::json::decode;
use super::params::Params;
use super::{Api, read};
use crate::duration::parse_go_duration;
use crate::rpc::RenewSession;
use crate::state::query::{Query, QueryResult};
use crate::state::{Command, CommandResult, Session, SessionBehavior};

/// Consul's bounds on a session TTL.
const TTL_MIN: Duration = Duration::from_secs(10);
const TTL_MAX: Duration = Duration::from_secs(86400);
/// Consul's default and largest lock-delay.
const LOCK_DELAY_DEFAULT: Duration = Duration::from_secs(15);
const LOCK_DELAY_MAX: Duration = Duration::from_secs(60);

/// A service check named in `ServiceChecks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceCheckBody {
    id: String,
}

/// The body of `session/create` (keys matched as Consul does).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CreateBody {
    name: String,
    node: Option<String>,
    checks: Option<Vec<String>>,
    nodechecks: Option<Vec<String>>,
    servicechecks: Option<Vec<ServiceCheckBody>>,
    lockdelay: Option<Value>,
    behavior: Option<String>,
    ttl: Option<String>,
}

/// Consul's lock-delay: a duration string, or a number (below 1000: seconds, else
/// nanoseconds).
fn lock_delay(v: Option<Value>) -> Result<Duration, HttpError> {
    let bad =
        |v: &Value| HttpError::BadRequest(format!("Request decode failed: invalid LockDelay {v}"));
    let d = match v {
        None | Some(Value::Null) => LOCK_DELAY_DEFAULT,
        Some(Value::String(s)) => parse_go_duration(&s).ok_or_else(|| bad(&Value::String(s)))?,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v < 1000 => Duration::from_secs(v),
            Some(v) => Duration::from_nanos(v),
            None => return Err(bad(&Value::Number(n))),
        },
        Some(other) => return Err(bad(&other)),
    };
    Ok(d.min(LOCK_DELAY_MAX))
}

/// Builds the session a create request asks for (pure but for the new ID). Pure rules:
/// TTL within [10s, 24h], behavior `release`|`delete`, checks default to `serfHealth`.
fn session_from(body: CreateBody, agent_node: &str) -> Result<Session, HttpError> {
    let ttl = match body.ttl.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => {
            let d = parse_go_duration(t)
                .filter(|d| (TTL_MIN..=TTL_MAX).contains(d))
                .ok_or_else(|| {
                    HttpError::BadRequest(format!(
                        "Invalid Session TTL '{t}', must be between [10s=24h0m0s]"
                    ))
                })?;
            Some(d)
        }
    };
    let behavior = match body.behavior.as_deref().unwrap_or("") {
        "" | "release" => SessionBehavior::Release,
        "delete" => SessionBehavior::Delete,
        other => {
            return Err(HttpError::BadRequest(format!(
                "Invalid Behavior setting '{other}'"
            )));
        }
    };
    let service_checks: Vec<String> = body
        .servicechecks
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut node_checks = body.checks.unwrap_or_default();
    let given = !node_checks.is_empty() || body.nodechecks.is_some() || !service_checks.is_empty();
    node_checks.extend(body.nodechecks.unwrap_or_default());
    if !given {
        node_checks.push("serfHealth".into());
    }
    node_checks.dedup();
    Ok(Session {
        id: crate::vocab::random_uuid(),
        name: body.name,
        node: body
            .node
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| agent_node.to_string()),
        node_checks,
        service_checks,
        lock_delay: lock_delay(body.lockdelay)?,
        behavior,
        ttl,
        create_index: 0,
        modify_index: 0,
    })
}

/// `PUT /v1/session/create`.
pub async fn create(State(api): State<Api>, p: Params, body: Bytes) -> Result<Response, HttpError> {
    let session = session_from(decode(&body)?, &api.local.node.name)?;
    let id = session.id.clone();
    match api
        .dispatcher
        .write(p.token(), p.dc(), Command::SessionCreate(Box::new(session)))
        .await?
    {
        CommandResult::Ok => Ok(Json(serde_json::json!({ "ID": id })).into_response()),
        CommandResult::Rejected(why) => Err(HttpError::BadRequest(why)),
        _ => Err(HttpError::shape()),
    }
}

/// `PUT /v1/session/destroy/:id`.
pub async fn destroy(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    api.dispatcher
        .write(p.token(), p.dc(), Command::SessionDestroy { id })
        .await?;
    Ok(Json(true).into_response())
}

/// `PUT /v1/session/renew/:id`: the session, or 404.
pub async fn renew(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let renew = RenewSession {
        dc: p.dc().map(str::to_string),
        id: id.clone(),
        token: p.token(),
    };
    match api.dispatcher.call(renew).await? {
        Some(s) => Ok(Json(vec![SessionJson::from(&s)]).into_response()),
        None => Err(HttpError::NotFoundBecause(format!(
            "Session id '{id}' not found"
        ))),
    }
}

async fn list(api: &Api, p: &Params, query: Query) -> Result<Response, HttpError> {
    let (headers, out) = read(api, p, query).await?;
    let QueryResult::Sessions(sessions) = &out.result else {
        return Err(HttpError::shape());
    };
    let json: Vec<SessionJson> = sessions.iter().map(SessionJson::from).collect();
    Ok((headers, Json(json)).into_response())
}

/// `GET /v1/session/info/:id`.
pub async fn info(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    list(&api, &p, Query::SessionInfo { id }).await
}

/// `GET /v1/session/node/:node`.
pub async fn node(
    State(api): State<Api>,
    Path(node): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    list(&api, &p, Query::NodeSessions { node }).await
}

/// `GET /v1/session/list`.
pub async fn all(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    list(&api, &p, Query::Sessions).await
}

/// A service check in Consul's session JSON.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceCheckJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    namespace: &'a str,
}

/// A session in Consul's JSON shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    node: &'a str,
    /// Nanoseconds, as Consul.
    lock_delay: u64,
    behavior: &'static str,
    #[serde(rename = "TTL")]
    ttl: String,
    node_checks: &'a [String],
    service_checks: Option<Vec<ServiceCheckJson<'a>>>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a Session> for SessionJson<'a> {
    fn from(s: &'a Session) -> Self {
        SessionJson {
            id: &s.id,
            name: &s.name,
            node: &s.node,
            lock_delay: u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            behavior: s.behavior.as_str(),
            ttl: s
                .ttl
                .map_or_else(String::new, |t| format!("{}s", t.as_secs())),
            node_checks: &s.node_checks,
            service_checks: (!s.service_checks.is_empty()).then(|| {
                s.service_checks
                    .iter()
                    .map(|id| ServiceCheckJson { id, namespace: "" })
                    .collect()
            }),
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateBody {
        decode(&Bytes::from(json.to_string())).unwrap()
    }

    #[test]
    fn create_bodies_as_consul_and_python_clients_send_them() {
        let s = session_from(body("{}"), "agent-node").unwrap();
        assert_eq!(s.node, "agent-node");
        assert_eq!(s.node_checks, ["serfHealth"]);
        assert_eq!(s.lock_delay, Duration::from_secs(15));
        assert_eq!((s.behavior, s.ttl), (SessionBehavior::Release, None));
        let s = session_from(
            body(r#"{"name": "lock", "ttl": "10s", "lock_delay": "2s", "behavior": "delete", "node": "n1"}"#),
            "a",
        )
        .unwrap();
        assert_eq!(
            (
                s.name.as_str(),
                s.ttl,
                s.lock_delay,
                s.behavior,
                s.node.as_str()
            ),
            (
                "lock",
                Some(Duration::from_secs(10)),
                Duration::from_secs(2),
                SessionBehavior::Delete,
                "n1"
            )
        );
        let s = session_from(body(r#"{"LockDelay": 5, "NodeChecks": [], "ServiceChecks": [{"ID": "web-check", "Namespace": ""}]}"#), "a").unwrap();
        assert_eq!(s.lock_delay, Duration::from_secs(5));
        assert!(s.node_checks.is_empty());
        assert_eq!(s.service_checks, ["web-check"]);
        let s = session_from(body(r#"{"Checks": ["serfHealth", "disk"]}"#), "a").unwrap();
        assert_eq!(s.node_checks, ["serfHealth", "disk"]);
        assert_eq!(
            session_from(body(r#"{"LockDelay": 15000000000}"#), "a")
                .unwrap()
                .lock_delay,
            Duration::from_secs(15)
        );
        assert_ne!(
            session_from(body("{}"), "a").unwrap().id,
            session_from(body("{}"), "a").unwrap().id
        );
    }

    #[test]
    fn bad_ttls_and_behaviors_are_refused() {
        for json in [
            r#"{"TTL": "5s"}"#,
            r#"{"TTL": "25h"}"#,
            r#"{"TTL": "soon"}"#,
            r#"{"Behavior": "keep"}"#,
            r#"{"LockDelay": "x"}"#,
        ] {
            assert!(session_from(body(json), "a").is_err(), "{json}");
        }
    }
}
