//! Real processes: the agent endpoints tools call, across two DCs (dc2 joins the WAN pool
//! and its second client the LAN pool through `agent/join`): one service's view with
//! its hash and hash blocking, its aggregated health, maintenance mode seen from dc1
//! through `?dc=` and in DNS and kept across a restart, `reload` of a changed and of a
//! broken config file, `monitor`, `version`, `host`, and user events fired in dc1 into
//! dc2 reaching every dc2 agent (filters, the size limit, blocking `event/list`). Then
//! `consulate watch` with a handler fed three KV changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use consulate::vocab::Role;
use serde_json::Value;

const NET: u8 = 69;

fn ip(dc: u8, host: u8) -> String {
    format!("127.{NET}.{dc}.{host}")
}

fn base(dc: u8, host: u8) -> String {
    format!("http://{}:8500", ip(dc, host))
}

async fn put(http: &reqwest::Client, url: &str, body: &str) -> (u16, String) {
    let r = http.put(url).body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = http.get(url).send().await.unwrap();
    let headers = r.headers().clone();
    (r.status().as_u16(), r.text().await.unwrap(), headers)
}

const WEB: &str =
    "log_level = \"info\"\n[[services]]\nname = \"web\"\nport = 80\ntags = [\"v1\"]\n";

/// The health entries of `web` in dc2 as dc1's client sees them (`?dc=dc2`).
async fn web_checks_from_dc1(http: &reqwest::Client) -> Option<Vec<String>> {
    let v = get_json(
        http,
        &format!("{}/v1/health/service/web?dc=dc2", base(1, 21)),
    )
    .await?;
    let entry = v.as_array()?.first()?;
    let mut ids: Vec<String> = entry["Checks"]
        .as_array()?
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["CheckID"].as_str().unwrap_or("?"),
                c["Status"].as_str().unwrap_or("?")
            )
        })
        .collect();
    ids.sort();
    Some(ids)
}

