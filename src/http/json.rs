//! Consul's JSON: the response shapes of catalog and health entries (PascalCase, exactly
//! Consul's field names), and the request-body decoder that matches keys as Consul does
//! (case-insensitively, snake_case too), rejects unknown keys, and names what is wrong.

use std::collections::BTreeMap;

use axum::body::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::HttpError;
use crate::state::{Check, Node, Service, ServiceDefinition, Weights};

/// Keys whose values are user maps: their own keys are data and keep their spelling.
const USER_MAPS: &[&str] = &[
    "meta",
    "nodemeta",
    "servicemeta",
    "taggedaddresses",
    "servicetaggedaddresses",
    "header",
];

/// Keys Consul clients send for features consulate does not have (Connect, ACL tokens,
/// namespaces). They are accepted and ignored rather than refused, so that those clients
/// keep working.
const IGNORED: &[&str] = &[
    "kind",
    "proxy",
    "connect",
    "token",
    "skipnodeupdate",
    "namespace",
    "partition",
    "locality",
    "socketpath",
    "definition",
    "type",
];

/// Consul's key matching: case and underscores do not matter (`ServiceID`, `serviceid`,
/// `service_id` are one key).
fn normalize_key(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Keys of a prepared query's body for features consulate does not have (Connect,
/// namespaces, peering), accepted and ignored.
pub const QUERY_IGNORED: &[&str] = &["connect", "namespace", "partition", "peer", "samenessgroup"];

fn normalize(v: Value, ignored: &[&str]) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = normalize_key(&k);
                if ignored.contains(&key.as_str()) {
                    continue;
                }
                let v = if USER_MAPS.contains(&key.as_str()) {
                    v
                } else {
                    normalize(v, ignored)
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| normalize(v, ignored)).collect())
        }
        other => other,
    }
}

/// Decodes a request body into `T`, whose serde names are the normalized keys. A body
/// that is not JSON, has the wrong shape or an unknown key is a 400 saying why.
pub fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpError> {
    decode_ignoring(body, IGNORED)
}

/// A body that is a JSON array of objects (`/v1/txn`), each decoded as [`decode`] does.
pub fn decode_list<T: DeserializeOwned>(body: &Bytes) -> Result<Vec<T>, HttpError> {
    let bad = |e: serde_json::Error| HttpError::BadRequest(format!("Request decode failed: {e}"));
    let value: Value = serde_json::from_slice(body).map_err(bad)?;
    let Value::Array(items) = value else {
        return Err(HttpError::BadRequest(
            "Request decode failed: the body must be a JSON array".into(),
        ));
    };
    items
        .into_iter()
        .map(|v| serde_json::from_value(normalize(v, IGNORED)).map_err(bad))
        .collect()
}

/// [`decode`], accepting and dropping the keys in `ignored` instead of the catalog's.
pub fn decode_ignoring<T: DeserializeOwned>(
    body: &Bytes,
    ignored: &[&str],
) -> Result<T, HttpError> {
    let bad = |e: serde_json::Error| HttpError::BadRequest(format!("Request decode failed: {e}"));
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(bad)?
    };
    object_ignoring(value, ignored)
}

/// An already parsed JSON object decoded as [`decode`] decodes a body (keys in either
/// spelling): how the config file's service and check definitions are read with the API's
/// decoders.
pub fn decode_object<T: DeserializeOwned>(value: Value) -> Result<T, HttpError> {
    object_ignoring(value, IGNORED)
}

