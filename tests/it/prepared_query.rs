//! Prepared queries across three DCs of real processes behind the WAN emulator (dc1-dc2
//! 20 ms, dc1-dc3 80 ms, dc2-dc3 70 ms one way): a `NearestN` query executed in dc1 answers
//! from dc1 while it has a healthy instance, fails over to the nearest DC by network
//! coordinates once none is, past a partitioned DC to the next, and comes home again;
//! the same through DNS and the CLI; templates, `!tag`, `?limit`, and bad definitions.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::wan::{Link, WanEmulator};
use crate::common::*;

const NET: u8 = 74;

fn ip(dc: u8) -> String {
    format!("127.{NET}.{dc}.1")
}

fn base(dc: u8) -> String {
    format!("http://{}:8500", ip(dc))
}

/// Registers `web` on node `node` of `dc` with one check in `status`, tagged `tags`.
async fn web(http: &reqwest::Client, dc: u8, node: &str, status: &str, tags: &[&str]) {
    let body = json!({
        "Node": node, "Address": format!("10.0.{dc}.{}", node.len()),
        "Service": {"ID": node, "Service": "web", "Port": 8080, "Tags": tags},
        "Check": {"CheckID": "alive", "Name": "alive", "ServiceID": node, "Status": status},
    });
    eventually(Duration::from_secs(30), "a registration", || async {
        let r = http
            .put(format!("{}/v1/catalog/register", base(dc)))
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// `GET url` as JSON with its status.
async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    match http.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_fail_over_to_the_nearest_healthy_datacenter_and_come_home() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let front = |dc: u8| format!("127.{NET}.{dc}.100:8300");
    let wan = WanEmulator::new(|addr: IpAddr| match addr {
        IpAddr::V4(v4) => Some(format!("dc{}", v4.octets()[2])),
        _ => None,
    });
    let link = |ms| Link {
        latency: Duration::from_millis(ms),
        jitter: Duration::from_millis(2),
        loss: 0.0,
    };
    wan.set_link("dc1", "dc2", link(20));
    wan.set_link("dc1", "dc3", link(80));
    wan.set_link("dc2", "dc3", link(70));
    for dc in 1..=3 {
        wan.front(
            &format!("dc{dc}"),
            front(dc).parse().unwrap(),
            format!("{}:8300", ip(dc)).parse().unwrap(),
        )
        .await;
    }
    let _agents: Vec<ChildGuard> = (1..=3u8)
        .map(|dc| {
            let join = match dc {
                1 => String::new(),
                _ => format!("wan_join = [\"{}\"]\n", front(1)),
            };
            spawn_agent(&write_agent_config(
                dir.path(),
                &pki,
                ("s1", &format!("dc{dc}"), consulate::vocab::Role::Server),
                &ip(dc),
                &ip(dc),
                &format!(
                    "bootstrap_expect = 1\nadvertise_addr_wan = \"{}\"\n{join}",
                    front(dc)
                ),
            ))
        })
        .collect();
    let http = http_client_bounded();
    for dc in 1..=3u8 {
        web(&http, dc, &format!("web-dc{dc}"), "passing", &[]).await;
    }
    web(&http, 1, "web-canary", "passing", &["canary"]).await;
    eventually(Duration::from_secs(60), "a WAN pool of three", || async {
        let (_, v) = get(&http, &format!("{}/v1/catalog/datacenters", base(1))).await;
        (v.as_array()?.len() == 3).then_some(())
    })
    .await;

    // Bad definitions are 400 with the reason.
    let create = |body: Value| {
        let req = http
            .post(format!("{}/v1/query", base(1)))
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let bad = [
        (
            json!({"Name": "x", "Service": {"Service": "web", "Failover": {"Datacenters": ["dc9"]}}}),
            "Failover datacenter 'dc9' is not known",
        ),
        (
            json!({"Name": "t-", "Template": {"Type": "name_prefix_match", "Regexp": "^t-("}, "Service": {"Service": "x"}}),
            "Bad Regexp",
        ),
        (
            json!({"Name": "x", "Service": {"Service": "web", "Nope": 1}}),
            "unknown field",
        ),
        (
            json!({"Name": "x", "Service": {}}),
            "Must provide a Service name",
        ),
    ];
    for (body, why) in bad {
        let (status, text) = create(body.clone()).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }

    // The query: this DC, else the two nearest by coordinates (dc2, then dc3).
    let (status, text) = create(json!({
        "Name": "web-geo",
        "Service": {"Service": "web", "Tags": ["!canary"], "Failover": {"NearestN": 2}},
        "DNS": {"TTL": "7s"},
    }))
    .await;
    assert_eq!(status, 200, "{text}");
    let execute = |dc: u8| {
        let url = format!("{}/v1/query/web-geo/execute", base(dc));
        let http = http.clone();
        async move { get(&http, &url).await }
    };
    let answered_by = |v: &Value| {
        (
            v["Datacenter"].as_str().unwrap_or_default().to_string(),
            v["Failovers"].as_u64().unwrap_or(99),
            v["Nodes"].as_array().map_or(0, Vec::len),
        )
    };
    let (status, v) = execute(1).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        answered_by(&v),
        ("dc1".into(), 0, 1),
        "the canary is left out: {v}"
    );
    // How long an execution takes (printed for BENCHMARKS.md, not asserted).
    let median_ms = |dc: u8| {
        let execute = &execute;
        async move {
            let mut took = Vec::new();
            for _ in 0..21 {
                let t = std::time::Instant::now();
                execute(dc).await;
                took.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            took.sort_by(f64::total_cmp);
            took[10]
        }
    };
    let local = median_ms(1).await;
    assert_eq!(v["DNS"]["TTL"], "7s");
    assert_eq!(v["Nodes"][0]["Node"]["Node"], "web-dc1");

    // Every dc1 instance critical: the very next execution fails over to dc2, once the
    // coordinates rank dc2 nearest (they converge within seconds).
    web(&http, 1, "web-dc1", "critical", &[]).await;
    let (_, v) = execute(1).await;
    assert!(
        v["Failovers"].as_u64() > Some(0) && !v.to_string().contains("web-dc1"),
        "no stale local answer: {v}"
    );
    eventually(Duration::from_secs(60), "dc1 fails over to dc2", || async {
        let (_, v) = execute(1).await;
        (answered_by(&v) == ("dc2".into(), 1, 1)).then_some(())
    })
    .await;
    let failover = median_ms(1).await;
    // The same link's round trip as QUIC measures it, and a plain `?dc=dc2` read over it.
    let rtt_ms = {
        let text = scrape(&http, &base(1)).await.unwrap();
        sum_samples(
            &text,
            "consulate_transport_peer_rtt_seconds{datacenter=\"dc2\"",
        ) * 1000.0
    };
    let mut remote = Vec::new();
    for _ in 0..21 {
        let t = std::time::Instant::now();
        get(&http, &format!("{}/v1/health/service/web?dc=dc2", base(1))).await;
        remote.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    remote.sort_by(f64::total_cmp);
    eprintln!(
        "prepared query execute, median of 21: answered in dc1 {local:.2} ms, failed over to dc2 {failover:.2} ms; QUIC's RTT to dc2 {rtt_ms:.2} ms, a ?dc=dc2 health read {:.2} ms (emulated round trip 40-44 ms)",
        remote[10]
    );
    // Through DNS, with the query's TTL.
    let dig = |name: &str| {
        let out = std::process::Command::new("dig")
            .args([&format!("@{}", ip(1)), "-p", "8600", "+time=3", "+tries=1"])
            .args(["+noall", "+answer", name])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let answer = dig("web-geo.query.consul");
    assert!(
        answer.contains("10.0.2.") && answer.contains("\t7\t"),
        "{answer}"
    );

    // dc2 cut off from dc1: the next DC in the order answers.
    wan.cut("dc1", "dc2");
    eventually(
        Duration::from_secs(60),
        "dc1 fails over past dc2 to dc3",
        || async {
            let (_, v) = execute(1).await;
            (answered_by(&v) == ("dc3".into(), 2, 1)).then_some(())
        },
    )
    .await;
    let answer = dig("web-geo.query.consul");
    assert!(answer.contains("10.0.3."), "{answer}");
    // The attempt on dc2 failed and was counted before dc3 answered.
    let text = scrape(&http, &base(1)).await.unwrap();
    assert!(
        sum_samples(&text, "consulate_query_failovers_total{outcome=\"error\"}") >= 1.0,
        "{text}"
    );
    // The CLI says the same.
    let out = run_cli(
        dir.path(),
        &[
            "query",
            "execute",
            "-http-addr",
            &format!("{}:8500", ip(1)),
            "web-geo",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("web-dc3")
            && text.contains("Datacenter: dc3 (failovers: 2)"),
        "{out:?}"
    );

    // dc1 healthy again: answered at home.
    wan.heal("dc1", "dc2");
    web(&http, 1, "web-dc1", "passing", &[]).await;
    let (_, v) = execute(1).await;
    assert_eq!(answered_by(&v), ("dc1".into(), 0, 1), "{v}");

    // Beyond Consul: `MinPassing` fails over while fewer instances are selected here. dc1
    // and dc3 have one, dc2 two once a second instance registers there.
    let (status, text) = create(json!({
        "Name": "web-min",
        "Service": {"Service": "web", "Tags": ["!canary"],
                    "Failover": {"NearestN": 2, "MinPassing": 2}},
    }))
    .await;
    assert_eq!(status, 200, "{text}");
    let min = format!("{}/v1/query/web-min/execute", base(1));
    let (_, v) = get(&http, &min).await;
    assert_eq!(
        answered_by(&v),
        ("dc1".into(), 2, 1),
        "too few everywhere: {v}"
    );
    web(&http, 2, "web-dc2b", "passing", &[]).await;
    eventually(
        Duration::from_secs(30),
        "dc2's two instances answer",
        || async {
            let (_, v) = get(&http, &min).await;
            (answered_by(&v) == ("dc2".into(), 1, 2)).then_some(())
        },
    )
    .await;

    // A template: `geo-<service>` selects that service, canaries left out, `?limit`.
    let (status, text) = create(json!({
        "Name": "geo-",
        "Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.*)$"},
        "Service": {"Service": "${match(1)}", "Tags": ["${name.suffix}-x", "!canary"]},
    }))
    .await;
    assert_eq!(status, 200, "{text}");
    let (_, v) = get(&http, &format!("{}/v1/query/geo-web/explain", base(1))).await;
    assert_eq!(v["Query"]["Service"]["Service"], "web", "{v}");
    assert_eq!(v["Query"]["Service"]["Tags"], json!(["web-x", "!canary"]));
    web(&http, 1, "web-x1", "passing", &["web-x"]).await;
    web(&http, 1, "web-x2", "passing", &["web-x"]).await;
    web(&http, 1, "web-x3", "passing", &["web-x", "canary"]).await;
    let (status, v) = get(&http, &format!("{}/v1/query/geo-web/execute", base(1))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(answered_by(&v), ("dc1".into(), 0, 2), "{v}");
    let (_, v) = get(
        &http,
        &format!("{}/v1/query/geo-web/execute?limit=1", base(1)),
    )
    .await;
    assert_eq!(answered_by(&v).2, 1);
    let (status, _) = get(&http, &format!("{}/v1/query/nothing/execute", base(1))).await;
    assert_eq!(status, 404);
    // Listed, read by ID, deleted.
    let (_, list) = get(&http, &format!("{}/v1/query", base(1))).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["Name"] == "web-geo")
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, one) = get(&http, &format!("{}/v1/query/{id}", base(1))).await;
    assert_eq!(
        (status, one[0]["Service"]["Failover"]["NearestN"].clone()),
        (200, json!(2))
    );
    let r = http
        .delete(format!("{}/v1/query/{id}", base(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = get(&http, &format!("{}/v1/query/{id}", base(1))).await;
    assert_eq!(status, 404);
}
