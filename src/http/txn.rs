//! Consul's `/v1/txn` (KV operations): up to 128 operations, all or nothing in one Raft
//! entry; a transaction of reads and checks only is served without Raft, in the requested
//! consistency mode. 200 with each operation's result, 409 with which one failed and why.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::HttpError;
use super::json::decode_list;
use super::kv::KvJson;
use super::params::Params;
use super::{Api, read};
use crate::state::query::{Query, QueryResult};
use crate::state::txn::{KvOp, KvVerb, MAX_OPS, TxnOutcome};
use crate::state::{Command, CommandResult};

/// One operation as a request carries it (keys normalized by the decoder).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    kv: Option<KvBody>,
    node: Option<serde_json::Value>,
    service: Option<serde_json::Value>,
    check: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvBody {
    verb: String,
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    session: String,
}

impl OpBody {
    fn into_op(self, i: usize) -> Result<KvOp, HttpError> {
        let bad = |what: String| HttpError::BadRequest(format!("Operation {i}: {what}"));
        if self.node.is_some() || self.service.is_some() || self.check.is_some() {
            return Err(bad(
                "catalog operations in transactions are not supported yet".into(),
            ));
        }
        let kv = self.kv.ok_or_else(|| bad("no KV operation".into()))?;
        let verb =
            KvVerb::parse(&kv.verb).ok_or_else(|| bad(format!("unknown KV verb {:?}", kv.verb)))?;
        let value = match kv.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| bad(format!("Value is not base64: {e}")))?,
            None => Vec::new(),
        };
        if kv.key.is_empty() && !matches!(verb, KvVerb::GetTree | KvVerb::DeleteTree) {
            return Err(bad("missing key".into()));
        }
        if matches!(verb, KvVerb::Lock | KvVerb::Unlock | KvVerb::CheckSession)
            && kv.session.is_empty()
        {
            return Err(bad(format!("{} needs a Session", kv.verb)));
        }
        Ok(KvOp {
            verb,
            key: kv.key,
            value: value.into(),
            flags: kv.flags,
            index: kv.index,
            session: kv.session,
        })
    }
}

/// One result as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultJson<'a> {
    #[serde(rename = "KV")]
    kv: KvJson<'a>,
}

/// One failure as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorJson<'a> {
    op_index: usize,
    what: &'a str,
}

/// `PUT /v1/txn`.
pub async fn txn(State(api): State<Api>, p: Params, body: Bytes) -> Result<Response, HttpError> {
    let ops: Vec<OpBody> = decode_list(&body)?;
    if ops.len() > MAX_OPS {
        return Err(HttpError::TooManyOps(ops.len(), MAX_OPS));
    }
    let ops: Vec<KvOp> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| op.into_op(i))
        .collect::<Result<_, _>>()?;
    let (headers, outcome) = if ops.iter().all(|op| op.verb.is_read()) {
        let (headers, out) = read(&api, &p, Query::Txn(ops)).await?;
        let QueryResult::Txn(outcome) = out.result else {
            return Err(HttpError::shape());
        };
        (headers, outcome)
    } else {
        match api
            .dispatcher
            .write(p.token(), p.dc(), Command::Txn(ops))
            .await?
        {
            CommandResult::Txn(outcome) => (Default::default(), outcome),
            CommandResult::Rejected(why) => return Err(HttpError::BadRequest(why)),
            _ => return Err(HttpError::shape()),
        }
    };
    Ok(match &outcome {
        TxnOutcome::Applied(entries) => {
            let results: Vec<ResultJson> = entries
                .iter()
                .map(|e| ResultJson {
                    kv: KvJson::from(e),
                })
                .collect();
            let json = serde_json::json!({ "Results": results, "Errors": null });
            (headers, Json(json)).into_response()
        }
        TxnOutcome::Failed(errors) => {
            let errors: Vec<ErrorJson> = errors
                .iter()
                .map(|e| ErrorJson {
                    op_index: e.op_index,
                    what: &e.what,
                })
                .collect();
            let json = serde_json::json!({ "Results": null, "Errors": errors });
            (StatusCode::CONFLICT, headers, Json(json)).into_response()
        }
    })
}
