//! Consul's `/v1/txn` (KV, and catalog node, service and check operations): up to 128
//! operations, all or nothing in one Raft entry; a transaction of reads and checks only is served without Raft, in the requested
//! consistency mode. 200 with each operation's result, 409 with which one failed and why.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::catalog::CheckBody;
use super::error::HttpError;
use super::json::{CheckJson, NodeJson, ServiceBody, ServiceJson, decode_list, decode_value};
use super::kv::KvJson;
use super::params::Params;
use super::{Api, read};
use crate::state::RegisterRequest;
use crate::state::query::{Query, QueryResult};
use crate::state::txn::{
    CatalogOp, CatalogTarget, CatalogVerb, KvOp, KvVerb, MAX_OPS, TxnOp, TxnOutcome, TxnResult,
};
use crate::state::{Command, CommandResult};

/// One operation as a request carries it: keys normalized by the decoder, or in Consul's
/// own spelling (the aliases), which is read straight from the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    #[serde(alias = "KV")]
    kv: Option<KvBody>,
    #[serde(alias = "Node")]
    node: Option<serde_json::Value>,
    #[serde(alias = "Service")]
    service: Option<serde_json::Value>,
    #[serde(alias = "Check")]
    check: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvBody {
    #[serde(alias = "Verb")]
    verb: String,
    #[serde(alias = "Key")]
    key: String,
    #[serde(alias = "Value", default)]
    value: Option<String>,
    #[serde(alias = "Flags", default)]
    flags: u64,
    #[serde(alias = "Index", default)]
    index: u64,
    #[serde(alias = "Session", default)]
    session: String,
}

/// A catalog operation as Consul nests it: `{"Verb", "Node": {..}}`, `{"Verb", "Node":
/// name, "Service": {..}}`, `{"Verb", "Check": {..}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogBody {
    verb: String,
    #[serde(default)]
    node: Option<serde_json::Value>,
    #[serde(default)]
    service: Option<serde_json::Value>,
    #[serde(default)]
    check: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    #[serde(default)]
    id: String,
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
    #[serde(rename = "taggedaddresses", default)]
    tagged_addresses: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    meta: Option<std::collections::BTreeMap<String, String>>,
    #[serde(rename = "modifyindex", default)]
    modify_index: u64,
    #[serde(rename = "createindex", default)]
    _create_index: u64,
}

/// Takes the indexes (and what a read answer shows beside the definition) out of an object
/// before it is decoded by a registration's shape; returns its ModifyIndex.
fn take_index(v: &mut serde_json::Value) -> u64 {
    let Some(map) = v.as_object_mut() else {
        return 0;
    };
    for derived in ["createindex", "servicename", "servicetags"] {
        map.remove(derived);
    }
    map.remove("modifyindex")
        .and_then(|i| i.as_u64())
        .unwrap_or(0)
}

impl CatalogBody {
    fn into_op(
        self,
        target: CatalogTarget,
        bad: impl Fn(String) -> HttpError,
    ) -> Result<CatalogOp, HttpError> {
        let verb = CatalogVerb::parse(&self.verb)
            .ok_or_else(|| bad(format!("unknown verb {:?}", self.verb)))?;
        let missing = |what: &str| bad(format!("missing {what}"));
        let (req, index) = match target {
            CatalogTarget::Node => {
                let n: NodeBody = decode_value(self.node.ok_or_else(|| missing("Node"))?)?;
                let req = RegisterRequest {
                    id: n.id,
                    node: n.node,
                    address: n.address,
                    datacenter: n.datacenter,
                    tagged_addresses: n.tagged_addresses.unwrap_or_default(),
                    node_meta: n.meta.unwrap_or_default(),
                    ..Default::default()
                };
                (req, n.modify_index)
            }
            CatalogTarget::Service => {
                let node = self
                    .node
                    .as_ref()
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| missing("Node"))?
                    .to_string();
                let mut v = self.service.ok_or_else(|| missing("Service"))?;
                let index = take_index(&mut v);
                let (mut def, _) = decode_value::<ServiceBody>(v)?.into_definition()?;
                if def.id.is_empty() {
                    def.id = def.service.clone();
                }
                let req = RegisterRequest {
                    node,
                    service: Some(def),
                    ..Default::default()
                };
                (req, index)
            }
            CatalogTarget::Check => {
                let mut v = self.check.ok_or_else(|| missing("Check"))?;
                let index = take_index(&mut v);
                let c: CheckBody = decode_value(v)?;
                let req = RegisterRequest {
                    node: c.node.clone(),
                    checks: vec![c.into_definition()?],
                    ..Default::default()
                };
                (req, index)
            }
        };
        if req.node.is_empty() {
            return Err(missing("node name"));
        }
        let op = CatalogOp {
            target,
            verb,
            req,
            index,
        };
        if target != CatalogTarget::Node && op.id().is_empty() {
            return Err(missing("ID"));
        }
        Ok(op)
    }
}

