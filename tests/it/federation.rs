//! WAN federation with real processes: three DCs of three servers and a client agent each,
//! their servers reaching each other only through the harness's WAN emulator (20-80 ms
//! one-way, jitter, 1% loss on one link). Queries with `?dc=` given to a client agent are
//! forwarded by a local server to the remote DC and answered there; the test kills servers
//! in both DCs, partitions a DC away and heals it, and checks what users see each time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::wan::{Link, WanEmulator};
use crate::common::*;
use consulate::gossip::Gossip;
use consulate::gossip::quic::QuicGossip;
use consulate::gossip::wan::{self, WanConfig};
use consulate::metrics::Metrics;
use consulate::transport::{Transport, TransportOptions};
use consulate::vocab::Role;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// DC name and the third octet of its agents' addresses (127.80.<net>.x).
const DCS: [(&str, u8); 3] = [("dc1", 41), ("dc2", 42), ("dc3", 43)];

fn ip(net: u8, host: u8) -> String {
    format!("127.80.{net}.{host}")
}

fn net_of(dc: &str) -> u8 {
    DCS.iter().find(|(d, _)| *d == dc).unwrap().1
}

/// Server `i` (1-3) of `dc`'s HTTP base URL.
fn server(dc: &str, i: u8) -> String {
    format!("http://{}:8500", ip(net_of(dc), i))
}

/// The client agent of `dc`.
fn client(dc: &str) -> String {
    format!("http://{}:8500", ip(net_of(dc), 21))
}

/// The address other DCs reach server `i` of `dc` at: its WAN emulator front.
fn front(dc: &str, i: u8) -> SocketAddr {
    format!("{}:8300", ip(net_of(dc), 100 + i)).parse().unwrap()
}

struct Fed {
    dir: tempfile::TempDir,
    agents: HashMap<String, ChildGuard>,
}

impl Fed {
    fn kill(&mut self, name: &str) {
        let mut agent = self.agents.remove(name).expect("running agent");
        agent.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    }
}