async fn events_on(http: &reqwest::Client, agent: &str) -> Vec<Value> {
    get_json(http, &format!("{agent}/v1/event/list"))
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn has_event(events: &[Value], id: &str) -> bool {
    events.iter().any(|e| e["ID"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_endpoints_maintenance_reload_monitor_and_events_across_dcs() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let dc1 = write_small_dc(dir.path(), &pki, (NET, 1), None, "");
    let dc2 = write_small_dc(dir.path(), &pki, (NET, 2), None, WEB);
    let c1_dc2: PathBuf = dc2[1].clone();
    // dc2's second client is pointed at nothing: it joins through agent/join.
    let c2_dc2 = write_agent_config(
        dir.path(),
        &pki,
        ("c2", "dc2", Role::Client),
        &ip(2, 22),
        &ip(2, 99),
        "",
    );
    let mut agents: Vec<ChildGuard> = dc1.iter().chain(&dc2).map(|c| spawn_agent(c)).collect();
    agents.push(spawn_agent(&c2_dc2));
    let http = http_client_bounded();
    let (c1, c2, c3) = (base(1, 21), base(2, 21), base(2, 22));
    wait_for_leader(&http, &c1, "").await;
    wait_for_leader(&http, &c2, "").await;

    // version and host need no cluster.
    let (code, body, _) = get(&http, &format!("{c1}/v1/agent/version")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, v["HumanVersion"].as_str()),
        (200, Some(env!("CARGO_PKG_VERSION")))
    );
    let host = get_json(&http, &format!("{c1}/v1/agent/host"))
        .await
        .unwrap();
    assert!(host["Memory"]["total"].as_u64().unwrap() > 0, "{host}");
    assert!(!host["CPU"].as_array().unwrap().is_empty(), "{host}");
    assert!(
        !host["Host"]["hostname"].as_str().unwrap().is_empty(),
        "{host}"
    );
    assert_eq!(host["Host"]["os"], "linux");

    // Join: dc2's server joins the WAN pool, dc2's second client the LAN pool.
    let (code, body) = put(&http, &format!("{c3}/v1/agent/join/not-an-ip"), "").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = put(&http, &format!("{c3}/v1/agent/join/{}", ip(2, 98)), "").await;
    assert_eq!(code, 500, "nothing answers there: {body}");
    assert!(body.contains("Failed to join"), "{body}");
    let (code, body) = put(&http, &format!("{c3}/v1/agent/join/{}?wan=1", ip(2, 1)), "").await;
    assert_eq!(code, 400, "a client joins no WAN pool: {body}");
    let (code, body) = put(&http, &format!("{c3}/v1/agent/join/{}", ip(2, 1)), "").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = put(
        &http,
        &format!("{}/v1/agent/join/{}?wan=1", base(2, 1), ip(1, 1)),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    eventually(Duration::from_secs(30), "dc1 reaches dc2", || async {
        let v = get_json(&http, &format!("{c1}/v1/catalog/nodes?dc=dc2")).await?;
        (v.as_array()?.len() == 3).then_some(())
    })
    .await;

    // The config file's service, with its hash; hash blocking wakes on a reload.
    let (code, body, headers) = get(&http, &format!("{c2}/v1/agent/service/web")).await;
    assert_eq!(code, 200, "{body}");
    let svc: Value = serde_json::from_str(&body).unwrap();
    let hash = svc["ContentHash"].as_str().unwrap().to_string();
    assert_eq!(headers["X-Consul-ContentHash"].to_str().unwrap(), hash);
    assert_eq!(
        (svc["Port"].as_u64(), svc["Tags"][0].as_str()),
        (Some(80), Some("v1"))
    );
    let (code, body, _) = get(&http, &format!("{c2}/v1/agent/service/nope")).await;
    assert_eq!((code, body.as_str()), (404, "unknown service ID: nope"));
    let blocked = {
        let http = http.clone();
        let url = format!("{c2}/v1/agent/service/web?hash={hash}&wait=15s");
        tokio::spawn(async move { get(&http, &url).await })
    };

    // Monitor: a reload's log line reaches a monitor at info.
    let streaming = http_client();
    let (code, _, _) = get(&http, &format!("{c2}/v1/agent/monitor?loglevel=chatty")).await;
    assert_eq!(code, 400);
    let mut monitor = streaming
        .get(format!("{c2}/v1/agent/monitor?loglevel=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(monitor.status(), 200);

    let text = std::fs::read_to_string(&c1_dc2).unwrap();
    std::fs::write(&c1_dc2, text.replace("port = 80", "port = 81")).unwrap();
    let (code, body) = put(&http, &format!("{c2}/v1/agent/reload"), "").await;
    assert_eq!(code, 200, "{body}");
    let (code, body, headers) = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("the blocked agent/service returns on the change")
        .unwrap();
    let svc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, svc["Port"].as_u64()), (200, Some(81)), "{body}");
    assert_ne!(headers["X-Consul-ContentHash"].to_str().unwrap(), hash);

    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("config reloaded") {
        let chunk = tokio::time::timeout_at(deadline, monitor.chunk())
            .await
            .expect("the monitor streams the reload's line")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("[INFO]"), "{seen}");
    drop(monitor);

    // A broken file and a definition that does not register are refused; nothing changes.
    let good = std::fs::read_to_string(&c1_dc2).unwrap();
    std::fs::write(&c1_dc2, format!("{good}\nthis is not toml")).unwrap();
    let (code, body) = put(&http, &format!("{c2}/v1/agent/reload"), "").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("Failed to reload configs"), "{body}");
    let bad_check = good.replace(
        "tags = [\"v1\"]\n",
        "tags = [\"v1\"]\n[[services.checks]]\nhttp = \"http://127.0.0.1:1/\"\n",
    );
    std::fs::write(&c1_dc2, bad_check).unwrap();
    let (code, body) = put(&http, &format!("{c2}/v1/agent/reload"), "").await;
    assert_eq!(code, 500, "an HTTP check without an interval: {body}");
    std::fs::write(&c1_dc2, &good).unwrap();
    let svc = get_json(&http, &format!("{c2}/v1/agent/service/web"))
        .await
        .unwrap();
    assert_eq!(svc["Port"], 81, "the running agent kept its services");

    // Aggregated health: no checks is passing.
    let (code, body, _) = get(
        &http,
        &format!("{c2}/v1/agent/health/service/id/web?format=text"),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "passing"));
    let (code, body, _) = get(&http, &format!("{c2}/v1/agent/health/service/name/web")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, v[0]["AggregatedStatus"].as_str()),
        (200, Some("passing")),
        "{body}"
    );
    let (code, body, _) = get(
        &http,
        &format!("{c2}/v1/agent/health/service/id/nope?format=text"),
    )
    .await;
    assert_eq!((code, body.as_str()), (404, "ServiceId nope not found"));
    let (code, _, _) = get(&http, &format!("{c2}/v1/agent/health/service/name/nope")).await;
    assert_eq!(code, 404);
    eventually(Duration::from_secs(30), "web in dc2's DNS", || async {
        (dig_a(&ip(1, 21), "web.service.dc2.consul") == [ip(2, 21)]).then_some(())
    })
    .await;

    // Service maintenance: 503 here, critical from dc1, gone from DNS.
    let (code, body) = put(&http, &format!("{c2}/v1/agent/service/maintenance/web"), "").await;
    assert_eq!((code, body.as_str()), (400, "Missing value for enable"));
    let (code, _) = put(
        &http,
        &format!("{c2}/v1/agent/service/maintenance/nope?enable=true"),
        "",
    )
    .await;
    assert_eq!(code, 404);
    let (code, body) = put(
        &http,
        &format!("{c2}/v1/agent/service/maintenance/web?enable=true&reason=upgrading"),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = get(
        &http,
        &format!("{c2}/v1/agent/health/service/id/web?format=text"),
    )
    .await;
    assert_eq!((code, body.as_str()), (503, "critical"));
    eventually(
        Duration::from_secs(30),
        "maintenance seen from dc1",
        || async {
            let checks = web_checks_from_dc1(&http).await?;
            checks
                .contains(&"_service_maintenance:web=critical".to_string())
                .then_some(())
        },
    )
    .await;
    let v = get_json(&http, &format!("{c1}/v1/health/service/web?dc=dc2"))
        .await
        .unwrap();
    let notes: Vec<&str> = v[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["Notes"].as_str())
        .collect();
    assert!(notes.contains(&"upgrading"), "{v}");
    let passing = get_json(&http, &format!("{c1}/v1/health/service/web?dc=dc2&passing"))
        .await
        .unwrap();
    assert_eq!(
        passing,
        Value::Array(vec![]),
        "an instance in maintenance is not passing"
    );
    eventually(Duration::from_secs(30), "web leaves dc2's DNS", || async {
        dig_a(&ip(1, 21), "web.service.dc2.consul")
            .is_empty()
            .then_some(())
    })
    .await;

    // Kept across a restart of the agent.
    let c1_index = 3; // dc1 s1, dc1 c1, dc2 s1, dc2 c1
    agents[c1_index].signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    agents[c1_index] = spawn_agent(&c1_dc2);
    eventually(
        Duration::from_secs(30),
        "the restarted agent keeps maintenance",
        || async {
            let checks = get_json(&http, &format!("{c2}/v1/agent/checks")).await?;
            (checks["_service_maintenance:web"]["Status"] == "critical").then_some(())
        },
    )
    .await;
    let (code, _) = put(
        &http,
        &format!("{c2}/v1/agent/service/maintenance/web?enable=false"),
        "",
    )
    .await;
    assert_eq!(code, 200);

    // Node maintenance takes every service of the node down, then back.
    let (code, _) = put(&http, &format!("{c2}/v1/agent/maintenance?enable=true"), "").await;
    assert_eq!(code, 200);
    let (code, _, _) = get(&http, &format!("{c2}/v1/agent/health/service/id/web")).await;
    assert_eq!(code, 503);
    eventually(
        Duration::from_secs(30),
        "node maintenance seen from dc1",
        || async {
            let checks = web_checks_from_dc1(&http).await?;
            (checks.contains(&"_node_maintenance=critical".to_string())
                && !checks.iter().any(|c| c.starts_with("_service_maintenance")))
            .then_some(())
        },
    )
    .await;
    let (code, _) = put(
        &http,
        &format!("{c2}/v1/agent/maintenance?enable=false"),
        "",
    )
    .await;
    assert_eq!(code, 200);
    eventually(Duration::from_secs(30), "web back in dc2's DNS", || async {
        (dig_a(&ip(1, 21), "web.service.dc2.consul") == [ip(2, 21)]).then_some(())
    })
    .await;

    // Events: fired through dc1 into dc2, they reach every dc2 agent and no dc1 agent.
    let oversized = "x".repeat(513 - "deploy".len());
    let (code, body) = put(
        &http,
        &format!("{c1}/v1/event/fire/deploy?dc=dc2"),
        &oversized,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("512 bytes"), "{body}");
    let (code, body) = put(&http, &format!("{c1}/v1/event/fire/deploy?dc=dc2"), "v42").await;
    assert_eq!(code, 200, "{body}");
    let fired: Value = serde_json::from_str(&body).unwrap();
    let id = fired["ID"].as_str().unwrap().to_string();
    let dc2_agents = [base(2, 1), c2.clone(), c3.clone()];
    for agent in &dc2_agents {
        let events = eventually(Duration::from_secs(20), "the event reaches dc2", || async {
            let events = events_on(&http, agent).await;
            has_event(&events, &id).then_some(events)
        })
        .await;
        let e = events.iter().find(|e| e["ID"] == id.as_str()).unwrap();
        assert_eq!(
            (e["Name"].as_str(), e["Payload"].as_str()),
            (Some("deploy"), Some("djQy"))
        );
        assert_eq!(e["Version"], 1);
        assert!(e["LTime"].as_u64().unwrap() > 0);
    }
    for agent in [base(1, 1), c1.clone()] {
        assert!(
            !has_event(&events_on(&http, &agent).await, &id),
            "{agent} is in dc1"
        );
    }

    // A filtered event is kept only by the agent with the service; blocking list wakes.
    let (_, _, headers) = get(&http, &format!("{c3}/v1/event/list")).await;
    let index: u64 = headers["X-Consul-Index"].to_str().unwrap().parse().unwrap();
    let blocked = {
        let http = http.clone();
        let url = format!("{c3}/v1/event/list?index={index}&wait=15s");
        tokio::spawn(async move { get(&http, &url).await })
    };
    let (code, body) = put(
        &http,
        &format!("{c2}/v1/event/fire/restart?service=^web$&tag=v1"),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let filtered: Value = serde_json::from_str(&body).unwrap();
    let (code, body) = put(&http, &format!("{c2}/v1/event/fire/ping"), "").await;
    assert_eq!(code, 200, "{body}");
    let ping: Value = serde_json::from_str(&body).unwrap();
    let (code, _, headers) = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("the blocked event/list returns on a new event")
        .unwrap();
    assert_eq!(code, 200);
    assert_ne!(
        headers["X-Consul-Index"].to_str().unwrap(),
        index.to_string()
    );
    for agent in &dc2_agents {
        let events = eventually(
            Duration::from_secs(20),
            "the later event arrives",
            || async {
                let events = events_on(&http, agent).await;
                has_event(&events, ping["ID"].as_str()?).then_some(events)
            },
        )
        .await;
        let kept = has_event(&events, filtered["ID"].as_str().unwrap());
        assert_eq!(
            kept,
            *agent == c2,
            "{agent}: only the agent with web keeps it"
        );
    }
    let named = get_json(&http, &format!("{c2}/v1/event/list?name=ping"))
        .await
        .unwrap();
    assert!(
        named
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["Name"] == "ping"),
        "{named}"
    );
}

fn append_handler(out: &Path) -> String {
    format!("cat >> {}", out.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_runs_its_handler_at_start_and_on_every_change_only() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let dc = write_small_dc(dir.path(), &pki, (NET, 3), None, "");
    let _agents: Vec<ChildGuard> = dc.iter().map(|c| spawn_agent(c)).collect();
    let http = http_client_bounded();
    let c = base(3, 21);
    wait_for_leader(&http, &c, "").await;
    let out = dir.path().join("handled.jsonl");
    let mut watch = ChildGuard(
        Some(
            Command::new(consulate_bin())
                .args([
                    "watch",
                    "-http-addr",
                    &c,
                    "-type",
                    "key",
                    "-key",
                    "app/config",
                ])
                .arg(append_handler(&out))
                .spawn()
                .unwrap(),
        ),
        None,
    );
    let runs = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    eventually(
        Duration::from_secs(20),
        "the handler runs at start",
        || async { (runs() == [Value::Null]).then_some(()) },
    )
    .await;
    for (i, value) in ["one", "two", "three"].into_iter().enumerate() {
        if i == 2 {
            // Another key's write wakes the watch with the same result: no run.
            let (code, _) = put(&http, &format!("{c}/v1/kv/app/other"), "x").await;
            assert_eq!(code, 200);
        }
        let (code, _) = put(&http, &format!("{c}/v1/kv/app/config"), value).await;
        assert_eq!(code, 200);
        eventually(
            Duration::from_secs(20),
            "the handler runs on the change",
            || async {
                let r = runs();
                (r.len() == i + 2).then_some(())
            },
        )
        .await;
        let r = runs();
        assert_eq!(r[i + 1]["Key"], "app/config");
        assert_eq!(r[i + 1]["Value"].as_str(), Some(base64_of(value).as_str()));
    }
    let status = watch.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "watch exits cleanly on SIGTERM: {status}");
    assert_eq!(
        runs().len(),
        4,
        "one run at start and one per change, none more"
    );

    // `consulate event` fires one; the agent lists it with its payload.
    let out = Command::new(consulate_bin())
        .args(["event", "-http-addr", &c, "-name", "deploy", "v9"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = text
        .trim()
        .strip_prefix("Event ID: ")
        .expect("Consul's output")
        .to_string();
    let events = eventually(Duration::from_secs(20), "the event listed", || async {
        let events = events_on(&http, &c).await;
        has_event(&events, &id).then_some(events)
    })
    .await;
    assert_eq!(events[0]["Payload"], base64_of("v9"));
}