fn object_ignoring<T: DeserializeOwned>(value: Value, ignored: &[&str]) -> Result<T, HttpError> {
    if !value.is_object() {
        return Err(HttpError::BadRequest(
            "Request decode failed: the body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(normalize(value, ignored))
        .map_err(|e| HttpError::BadRequest(format!("Request decode failed: {e}")))
}

/// Consul's `Weights` in a request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    #[serde(default = "one")]
    passing: u32,
    #[serde(default = "one")]
    warning: u32,
}

fn one() -> u32 {
    1
}

impl From<WeightsBody> for Weights {
    fn from(w: WeightsBody) -> Self {
        Weights {
            passing: w.passing,
            warning: w.warning,
        }
    }
}

/// A service definition as `catalog/register` (its `Service`) and `agent/service/register`
/// take it: the name as `Service` or `Name`. Checks are only for agent registrations; they
/// stay JSON here and are decoded by the agent endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBody {
    #[serde(default)]
    id: String,
    #[serde(default, alias = "name")]
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(rename = "taggedaddresses", default)]
    tagged_addresses: BTreeMap<String, Value>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<WeightsBody>,
    #[serde(rename = "enabletagoverride", default)]
    enable_tag_override: bool,
    #[serde(default)]
    check: Option<Value>,
    #[serde(default)]
    checks: Option<Vec<Value>>,
}

impl ServiceBody {
    /// The definition, and the check bodies given with it (`Check` then `Checks`).
    pub fn into_definition(self) -> Result<(ServiceDefinition, Vec<Value>), HttpError> {
        let def = ServiceDefinition {
            id: self.id,
            service: self.service,
            tags: self.tags.unwrap_or_default(),
            address: self.address,
            port: self.port,
            tagged_addresses: self
                .tagged_addresses
                .into_iter()
                .map(|(k, v)| Ok((k, tagged_address(v)?)))
                .collect::<Result<_, HttpError>>()?,
            meta: self.meta.unwrap_or_default(),
            weights: self.weights.map(Weights::from).unwrap_or_default(),
            enable_tag_override: self.enable_tag_override,
        };
        let checks = self
            .check
            .into_iter()
            .chain(self.checks.unwrap_or_default())
            .collect();
        Ok((def, checks))
    }
}

/// A tagged address given as a string or as Consul's `{"Address":..,"Port":..}`.
pub fn tagged_address(v: Value) -> Result<String, HttpError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Object(m) => Ok(m
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("address"))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_string()),
        other => Err(HttpError::BadRequest(format!(
            "Invalid tagged address {other}"
        ))),
    }
}

/// Decodes a part of an already normalized body (e.g. a check inside a service).
pub fn decode_value<T: DeserializeOwned>(v: Value) -> Result<T, HttpError> {
    serde_json::from_value(v)
        .map_err(|e| HttpError::BadRequest(format!("Request decode failed: {e}")))
}

/// A catalog node (`catalog/nodes`, `catalog/node/:n`, `health/service` entries).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    meta: &'a BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a Node> for NodeJson<'a> {
    fn from(n: &'a Node) -> Self {
        NodeJson {
            id: &n.id,
            node: &n.node,
            address: &n.address,
            datacenter: &n.datacenter,
            tagged_addresses: &n.tagged_addresses,
            meta: &n.meta,
            create_index: n.create_index,
            modify_index: n.modify_index,
        }
    }
}

/// Consul's `Weights` object.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsJson {
    passing: u32,
    warning: u32,
}

impl From<Weights> for WeightsJson {
    fn from(w: Weights) -> Self {
        WeightsJson {
            passing: w.passing,
            warning: w.warning,
        }
    }
}

/// A service instance (`catalog/node/:n`, `health/service`, `agent/services`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    meta: &'a BTreeMap<String, String>,
    port: u16,
    weights: WeightsJson,
    enable_tag_override: bool,
    datacenter: &'a str,
    create_index: u64,
    modify_index: u64,
}