impl OpBody {
    fn is_kv(&self) -> bool {
        self.node.is_none() && self.service.is_none() && self.check.is_none()
    }

    fn into_op(self, i: usize) -> Result<TxnOp, HttpError> {
        let bad = |what: String| HttpError::BadRequest(format!("Operation {i}: {what}"));
        let given = [&self.node, &self.service, &self.check]
            .iter()
            .filter(|o| o.is_some())
            .count()
            + usize::from(self.kv.is_some());
        if given != 1 {
            return Err(bad("must be exactly one of KV, Node, Service, Check".into()));
        }
        for (body, target) in [
            (self.node, CatalogTarget::Node),
            (self.service, CatalogTarget::Service),
            (self.check, CatalogTarget::Check),
        ] {
            if let Some(body) = body {
                let body: CatalogBody = decode_value(body)?;
                return Ok(TxnOp::Catalog(Box::new(body.into_op(target, bad)?)));
            }
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
        Ok(TxnOp::Kv(KvOp {
            verb,
            key: kv.key,
            value: value.into(),
            flags: kv.flags,
            index: kv.index,
            session: kv.session,
        }))
    }
}

/// One result as Consul shows it: `{"KV": ..}`, `{"Node": ..}`, `{"Service": ..}` or
/// `{"Check": ..}`.
#[derive(Serialize)]
enum ResultJson<'a> {
    #[serde(rename = "KV")]
    Kv(KvJson<'a>),
    Node(NodeJson<'a>),
    Service(ServiceJson<'a>),
    Check(CheckJson<'a>),
}

impl<'a> ResultJson<'a> {
    fn new(r: &'a TxnResult, datacenter: &'a str) -> Self {
        match r {
            TxnResult::Kv(e) => ResultJson::Kv(KvJson::from(e)),
            TxnResult::Node(n) => ResultJson::Node(NodeJson::from(n)),
            TxnResult::Service(s) => ResultJson::Service(ServiceJson::new(s, datacenter)),
            TxnResult::Check(c) => ResultJson::Check(CheckJson::from(c)),
        }
    }
}

/// One failure as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorJson<'a> {
    op_index: usize,
    what: &'a str,
}

/// A transaction's answer (typed, serialized without an intermediate JSON tree).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnJson<'a> {
    results: Option<Vec<ResultJson<'a>>>,
    errors: Option<Vec<ErrorJson<'a>>>,
}

/// `PUT /v1/txn`. A body of KV operations in Consul's spelling is decoded directly; any
/// other (catalog operations, whose nested shapes are decoded from normalized keys; keys in
/// another case, snake_case) goes through the normalizing decoder, which also words the
/// errors.
pub async fn txn(State(api): State<Api>, p: Params, body: Bytes) -> Result<Response, HttpError> {
    let ops: Vec<OpBody> = match serde_json::from_slice::<Vec<OpBody>>(&body) {
        Ok(ops) if ops.iter().all(OpBody::is_kv) => ops,
        _ => decode_list(&body)?,
    };
    if ops.len() > MAX_OPS {
        return Err(HttpError::TooManyOps(ops.len(), MAX_OPS));
    }
    let ops: Vec<TxnOp> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| op.into_op(i))
        .collect::<Result<_, _>>()?;
    let (headers, outcome) = if ops.iter().all(TxnOp::is_read) {
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
            let dc = p.dc().unwrap_or(&api.local.node.datacenter);
            let json = TxnJson {
                results: Some(entries.iter().map(|e| ResultJson::new(e, dc)).collect()),
                errors: None,
            };
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
            let json = TxnJson {
                results: None,
                errors: Some(errors),
            };
            (StatusCode::CONFLICT, headers, Json(json)).into_response()
        }
    })
}
