//! Real processes: `?filter=` on every filterable endpoint, one table, asked of dc1's client
//! agent for dc2's data (`?dc=dc2`: the filter travels with the query and is applied by
//! dc2's server) and of dc2's client for its own agent endpoints. Nested selectors, map
//! keys, `matches`, `in`, `is empty`, boolean logic; a parse error and an unknown selector
//! are 400 with the reason.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const NET: u8 = 70;

/// What a listing answered, as sorted names: an array's `field` (or its first level
/// object's keys when `field` is empty; `list[].field`: that field of each item of an
/// object's list).
fn names(v: &Value, field: &str) -> Vec<String> {
    if let Some((list, inner)) = field.split_once("[].") {
        return names(&v[list], inner);
    }
    let mut out: Vec<String> = match v {
        Value::Array(items) => items
            .iter()
            .map(|i| {
                field
                    .split('.')
                    .fold(i, |v, k| &v[k])
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect(),
        Value::Object(map) if field.is_empty() => map.keys().cloned().collect(),
        Value::Object(map) => field
            .split('.')
            .fold(&Value::Object(map.clone()), |v, k| &v[k])
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
        _ => vec![],
    };
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_every_filterable_endpoint_where_the_data_is() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (dc, wan_join) in [(1, None), (2, Some(1))] {
        for config in write_small_dc(dir.path(), &pki, (NET, dc), wan_join, "") {
            agents.push(spawn_agent(&config));
        }
    }
    let http = http_client_bounded();
    let c1 = format!("http://127.{NET}.1.21:8500");
    let c2 = format!("http://127.{NET}.2.21:8500");
    for c in [&c1, &c2] {
        wait_for_leader(&http, c, "").await;
    }
    eventually(Duration::from_secs(30), "dc1 reaches dc2", || async {
        let v = get_json(&http, &format!("{c1}/v1/catalog/nodes?dc=dc2")).await?;
        v.as_array().map(|_| ())
    })
    .await;

    for (node, rack, port, status) in [("n1", "r1", 80, "passing"), ("n2", "r2", 8080, "critical")]
    {
        register_body(
            &http,
            &c2,
            &json!({
                "Node": node, "Address": "10.0.0.1", "NodeMeta": {"rack": rack},
                "Service": {"Service": "web", "ID": "web", "Port": port, "Tags": ["v1"],
                            "Meta": {"env": "prod"}},
                "Check": {"CheckID": "web-health", "Name": "health", "Status": status,
                          "ServiceID": "web"}
            }),
        )
        .await;
    }
    register_body(
        &http,
        &c2,
        &json!({
            "Node": "n2", "Address": "10.0.0.1", "NodeMeta": {"rack": "r2"},
            "Service": {"Service": "api", "ID": "api", "Port": 9000, "Tags": ["v2"]},
            "Check": {"CheckID": "api-health", "Name": "api", "Status": "passing",
                      "ServiceID": "api"}
        }),
    )
    .await;
    let r = http
        .put(format!("{c2}/v1/agent/service/register"))
        .body(
            json!({"Name": "cache", "Port": 6379, "Tags": ["hot"],
                   "Check": {"TTL": "30s", "CheckID": "cache-ttl"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    eventually(
        Duration::from_secs(30),
        "dc2's catalog complete",
        || async {
            let v = get_json(&http, &format!("{c1}/v1/catalog/services?dc=dc2")).await?;
            (v.get("cache").is_some() && v.get("api").is_some()).then_some(())
        },
    )
    .await;

    let dc2 = |path: &str| format!("{c1}{path}?dc=dc2");
    let local = |path: &str| format!("{c2}{path}?");
    #[rustfmt::skip]
    let table: Vec<(String, &str, &str, Vec<&str>)> = vec![
        (dc2("/v1/catalog/nodes"), "Meta.rack == r1", "Node", vec!["n1"]),
        (dc2("/v1/catalog/nodes"), "Node matches \"^n[0-9]$\" and Meta[\"rack\"] is not empty", "Node", vec!["n1", "n2"]),
        (dc2("/v1/catalog/services"), "ServiceTags contains v2 or ServiceName == cache", "", vec!["api", "cache"]),
        (dc2("/v1/catalog/services"), "NodeMeta.rack == r1", "", vec!["web"]),
        (dc2("/v1/catalog/service/web"), "ServiceMeta.env == prod and NodeMeta.rack != r2", "Node", vec!["n1"]),
        (dc2("/v1/catalog/service/web"), "ServicePort == 8080", "Node", vec!["n2"]),
        (dc2("/v1/catalog/node/n2"), "Port == 9000", "Services", vec!["api"]),
        (dc2("/v1/catalog/node-services/n2"), "Service == api or Tags contains nope", "Services[].Service", vec!["api"]),
        (dc2("/v1/catalog/node-services/n2"), "Meta.env is empty", "Services[].Service", vec!["api"]),
        (dc2("/v1/health/service/web"), "Checks.Status == critical", "Node.Node", vec!["n2"]),
        (dc2("/v1/health/service/web"), "Service.Weights.Passing == 1 and not Node.Meta.rack == r2", "Node.Node", vec!["n1"]),
        (dc2("/v1/health/checks/web"), "Status == passing", "Node", vec!["n1"]),
        (dc2("/v1/health/node/n2"), "CheckID matches \"^web\"", "CheckID", vec!["web-health"]),
        (dc2("/v1/health/state/any"), "ServiceName == api", "CheckID", vec!["api-health"]),
        (dc2("/v1/health/state/any"), "\"v1\" in ServiceTags", "Node", vec!["n1", "n2"]),
        (local("/v1/agent/services"), "Tags contains hot and Port == 6379", "", vec!["cache"]),
        (local("/v1/agent/services"), "Service == nope", "", vec![]),
        (local("/v1/agent/checks"), "Status == critical", "", vec!["cache-ttl"]),
    ];
    for (url, filter, field, want) in &table {
        let r = http
            .get(url)
            .query(&[("filter", filter)])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{url} {filter}: {v}");
        assert_eq!(names(&v, field), *want, "{url} filter={filter}: {v}");
    }

    // Refused with the reason, locally and for another DC.
    for (url, filter, reason) in [
        (
            dc2("/v1/catalog/nodes"),
            "Node ==",
            "Failed to parse filter",
        ),
        (
            dc2("/v1/health/service/web"),
            "Nope == 1",
            "Selector \"Nope\" is not valid",
        ),
        (
            dc2("/v1/catalog/service/web"),
            "ServicePort == eighty",
            "not a whole number",
        ),
        (
            local("/v1/agent/services"),
            "Node.Meta.x == 1",
            "is not valid",
        ),
        (
            dc2("/v1/catalog/nodes"),
            "Node matches \"(\"",
            "regular expression",
        ),
    ] {
        let r = http
            .get(&url)
            .query(&[("filter", filter)])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{url} {filter}: {text}");
        assert!(text.contains(reason), "{url} {filter}: {text}");
    }
    drop(agents);
}
