//! Metrics and discovery with the real tools operators point at us: two DCs of real agent
//! processes (one server and one client agent each), a real Prometheus (Debian's package)
//! scraping every agent, and VictoriaMetrics (Debian's package) discovering dc2's services
//! through a dc1 agent with `consul_sd_configs`. Also Prometheus 2.42's discovery requests
//! replayed exactly, and the label hygiene of the HTTP metrics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn ip(dc: u8, host: u8) -> String {
    format!("127.81.{dc}.{host}")
}

fn base(dc: u8, host: u8) -> String {
    format!("http://{}:8500", ip(dc, host))
}

/// DC `dc`: server `s1` on .1 (dc1 and dc2 join each other over the WAN) and client `c1`
/// on .21.
fn write_dc(dir: &Path, pki: &TestPki, dc: u8) -> Vec<PathBuf> {
    let wan_join = match dc {
        1 => Some(2),
        2 => Some(1),
        _ => None,
    };
    write_small_dc(dir, pki, (81, dc), wan_join, "sync_interval = \"1s\"\n")
}

/// VictoriaMetrics as `.ci/run` unpacks it (Debian 13's: Debian 12's lacks `filter` in
/// `consul_sd_configs`).
const VICTORIA_METRICS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/victoria-metrics");

/// Runs a tool (Prometheus, VictoriaMetrics) until dropped, its output in `log`.
fn spawn_tool(program: &str, args: &[String], log: &Path) -> ChildGuard {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} must be installed (.ci/run does it): {e}"));
    ChildGuard(Some(child), Some(log.to_path_buf()))
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u64, Value)> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        eprintln!(
            "GET {url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        return None;
    }
    let index = r
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    Some((index, r.json().await.ok()?))
}

/// Registers `service` on `node` through `agent`, at its own port (a scraper drops targets
/// with identical addresses).
async fn register(
    http: &reqwest::Client,
    agent: &str,
    (node, port): (&str, u16),
    service: &str,
    status: &str,
) {
    catalog_register(
        http,
        agent,
        (node, "127.81.2.90"),
        (service, port, &["metrics"]),
        status,
    )
    .await;
}

