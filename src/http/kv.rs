//! `/v1/kv/...`: Consul's KV endpoints.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use super::error::HttpError;
use super::params::Params;
use super::{Api, read};
use crate::state::query::{Query, QueryResult};
use crate::state::{Command, CommandResult, KvEntry};

/// A KV entry in Consul's JSON shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    /// Base64, `null` for an empty value.
    value: Option<String>,
    session: &'a str,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a KvEntry> for KvJson<'a> {
    fn from(e: &'a KvEntry) -> Self {
        KvJson {
            lock_index: e.lock_index,
            key: &e.key,
            flags: e.flags,
            value: (!e.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
            session: e.session.as_deref().unwrap_or(""),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

fn key_of(path: Option<Path<String>>) -> String {
    path.map(|Path(k)| k).unwrap_or_default()
}

/// `GET /v1/kv/:key` with `?recurse`, `?keys`, `?separator`, `?raw` and every read option.
pub async fn get(
    State(api): State<Api>,
    path: Option<Path<String>>,
    p: Params,
) -> Result<Response, HttpError> {
    let key = key_of(path);
    let query = if p.flag("keys") {
        Query::KvKeys {
            prefix: key,
            separator: p.get("separator").map(str::to_string),
        }
    } else if p.flag("recurse") {
        Query::KvList { prefix: key }
    } else {
        Query::KvGet { key }
    };
    let (headers, out) = read(&api, &p, query).await?;
    let not_found = || (axum::http::StatusCode::NOT_FOUND, headers.clone()).into_response();
    Ok(match &out.result {
        QueryResult::Keys(keys) if keys.is_empty() => not_found(),
        QueryResult::Keys(keys) => (headers, Json(keys)).into_response(),
        QueryResult::Kv(entries) if entries.is_empty() => not_found(),
        QueryResult::Kv(entries) if p.flag("raw") => {
            (headers, entries[0].value.clone()).into_response()
        }
        QueryResult::Kv(entries) => {
            let json: Vec<KvJson> = entries.iter().map(KvJson::from).collect();
            (headers, Json(json)).into_response()
        }
        _ => return Err(HttpError::shape()),
    })
}

fn bool_answer(r: CommandResult) -> Result<Response, HttpError> {
    match r {
        CommandResult::Bool(b) => Ok(Json(b).into_response()),
        CommandResult::Ok => Ok(Json(true).into_response()),
        CommandResult::Rejected(why) => Err(HttpError::BadRequest(why)),
        CommandResult::Batch(_) | CommandResult::Txn(_) => Err(HttpError::shape()),
    }
}

/// `PUT /v1/kv/:key` with `?cas=`, `?flags=`, `?acquire=` and `?release=`; the body is
/// the value (at most 512 KiB).
pub async fn put(
    State(api): State<Api>,
    path: Option<Path<String>>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let key = key_of(path);
    if key.is_empty() {
        return Err(HttpError::BadRequest("Missing key name".into()));
    }
    let flags = p.u64("flags")?.unwrap_or(0);
    let acquire = p.get("acquire").map(str::to_string);
    let release = p.get("release").map(str::to_string);
    let cmd = match (acquire, release, p.u64("cas")?) {
        (Some(session), _, _) => Command::KvAcquire {
            key,
            value: body,
            flags,
            session,
        },
        (None, Some(session), _) => Command::KvRelease {
            key,
            value: body,
            flags,
            session,
        },
        (None, None, Some(index)) => Command::KvCas {
            key,
            value: body,
            flags,
            index,
        },
        (None, None, None) => Command::KvSet {
            key,
            value: body,
            flags,
        },
    };
    bool_answer(api.dispatcher.write(p.token(), p.dc(), cmd).await?)
}

/// `DELETE /v1/kv/:key` with `?recurse` or `?cas=`.
pub async fn delete(
    State(api): State<Api>,
    path: Option<Path<String>>,
    p: Params,
) -> Result<Response, HttpError> {
    let key = key_of(path);
    let cmd = if p.flag("recurse") {
        Command::KvDeleteTree { prefix: key }
    } else if let Some(index) = p.u64("cas")? {
        Command::KvDeleteCas { key, index }
    } else {
        Command::KvDelete { key }
    };
    bool_answer(api.dispatcher.write(p.token(), p.dc(), cmd).await?)
}