/// Writes and starts every agent: servers `s1`-`s3` (only `s1` has `wan_join`, the first
/// server of each other DC; the others join the WAN pool by flood-join) and client `c1`.
fn start_federation(pki: &TestPki) -> Fed {
    let dir = tempfile::tempdir().unwrap();
    let mut agents = HashMap::new();
    for (dc, net) in DCS {
        let servers: Vec<String> = (1..=3).map(|i| format!("\"{}\"", ip(net, i))).collect();
        let write = |node: &str, role: Role, host: u8, extra: String| -> PathBuf {
            let tls = pki.write_files(dir.path(), role, dc, &format!("{node}.{dc}"));
            let text = format!(
                "node_name = \"{node}\"\ndatacenter = \"{dc}\"\nrole = \"{role}\"\ndata_dir = \"{node}.{dc}-data\"\nbind_addr = \"{}\"\nlan_join = [{}]\n{extra}[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                ip(net, host),
                servers.join(", "),
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display()
            );
            let path = dir.path().join(format!("{node}.{dc}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        };
        for i in 1..=3u8 {
            let mut extra = format!(
                "bootstrap_expect = 3\nadvertise_addr_wan = \"{}\"\nsync_coordinate_interval_min = \"1s\"\n",
                front(dc, i)
            );
            if i == 1 {
                let seeds: Vec<String> = DCS
                    .iter()
                    .filter(|(d, _)| *d != dc)
                    .map(|(d, _)| format!("\"{}\"", front(d, 1)))
                    .collect();
                extra.push_str(&format!("wan_join = [{}]\n", seeds.join(", ")));
            }
            let path = write(&format!("s{i}"), Role::Server, i, extra);
            agents.insert(format!("s{i}.{dc}"), spawn_agent(&path));
        }
        let path = write(
            "c1",
            Role::Client,
            21,
            "sync_interval = \"1s\"\nsync_coordinate_interval_min = \"1s\"\n".into(),
        );
        agents.insert(format!("c1.{dc}"), spawn_agent(&path));
    }
    Fed { dir, agents }
}

async fn emulate_wan() -> WanEmulator {
    let wan = WanEmulator::new(|ip: IpAddr| {
        let IpAddr::V4(v4) = ip else { return None };
        let net = v4.octets()[2];
        DCS.iter()
            .find(|(_, n)| *n == net)
            .map(|(d, _)| d.to_string())
    });
    let ms = Duration::from_millis;
    let link = |latency, loss| Link {
        latency: ms(latency),
        jitter: ms(5),
        loss,
    };
    wan.set_link("dc1", "dc2", link(20, 0.01));
    wan.set_link("dc2", "dc3", link(40, 0.0));
    wan.set_link("dc1", "dc3", link(80, 0.0));
    for (dc, net) in DCS {
        for i in 1..=3u8 {
            let real: SocketAddr = format!("{}:8300", ip(net, i)).parse().unwrap();
            wan.front(dc, front(dc, i), real).await;
        }
    }
    wan
}

struct Http(reqwest::Client);

impl Http {
    /// Status, body and `X-Consul-Index` of a GET.
    async fn get(&self, url: &str) -> (u16, String, u64) {
        match self.0.get(url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let index = r
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                (status, r.text().await.unwrap_or_default(), index)
            }
            Err(e) => (0, e.to_string(), 0),
        }
    }

    async fn json(&self, url: &str) -> Option<Value> {
        let (status, body, _) = self.get(url).await;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    async fn put(&self, url: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = self.0.put(url).body(body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Polls `url` until its JSON satisfies `ok`.
    async fn until(&self, url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(60), what, || async {
            self.json(url).await.filter(|v| ok(v))
        })
        .await
    }

    /// The WAN members a server lists, by name, with their status codes.
    async fn wan_members(&self, base: &str) -> HashMap<String, u64> {
        self.json(&format!("{base}/v1/agent/members?wan=1"))
            .await
            .and_then(|v| {
                v.as_array()?
                    .iter()
                    .map(|m| Some((m["Name"].as_str()?.to_string(), m["Status"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_over_an_emulated_wan() {
    let pki = TestPki::new();
    let wan = emulate_wan().await;
    let started = Instant::now();
    let mut fed = start_federation(&pki);
    let http = Http(
        http_client_builder()
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap(),
    );

    // Every server of every DC joins one WAN pool: two of three per DC by flood-join.
    for (dc, _) in DCS {
        let base = server(dc, 2);
        eventually(
            Duration::from_secs(60),
            "a WAN pool of nine alive servers",
            || {
                let (http, base) = (&http, &base);
                async move {
                    let m = http.wan_members(base).await;
                    (m.len() == 9 && m.values().all(|s| *s == 1)).then_some(())
                }
            },
        )
        .await;
    }
    eprintln!(
        "WAN pool complete in every DC {:?} after start",
        started.elapsed()
    );
    let names = http.wan_members(&server("dc1", 1)).await;
    assert!(names.contains_key("s3.dc2") && names.contains_key("s1.dc3"));

    // Datacenters by RTT: from dc1, dc2 (20 ms) before dc3 (80 ms); from dc3, dc2 (40 ms)
    // before dc1 (80 ms). Client agents ask a server.
    http.until(
        &format!("{}/v1/catalog/datacenters", server("dc1", 1)),
        "dc1 ranks dc2 before dc3",
        |v| *v == json!(["dc1", "dc2", "dc3"]),
    )
    .await;
    http.until(
        &format!("{}/v1/catalog/datacenters", server("dc3", 1)),
        "dc3 ranks dc2 before dc1",
        |v| *v == json!(["dc3", "dc2", "dc1"]),
    )
    .await;
    http.until(
        &format!("{}/v1/catalog/datacenters", client("dc1")),
        "the dc1 client lists all three DCs",
        |v| len(v) == 3 && v[0] == "dc1",
    )
    .await;

    // WAN coordinates converge on the emulated round trips (dc1-dc2 45 ms, dc1-dc3 165 ms:
    // twice the one-way latency plus the mean jitter), within 25%, whichever agent asks.
    let estimates = |v: &Value| -> Option<(f64, f64)> {
        let coords: HashMap<String, consulate::coordinate::Coordinate> = v
            .as_array()?
            .iter()
            .flat_map(|d| d["Coordinates"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| {
                Some((
                    c["Node"].as_str()?.to_string(),
                    serde_json::from_value(c["Coord"].clone()).ok()?,
                ))
            })
            .collect();
        let from = coords.get("s1.dc1")?;
        let median_ms = |dc: &str| {
            let mut d: Vec<f64> = (1..=3)
                .filter_map(|i| coords.get(&format!("s{i}.{dc}")))
                .map(|c| from.distance_to(c).as_secs_f64() * 1000.0)
                .collect();
            d.sort_by(f64::total_cmp);
            (d.len() == 3).then(|| d[1])
        };
        Some((median_ms("dc2")?, median_ms("dc3")?))
    };
    let within = |est: f64, real: f64| (est - real).abs() <= real * 0.25;
    let converged = Instant::now();
    let (to_dc2, to_dc3) = eventually(
        Duration::from_secs(90),
        "WAN coordinates within 25% of the emulated round trips",
        || {
            let (http, estimates) = (&http, &estimates);
            async move {
                let url = format!("{}/v1/coordinate/datacenters", client("dc1"));
                let (status, body, _) = http.get(&url).await;
                let v: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
                let (dc2, dc3) = estimates(&v)?;
                (within(dc2, 45.0) && within(dc3, 165.0)).then_some((dc2, dc3))
            }
        },
    )
    .await;
    eprintln!(
        "WAN coordinates: s1.dc1 to dc2 {to_dc2:.1} ms, to dc3 {to_dc3:.1} ms, {:?} after the pool formed",
        converged.elapsed()
    );
    let out = run_cli(
        fed.dir.path(),
        &[
            "rtt",
            "-wan",
            "-http-addr",
            &format!("{}:8500", ip(net_of("dc1"), 1)),
            "s1.dc3",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("Estimated s1.dc3 <-> s1.dc1 rtt: "),
        "rtt -wan: {out:?}"
    );
    // LAN coordinates: every node of dc1 reports its own, kept by the servers.
    let lan = http
        .until(
            &format!("{}/v1/coordinate/nodes", client("dc1")),
            "dc1's four nodes have LAN coordinates",
            |v| len(v) == 4,
        )
        .await;
    assert!(lan.to_string().contains("\"Vec\""), "{lan}");
    let out = run_cli(
        fed.dir.path(),
        &[
            "rtt",
            "-http-addr",
            &format!("{}:8500", ip(net_of("dc1"), 21)),
            "s2",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("s2 <-> c1 rtt: ") && text.contains("LAN"),
        "rtt: {out:?}"
    );
    let out = run_cli(
        fed.dir.path(),
        &[
            "members",
            "-wan",
            "-http-addr",
            &format!("{}:8500", ip(net_of("dc2"), 1)),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "members -wan: {out:?}");
    assert!(text.contains("s2.dc3") && text.contains("alive"), "{text}");

    // A service in dc2: one instance passing on dc2's client agent, one critical.
    let c2 = client("dc2");
    let (status, _) = http
        .put(
            &format!("{c2}/v1/agent/service/register"),
            json!({"Name": "web", "ID": "web-1", "Port": 8080,
                   "Check": {"TTL": "600s", "Status": "passing"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = http
        .put(
            &format!("{c2}/v1/catalog/register"),
            json!({"Node": "ext-1", "Address": "10.0.0.9",
                   "Service": {"Service": "web", "ID": "web-ext", "Port": 80},
                   "Check": {"CheckID": "ext", "Name": "ext", "Status": "critical",
                             "ServiceID": "web-ext"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 200);

    // Found from dc1's client agent with ?dc=dc2: catalog, health (?passing) and KV, the
    // KV value itself written from dc1 into dc2.
    let c1 = client("dc1");
    let (status, body) = http
        .put(&format!("{c1}/v1/kv/fed/key?dc=dc2"), "from-dc1")
        .await;
    assert_eq!((status, body.as_str()), (200, "true"));
    assert_eq!(
        http.get(&format!("{c2}/v1/kv/fed/key?raw")).await.1,
        "from-dc1",
        "the write landed in dc2"
    );
    assert_eq!(
        http.get(&format!("{c1}/v1/kv/fed/key")).await.0,
        404,
        "and not in dc1"
    );
    let services = http
        .until(
            &format!("{c1}/v1/catalog/service/web?dc=dc2"),
            "dc2's web instances seen from dc1",
            |v| len(v) == 2,
        )
        .await;
    assert!(
        services
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["Datacenter"] == "dc2")
    );
    let healthy = http
        .until(
            &format!("{c1}/v1/health/service/web?dc=dc2&passing"),
            "dc2's passing web instance seen from dc1",
            |v| len(v) == 1,
        )
        .await;
    assert_eq!(healthy[0]["Service"]["ID"], "web-1");
    assert_eq!(healthy[0]["Node"]["Datacenter"], "dc2");
    let (status, body, _) = http.get(&format!("{c1}/v1/kv/fed/key?dc=dc2&raw")).await;
    assert_eq!((status, body.as_str()), (200, "from-dc1"));
    let (status, body, _) = http.get(&format!("{c1}/v1/status/leader?dc=dc2")).await;
    assert_eq!(status, 200);
    assert!(body.contains("127.80.42."), "dc2's leader: {body}");
    // Remote answers come back unchanged: 404, a failed CAS, an unknown DC.
    assert_eq!(http.get(&format!("{c1}/v1/kv/nope?dc=dc2")).await.0, 404);
    assert_eq!(
        http.put(&format!("{c1}/v1/kv/fed/key?dc=dc2&cas=1"), "x")
            .await,
        (200, "false".to_string())
    );
    let (status, body, _) = http.get(&format!("{c1}/v1/catalog/nodes?dc=dc9")).await;
    assert_eq!((status, body.as_str()), (500, "No path to datacenter"));

    // A blocking query from dc1 on a dc2 key waits in dc2 and wakes when it is written.
    let (status, _, index) = http.get(&format!("{c1}/v1/kv/fed/watched?dc=dc2")).await;
    assert_eq!(status, 404);
    assert!(index > 0);
    let watch = {
        let http = http.0.clone();
        let url = format!("{c1}/v1/kv/fed/watched?dc=dc2&index={index}&wait=30s&raw");
        tokio::spawn(async move {
            let t = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (r.text().await.unwrap(), t.elapsed())
        })
    };
    eventually(Duration::from_secs(20), "the query blocking in dc2", || {
        let http = &http.0;
        async move {
            for i in 1..=3 {
                let v = metric(http, &server("dc2", i), "consulate_rpc_queries_blocking").await;
                if v.unwrap_or(0.0) >= 1.0 {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
    assert!(!watch.is_finished());
    http.put(&format!("{c2}/v1/kv/fed/watched"), "woke").await;
    let (body, waited) = tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .expect("the blocking query returns once the key is written")
        .unwrap();
    assert_eq!(body, "woke");
    assert!(waited < Duration::from_secs(25), "woken, not timed out");

    // A health check run by dc2's client agent, seen from dc1: the instance leaves dc1's
    // `?dc=dc2&passing` view once its target answers 500 or hangs, and comes back.
    let measured = check_seen_across_dcs(&http).await;
    eprintln!(
        "target down to gone from dc1's ?dc=dc2&passing (1 s interval, 1 s timeout): {measured:?}"
    );

    // kill -9 of the dc2 server that dc1's stale reads go to: the next queries still
    // succeed, and the dead server drops out of dc1's WAN view.
    let served = |http: reqwest::Client| async move {
        let mut v = Vec::new();
        for i in 1..=3 {
            let n = metric(
                &http,
                &server("dc2", i),
                "consulate_rpc_requests_served_total{alpn=\"rpc\"}",
            )
            .await;
            v.push(n.unwrap_or(0.0));
        }
        v
    };
    let stale = format!("{c1}/v1/health/service/web?dc=dc2&passing&stale");
    let before = served(http.0.clone()).await;
    for _ in 0..40 {
        assert_eq!(len(&http.json(&stale).await.unwrap()), 1);
    }
    let after = served(http.0.clone()).await;
    let target = (0..3)
        .max_by(|a, b| (after[*a] - before[*a]).total_cmp(&(after[*b] - before[*b])))
        .unwrap() as u8
        + 1;
    let killed_at = Instant::now();
    fed.kill(&format!("s{target}.dc2"));
    let mut queries = 0;
    let mut failed = 0;
    let mut slowest = Duration::ZERO;
    let gone = format!("s{target}.dc2");
    let dropped_after = loop {
        let t = Instant::now();
        match http.json(&stale).await {
            Some(v) if len(&v) == 1 => {}
            other => {
                failed += 1;
                eprintln!("failed query after the kill: {other:?}");
            }
        }
        slowest = slowest.max(t.elapsed());
        queries += 1;
        if http.wan_members(&server("dc1", 1)).await.get(&gone) == Some(&4) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "{gone} never marked failed in dc1"
        );
    };
    eprintln!(
        "killed {gone}: {queries} queries, {failed} failed, slowest {slowest:?}; failed in dc1's WAN view after {dropped_after:?}"
    );
    assert_eq!(failed, 0, "failover inside the deadline");

    // The dc1 leader killed: any dc1 server forwards, so cross-DC queries keep working.
    let (_, leader, _) = http.get(&format!("{c1}/v1/status/leader")).await;
    let leader_host: u8 = leader
        .trim_matches('"')
        .split([':', '.'])
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    fed.kill(&format!("s{leader_host}.dc1"));
    let t = Instant::now();
    let mut failed = 0;
    for _ in 0..30 {
        if http.json(&stale).await.is_none_or(|v| len(&v) != 1) {
            failed += 1;
        }
    }
    eprintln!(
        "dc1 leader s{leader_host}.dc1 killed: 30 cross-DC queries in {:?}, {failed} failed",
        t.elapsed()
    );
    assert_eq!(failed, 0);

    // dc3 partitioned away: its queries fail fast with Consul's message, dc2 and local
    // queries are unaffected; healed, dc3 answers again.
    wan.cut("dc1", "dc3");
    wan.cut("dc2", "dc3");
    let cut_at = Instant::now();
    let dc3 = format!("{c1}/v1/catalog/services?dc=dc3");
    let mut failures = Vec::new();
    while failures.len() < 8 {
        let t = Instant::now();
        let (status, body, _) = http.get(&dc3).await;
        if status == 500 {
            assert_eq!(body, "Remote DC has no server currently reachable");
            failures.push(t.elapsed());
        } else {
            assert_eq!(status, 200, "{body}");
            assert!(
                cut_at.elapsed() < Duration::from_secs(5),
                "dc3 still answers"
            );
        }
        assert!(
            http.json(&format!("{c1}/v1/catalog/services?dc=dc2"))
                .await
                .is_some()
        );
        assert!(
            http.json(&format!("{c1}/v1/catalog/services"))
                .await
                .is_some()
        );
    }
    let worst = failures.iter().max().unwrap();
    eprintln!("dc3 partitioned: failures took {failures:?}");
    assert!(
        *worst < Duration::from_millis(2500),
        "fails fast: {worst:?}"
    );
    wan.heal("dc1", "dc3");
    wan.heal("dc2", "dc3");
    let healed_at = Instant::now();
    eventually(
        Duration::from_secs(30),
        "dc3 answering after the heal",
        || {
            let (http, dc3) = (&http, &dc3);
            async move { http.json(dc3).await }
        },
    )
    .await;
    eprintln!("dc3 answers again {:?} after the heal", healed_at.elapsed());
    assert!(healed_at.elapsed() < Duration::from_secs(15));
}

/// Registers `api` on dc2's client agent with an HTTP check (1 s interval, 1 s timeout)
/// against a target in this process, then takes the target down three times by answering
/// 500 and once by hanging; returns how long each took to vanish from dc1's
/// `?dc=dc2&passing` view (it must come back in between).
async fn check_seen_across_dcs(http: &Http) -> Vec<Duration> {
    use std::sync::atomic::Ordering;
    let (target, code) = checked_app(&format!("{}:0", ip(net_of("dc2"), 50))).await;
    let (status, body) = http
        .put(
            &format!("{}/v1/agent/service/register", client("dc2")),
            json!({"Name": "api", "ID": "api-1", "Port": target.port(),
                   "Check": {"HTTP": format!("http://{target}/health"),
                             "Interval": "1s", "Timeout": "1s"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let view = format!("{}/v1/health/service/api?dc=dc2&passing", client("dc1"));
    let listed = |want: usize| {
        let view = view.clone();
        async move { http.json(&view).await.filter(|v| len(v) == want) }
    };
    let mut took = Vec::new();
    for down in [500, 500, 500, 0] {
        eventually(
            Duration::from_secs(20),
            "api passing, seen from dc1",
            || listed(1),
        )
        .await;
        code.store(down, Ordering::SeqCst);
        let t = Instant::now();
        eventually(
            Duration::from_secs(20),
            "api gone from dc1's passing view",
            || listed(0),
        )
        .await;
        took.push(t.elapsed());
        code.store(200, Ordering::SeqCst);
    }
    eventually(Duration::from_secs(20), "api passing again", || listed(1)).await;
    for t in &took {
        assert!(*t < Duration::from_secs(6), "down to gone took {t:?}");
    }
    took
}

/// A client certificate never joins the WAN pool: the servers' transport refuses it before
/// any gossip is read, and counts the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_join_the_wan_pool() {
    let pki = TestPki::new();
    let shutdown = CancellationToken::new();
    let start = |role: Role, name: &str, seeds: Vec<SocketAddr>| {
        let (pki, shutdown) = (&pki, shutdown.clone());
        let name = name.to_string();
        async move {
            let metrics = Metrics::new();
            let transport = Transport::bind(
                "127.80.44.1:0".parse().unwrap(),
                "dc1",
                &pki.material(role, "dc1"),
                TransportOptions::default(),
                metrics.transport.clone(),
            )
            .unwrap();
            let addr = transport.local_addr();
            let carrier = QuicGossip::new(
                transport.clone(),
                addr,
                metrics.wan_gossip.clone(),
                Default::default(),
                shutdown.child_token(),
            );
            transport.serve(
                consulate::transport::Services::default().with(
                    consulate::transport::identity::Alpn::WanGossip,
                    carrier.service(),
                ),
                shutdown.child_token(),
            );
            let mut options = wan::default_options();
            options.interval = Duration::from_millis(100);
            let gossip = Gossip::wan(
                WanConfig {
                    node: name,
                    node_id: String::new(),
                    datacenter: "dc1".into(),
                    domain: "consul".into(),
                    advertise: addr,
                    seeds,
                    options,
                },
                &carrier,
                metrics.wan_gossip.clone(),
                shutdown.child_token(),
            )
            .await
            .unwrap();
            (gossip, metrics, addr)
        }
    };
    let (s1, s1_metrics, s1_addr) = start(Role::Server, "s1", vec![]).await;
    let (s2, _, _) = start(Role::Server, "s2", vec![s1_addr]).await;
    let (intruder, _, _) = start(Role::Client, "c1", vec![s1_addr]).await;
    let names = |g: &Gossip| -> Vec<String> {
        g.members()
            .borrow()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    };
    eventually(Duration::from_secs(10), "two servers gossiping", || async {
        (names(&s1).len() == 2 && names(&s2).len() == 2).then_some(())
    })
    .await;
    let refused = || {
        s1_metrics
            .transport
            .handshakes_refused
            .with_label_values(&["client_not_allowed"])
            .get()
    };
    eventually(Duration::from_secs(10), "the client refused", || async {
        (refused() >= 3).then_some(())
    })
    .await;
    assert_eq!(names(&s1), ["s1.dc1", "s2.dc1"]);
    assert_eq!(names(&s2), ["s1.dc1", "s2.dc1"]);
    assert!(
        names(&intruder).iter().all(|n| n == "c1.dc1"),
        "the intruder learned nothing: {:?}",
        names(&intruder)
    );
    shutdown.cancel();
}