/// The number of `consulate_http_requests_total` series an agent exposes.
async fn http_series(http: &reqwest::Client, agent: &str) -> usize {
    let text = scrape(http, agent).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("consulate_http_requests_total{"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_victoria_metrics_discovers_across_dcs() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for dc in [1, 2] {
        for cfg in write_dc(dir.path(), &pki, dc) {
            agents.push(spawn_agent(&cfg));
        }
    }
    let http = http_client();
    let (c1, c2) = (base(1, 21), base(2, 21));
    for c in [&c1, &c2] {
        wait_for_leader(&http, c, "").await;
    }
    eventually(Duration::from_secs(30), "dc1 knows dc2", || async {
        let (_, v) = get(&http, &format!("{c1}/v1/catalog/datacenters")).await?;
        (v == json!(["dc1", "dc2"])).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "dc2's server alive in dc1's WAN view",
        || async {
            let (_, v) = get(&http, &format!("{}/v1/agent/members?wan=1", base(1, 1))).await?;
            v.as_array()?
                .iter()
                .any(|m| m["Name"] == "s1.dc2" && m["Status"] == 1)
                .then_some(())
        },
    )
    .await;
    register(&http, &c2, ("ext-1", 9101), "web", "passing").await;
    register(&http, &c2, ("ext-2", 9102), "web", "critical").await;

    // Prometheus 2.42's Consul discovery, request for request (`stale=`, `wait=120000ms`,
    // then blocking on `index=`), asked of a dc1 agent for dc2.
    let (index, services) = get(
        &http,
        &format!("{c1}/v1/catalog/services?dc=dc2&stale=&wait=120000ms"),
    )
    .await
    .expect("catalog/services");
    assert!(index > 0, "X-Consul-Index must be present and non-zero");
    assert_eq!(services["web"], json!(["metrics"]));
    let (hindex, instances) = get(
        &http,
        &format!("{c1}/v1/health/service/web?dc=dc2&stale=&wait=120000ms"),
    )
    .await
    .expect("health/service");
    assert!(hindex > 0);
    assert_eq!(instances.as_array().unwrap().len(), 2);
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["Node"]["Datacenter"] == "dc2" && i["Checks"].as_array().is_some())
    );
    let watch = {
        let (http, url) = (
            http.clone(),
            format!("{c1}/v1/catalog/services?dc=dc2&stale=&wait=120000ms&index={index}"),
        );
        tokio::spawn(async move { get(&http, &url).await })
    };
    register(&http, &c2, ("ext-1", 9103), "api", "passing").await;
    let (woke_at, services) = tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("the blocking discovery query returns on a change")
        .unwrap()
        .unwrap();
    assert!(woke_at > index && services.get("api").is_some());

    // Prometheus 2.42 with `filter` in its consul_sd_config sends it with both discovery
    // calls (Go sorts the parameters); dc2's server applies it.
    let replay = |path: &str, filter: &str| {
        reqwest::Url::parse_with_params(
            &format!("{c1}{path}"),
            &[
                ("dc", "dc2"),
                ("filter", filter),
                ("stale", ""),
                ("wait", "120000ms"),
            ],
        )
        .unwrap()
        .to_string()
    };
    let (_, services) = get(
        &http,
        &replay(
            "/v1/catalog/services",
            "\"metrics\" in ServiceTags and ServicePort != 9103",
        ),
    )
    .await
    .expect("filtered catalog/services");
    assert_eq!(services, json!({"web": ["metrics"]}));
    let (_, instances) = get(
        &http,
        &replay("/v1/health/service/web", "Service.Port == 9101"),
    )
    .await
    .expect("filtered health/service");
    let ports: Vec<&Value> = instances
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["Service"]["Port"])
        .collect();
    assert_eq!(ports, [&json!(9101)]);

    // A real Prometheus scraping every agent.
    let targets: Vec<String> = [(1, 1), (1, 21), (2, 1), (2, 21)]
        .iter()
        .map(|(dc, h)| format!("\"{}:8500\"", ip(*dc, *h)))
        .collect();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: consulate\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let prom = "http://127.81.0.1:9090";
    let _prometheus = spawn_tool(
        "prometheus",
        &[
            format!("--config.file={}", prom_cfg.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom-data").display()
            ),
            "--web.listen-address=127.81.0.1:9090".into(),
        ],
        &dir.path().join("prometheus.log"),
    );
    eventually(
        Duration::from_secs(60),
        "every agent up in Prometheus",
        || async {
            let (_, v) = get(&http, &format!("{prom}/api/v1/targets")).await?;
            let active = v["data"]["activeTargets"].as_array()?;
            (active.len() == 4 && active.iter().all(|t| t["health"] == "up")).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the cross-DC counter in Prometheus",
        || async {
            let q = "consulate_rpc_cross_dc_total%7Bdatacenter%3D%22dc2%22%7D";
            let (_, v) = get(&http, &format!("{prom}/api/v1/query?query={q}")).await?;
            let result = v["data"]["result"].as_array()?;
            (!result.is_empty()).then_some(())
        },
    )
    .await;

    // Per-peer RTT, servers only: dc1's server knows its RTT to dc2's.
    eventually(
        Duration::from_secs(30),
        "dc1's server RTT to dc2's",
        || async {
            let text = scrape(&http, &base(1, 1)).await?;
            text.lines()
                .any(|l| {
                    l.starts_with("consulate_transport_peer_rtt_seconds{")
                        && l.contains("server=\"s1.dc2\"")
                })
                .then_some(())
        },
    )
    .await;

    // The shipped dashboard's queries run in Prometheus; one leader per DC.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/federation.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let query = |expr: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("{prom}/api/v1/query"))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["status"], "success", "{expr}: {v}");
            v["data"]["result"].as_array().unwrap().clone()
        }
    };
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            query(target["expr"].as_str().unwrap().to_string()).await;
        }
    }
    let leaders = dashboard["panels"][0]["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        Duration::from_secs(30),
        "one leader per DC on the dashboard",
        || {
            let (leaders, query) = (leaders.clone(), &query);
            async move {
                let mut per_dc: Vec<(String, String)> = query(leaders)
                    .await
                    .iter()
                    .map(|s| {
                        (
                            s["metric"]["datacenter"].as_str().unwrap_or("").to_string(),
                            s["value"][1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                per_dc.sort();
                let want = [
                    ("dc1".to_string(), "1".to_string()),
                    ("dc2".into(), "1".into()),
                ];
                (per_dc == want).then_some(())
            }
        },
    )
    .await;

    // VictoriaMetrics discovering dc2's services through a dc1 agent: every service, and
    // (`filter`, which VictoriaMetrics sends to catalog/services) only those with an
    // instance on port 9103.
    let vm_cfg = dir.path().join("vm.yml");
    let job = |name: &str, filter: &str| {
        format!(
            "  - job_name: {name}\n    scrape_interval: 1s\n    consul_sd_configs:\n      - server: \"{}:8500\"\n        datacenter: dc2\n{filter}",
            ip(1, 21)
        )
    };
    std::fs::write(
        &vm_cfg,
        format!(
            "scrape_configs:\n{}{}",
            job("consul", ""),
            job(
                "filtered",
                "        filter: 'ServicePort == 9103 and \"metrics\" in ServiceTags'\n"
            )
        ),
    )
    .unwrap();
    let vm = "http://127.81.0.2:8428";
    let _victoria = spawn_tool(
        VICTORIA_METRICS,
        &[
            format!("-promscrape.config={}", vm_cfg.display()),
            format!("-storageDataPath={}", dir.path().join("vm-data").display()),
            "-httpListenAddr=127.81.0.2:8428".into(),
            "-promscrape.consulSDCheckInterval=1s".into(),
        ],
        &dir.path().join("victoria-metrics.log"),
    );
    let discovered = |want: usize| {
        let http = http.clone();
        async move {
            let (_, v) = get(&http, &format!("{vm}/api/v1/targets")).await?;
            let web: Vec<Value> = v["data"]["activeTargets"]
                .as_array()?
                .iter()
                .filter(|t| t["labels"]["job"] == "consul")
                .filter(|t| t["discoveredLabels"]["__meta_consul_service"] == "web")
                .cloned()
                .collect();
            (web.len() == want).then_some(web)
        }
    };
    let web = eventually(
        Duration::from_secs(60),
        "dc2's web instances discovered through dc1",
        || discovered(2),
    )
    .await;
    for t in &web {
        let l = &t["discoveredLabels"];
        assert_eq!(l["__meta_consul_dc"], "dc2", "{l}");
        assert!(
            l["__meta_consul_health"] == "passing" || l["__meta_consul_health"] == "critical",
            "{l}"
        );
    }
    let filtered = eventually(
        Duration::from_secs(60),
        "the filtered job discovers api only",
        || async {
            let (_, v) = get(&http, &format!("{vm}/api/v1/targets")).await?;
            let services: Vec<String> = v["data"]["activeTargets"]
                .as_array()?
                .iter()
                .filter(|t| t["labels"]["job"] == "filtered")
                .map(|t| {
                    t["discoveredLabels"]["__meta_consul_service"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string()
                })
                .collect();
            (!services.is_empty()).then_some(services)
        },
    )
    .await;
    assert_eq!(
        filtered,
        ["api"],
        "dc2's server applied VictoriaMetrics' filter"
    );
    register(&http, &c2, ("ext-3", 9104), "web", "passing").await;
    eventually(
        Duration::from_secs(60),
        "a new dc2 instance discovered without a restart",
        || discovered(3),
    )
    .await;
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_and_scrapes_add_no_label_values() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_dc(dir.path(), &pki, 3);
    let _server = spawn_agent(&cfg[0]);
    let http = http_client();
    let agent = base(3, 1);
    wait_for_leader(&http, &agent, "").await;
    let path = |i: usize| match i % 4 {
        0 => format!("/random-{i}"),
        1 => format!("/v1/kv/key-{i}"),
        2 => format!("/v1/catalog/nodes?dc=dc-{i}&filter={i}"),
        _ => format!("/v1/agent/nope/{i}"),
    };
    // One of each kind first (and a scrape, which counts itself after it answered), so
    // that the series they make exist before counting.
    for i in 0..4 {
        http.get(format!("{agent}{}", path(i)))
            .send()
            .await
            .unwrap();
    }
    http_series(&http, &agent).await;
    let before = http_series(&http, &agent).await;
    for i in 4..204 {
        http.get(format!("{agent}{}", path(i)))
            .send()
            .await
            .unwrap();
    }
    let after = http_series(&http, &agent).await;
    assert_eq!(
        after, before,
        "200 distinct requests of the same kinds grew the HTTP series"
    );
    let text = scrape(&http, &agent).await.unwrap();
    assert!(!text.contains("random-") && !text.contains("key-1") && !text.contains("dc-"));
    assert!(
        text.contains("route=\"/v1/kv/{*key}\""),
        "route templates, not paths"
    );

    // Consul's /v1/agent/metrics: JSON by default, the same text with ?format=prometheus.
    let (_, summary) = get(&http, &format!("{agent}/v1/agent/metrics"))
        .await
        .unwrap();
    let gauges = summary["Gauges"].as_array().unwrap();
    assert!(
        gauges
            .iter()
            .any(|g| g["Name"] == "consulate_raft_state" && g["Labels"]["state"] == "leader")
    );
    assert!(summary["Counters"].as_array().is_some() && summary["Timestamp"].is_string());
    let text = http
        .get(format!("{agent}/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# HELP consulate_raft_term ") && text.contains("process_cpu_seconds_total")
    );
}