impl<'a> ServiceJson<'a> {
    /// The instance as Consul shows it, in `datacenter`.
    pub fn new(s: &'a Service, datacenter: &'a str) -> Self {
        ServiceJson {
            id: &s.id,
            service: &s.service,
            tags: &s.tags,
            address: &s.address,
            tagged_addresses: &s.tagged_addresses,
            meta: &s.meta,
            port: s.port,
            weights: s.weights.into(),
            enable_tag_override: s.enable_tag_override,
            datacenter,
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

/// One row of `catalog/service/:name`: node fields and `Service*` fields side by side.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    node_meta: &'a BTreeMap<String, String>,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    service_tagged_addresses: &'a BTreeMap<String, String>,
    service_meta: &'a BTreeMap<String, String>,
    service_port: u16,
    service_weights: WeightsJson,
    service_enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

impl<'a> CatalogServiceJson<'a> {
    /// The row for instance `s` on node `n`.
    pub fn new(n: &'a Node, s: &'a Service) -> Self {
        CatalogServiceJson {
            id: &n.id,
            node: &n.node,
            address: &n.address,
            datacenter: &n.datacenter,
            tagged_addresses: &n.tagged_addresses,
            node_meta: &n.meta,
            service_id: &s.id,
            service_name: &s.service,
            service_tags: &s.tags,
            service_address: &s.address,
            service_tagged_addresses: &s.tagged_addresses,
            service_meta: &s.meta,
            service_port: s.port,
            service_weights: s.weights.into(),
            service_enable_tag_override: s.enable_tag_override,
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

/// A health check (`health/*`, `agent/checks`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'static str,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    kind: &'a str,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a Check> for CheckJson<'a> {
    fn from(c: &'a Check) -> Self {
        CheckJson {
            node: &c.node,
            check_id: &c.check_id,
            name: &c.name,
            status: c.status.as_str(),
            notes: &c.notes,
            output: &c.output,
            service_id: &c.service_id,
            service_name: &c.service_name,
            service_tags: &c.service_tags,
            kind: &c.kind,
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}

/// Consul's `/v1/agent/metrics` JSON: gauges with their value, counters with their count,
/// histograms as samples (count, sum, mean), each with its labels.
pub fn metrics_summary(families: &[prometheus::proto::MetricFamily]) -> serde_json::Value {
    use prometheus::proto::MetricType;
    let (mut gauges, mut counters, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    for f in families {
        for m in f.get_metric() {
            let labels: serde_json::Map<String, serde_json::Value> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().into()))
                .collect();
            match f.get_field_type() {
                MetricType::GAUGE => gauges.push(serde_json::json!({
                    "Name": f.name(), "Value": m.get_gauge().value(), "Labels": labels,
                })),
                MetricType::COUNTER => counters.push(serde_json::json!({
                    "Name": f.name(), "Count": m.get_counter().value(), "Labels": labels,
                })),
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let count = h.get_sample_count();
                    let sum = h.get_sample_sum();
                    samples.push(serde_json::json!({
                        "Name": f.name(), "Count": count, "Sum": sum,
                        "Mean": if count > 0 { sum / count as f64 } else { 0.0 },
                        "Labels": labels,
                    }));
                }
                _ => {}
            }
        }
    }
    let t = time::OffsetDateTime::now_utc();
    let timestamp = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    serde_json::json!({
        "Timestamp": timestamp,
        "Gauges": gauges,
        "Counters": counters,
        "Samples": samples,
        "Points": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Reg {
        #[serde(rename = "serviceid", default)]
        service_id: String,
        #[serde(default)]
        meta: BTreeMap<String, String>,
    }

    #[test]
    fn keys_match_like_consul() {
        for body in [
            r#"{"ServiceID":"a","Meta":{"Env":"x"}}"#,
            r#"{"serviceid":"a","meta":{"Env":"x"}}"#,
            r#"{"service_id":"a","META":{"Env":"x"},"Connect":{"Native":true}}"#,
        ] {
            let r: Reg = decode(&Bytes::from(body)).unwrap();
            assert_eq!(r.service_id, "a", "{body}");
            assert_eq!(r.meta.get("Env").map(String::as_str), Some("x"), "{body}");
        }
        let err = decode::<Reg>(&Bytes::from(r#"{"Colour":1}"#)).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        assert!(decode::<Reg>(&Bytes::from("{nope")).is_err());
        assert!(decode::<Reg>(&Bytes::from("[]")).is_err());
    }
}
