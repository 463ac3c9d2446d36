//! Real processes, two DCs behind the WAN emulator: Consul's agent cache on dc1's client
//! for dc2's `web` (`?cached`): a miss, then hits; the background refresh bringing a new
//! instance without a fetch; a blocking query on the cache; with the DCs cut apart,
//! `Cache-Control: stale-if-error` answering the last-known instances every time (marked
//! by `Age`) while a request without it fails as an uncached one does; after healing,
//! fresh answers again. A prepared query of dc2 executed with `?cached` (Consul's simple
//! caching): a miss, hits as old as the fetch, the stored answer through the cut with
//! `stale-if-error`, a younger one when `max-age` asks. Identical uncached reads (and
//! executions) in flight together share one forward;
//! through the cut, dc1's server answers uncached reads that allow `stale-if-error` (and
//! DNS names, as configured) from its last answer, marked with the unreachable DC.

use std::net::IpAddr;
use std::time::Duration;

use crate::common::wan::{Link, WanEmulator};
use crate::common::*;
use serde_json::{Value, json};

const NET: u8 = 68;

fn ip(dc: u8, host: u8) -> String {
    format!("127.{NET}.{dc}.{host}")
}

/// What a GET answered: status, `X-Cache`, `Age`, and the body as JSON.
async fn get(
    http: &reqwest::Client,
    url: &str,
    cache_control: Option<&str>,
) -> (u16, String, u64, Value) {
    let mut req = http.get(url);
    if let Some(c) = cache_control {
        req = req.header("Cache-Control", c);
    }
    let r = req.send().await.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (cache, age) = (header("X-Cache"), header("Age").parse().unwrap_or(0));
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, cache, age, body)
}

fn ports(v: &Value) -> Vec<u64> {
    let mut p: Vec<u64> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["Service"]["Port"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    p.sort();
    p
}

async fn register(http: &reqwest::Client, agent: &str, node: &str, port: u16) {
    let body = json!({
        "Node": node, "Address": "10.1.0.1",
        "Service": {"Service": "web", "ID": format!("web-{port}"), "Port": port},
        "Check": {"CheckID": format!("web-{port}"), "Name": "up", "Status": "passing",
                  "ServiceID": format!("web-{port}")}
    });
    register_body(http, agent, &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_hit_refresh_and_serve_stale_through_a_partition() {
    let wan = WanEmulator::new(|addr: IpAddr| {
        let IpAddr::V4(v4) = addr else { return None };
        Some(format!("dc{}", v4.octets()[2]))
    });
    wan.set_link(
        "dc1",
        "dc2",
        Link {
            latency: Duration::from_millis(10),
            ..Link::default()
        },
    );
    let front = |dc: u8| format!("{}:8300", ip(dc, 100));
    for dc in [1, 2] {
        wan.front(
            &format!("dc{dc}"),
            front(dc).parse().unwrap(),
            format!("{}:8300", ip(dc, 1)).parse().unwrap(),
        )
        .await;
    }
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (dc, wan_join) in [(1, None), (2, Some(1))] {
        let server_extra = format!("advertise_addr_wan = \"{}\"\n", front(dc));
        // dc1's client answers DNS names of an unreachable DC from the last answer, and
        // takes the whole burst below from one address.
        let client_extra = match dc {
            1 => {
                "[dns]\nremote_stale_if_error = \"60s\"\n[limits]\nhttp_max_conns_per_client = 0\n"
            }
            _ => "",
        };
        for config in write_small_dc_with(
            dir.path(),
            &pki,
            (NET, dc),
            wan_join,
            &server_extra,
            client_extra,
        ) {
            agents.push(spawn_agent(&config));
        }
    }
    let http = http_client_bounded();
    let (c1, c2) = (
        format!("http://{}:8500", ip(1, 21)),
        format!("http://{}:8500", ip(2, 21)),
    );
    wait_for_leader(&http, &c1, "").await;
    wait_for_leader(&http, &c2, "").await;
    register(&http, &c2, "n1", 8001).await;
    let url = format!("{c1}/v1/health/service/web?dc=dc2&cached");
    eventually(Duration::from_secs(30), "dc1 reaches dc2's web", || async {
        let v = get_json(&http, &format!("{c1}/v1/health/service/web?dc=dc2")).await?;
        (ports(&v) == [8001]).then_some(())
    })
    .await;

    // A miss, then hits.
    let (status, cache, age, v) = get(&http, &url, None).await;
    assert_eq!(
        (status, cache.as_str(), age, ports(&v)),
        (200, "MISS", 0, vec![8001])
    );
    let (status, cache, _, v) = get(&http, &url, None).await;
    assert_eq!(
        (status, cache.as_str(), ports(&v)),
        (200, "HIT", vec![8001])
    );
    assert_eq!(
        metric(&http, &c1, "consulate_cache_entries").await,
        Some(1.0)
    );

    // The background refresh brings a new instance: still a hit.
    register(&http, &c2, "n2", 8002).await;
    eventually(
        Duration::from_secs(20),
        "the refresh brings 8002",
        || async {
            let (_, cache, _, v) = get(&http, &url, None).await;
            (cache == "HIT" && ports(&v) == [8001, 8002]).then_some(())
        },
    )
    .await;

    // A blocking query on the cache returns on the next change.
    let index: u64 = http.get(&url).send().await.unwrap().headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let blocked = {
        let (http, url) = (http.clone(), format!("{url}&index={index}&wait=20s"));
        tokio::spawn(async move { get(&http, &url, None).await })
    };
    register(&http, &c2, "n3", 8003).await;
    let (status, cache, _, v) = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("the blocking cached query returns on the change")
        .unwrap();
    assert_eq!(
        (status, cache.as_str(), ports(&v)),
        (200, "HIT", vec![8001, 8002, 8003])
    );

    // A prepared query of dc2 executed through dc1's client with ?cached: Consul's simple
    // caching (a miss, then hits as old as the fetch).
    let created = http
        .post(format!("{c2}/v1/query"))
        .body(json!({"Name": "web-q", "Service": {"Service": "web"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let execute = format!("{c1}/v1/query/web-q/execute?dc=dc2&cached");
    let (status, cache, age, v) = get(&http, &execute, None).await;
    assert_eq!(
        (status, cache.as_str(), age, ports(&v["Nodes"])),
        (200, "MISS", 0, vec![8001, 8002, 8003])
    );
    let (status, cache, _, v) = get(&http, &execute, None).await;
    assert_eq!(
        (status, cache.as_str(), ports(&v["Nodes"])),
        (200, "HIT", vec![8001, 8002, 8003])
    );
    let (status, ..) = get(&http, &format!("{execute}&consistent"), None).await;
    assert_eq!(status, 400, "?cached with ?consistent is refused");

    // Identical uncached reads at once (200; `CACHE_BURST` to measure another size) share
    // forwards on dc1's server: each is either forwarded or joins one in flight, and most
    // join.
    let burst: usize = std::env::var("CACHE_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dc1_server = format!("http://{}:8500", ip(1, 1));
    let counts = || async {
        let text = scrape(&http, &dc1_server).await.unwrap();
        (
            sum_samples(&text, "consulate_rpc_cross_dc_total{datacenter=\"dc2\""),
            sum_samples(&text, "consulate_federation_coalesced_total"),
        )
    };
    let (forwards_before, joined_before) = counts().await;
    let uncached = format!("{c1}/v1/health/service/web?dc=dc2");
    let answers = futures::future::join_all((0..burst).map(|_| get(&http, &uncached, None))).await;
    assert!(answers.iter().all(|(status, ..)| *status == 200));
    let (forwards, joined) = counts().await;
    let (forwards, joined) = (forwards - forwards_before, joined - joined_before);
    println!("{burst} identical reads: {forwards} forwards, {joined} joined one in flight");
    assert!(
        forwards + joined >= burst as f64,
        "every read forwarded or joined"
    );
    assert!(
        joined >= burst as f64 / 2.0,
        "most reads shared a forward: {joined} of {burst}"
    );

    // Identical executions of dc2's query at once share forwards too.
    let (_, joined_before) = counts().await;
    let uncached_execute = format!("{c1}/v1/query/web-q/execute?dc=dc2");
    let answers =
        futures::future::join_all((0..50).map(|_| get(&http, &uncached_execute, None))).await;
    for (status, _, _, v) in &answers {
        assert_eq!((*status, ports(&v["Nodes"])), (200, vec![8001, 8002, 8003]));
    }
    let (_, joined) = counts().await;
    assert!(
        joined - joined_before >= 25.0,
        "most executions shared a forward: {} of 50",
        joined - joined_before
    );

    // Reads that allow stale-if-error are remembered by dc1's server as they are answered.
    let (status, _, _, v) = get(&http, &uncached, Some("stale-if-error=60")).await;
    assert_eq!((status, ports(&v)), (200, vec![8001, 8002, 8003]));
    assert_eq!(dig_a(&ip(1, 21), "web.service.dc2.consul"), ["10.1.0.1"]);

    // The WAN cut: with stale-if-error every answer is the last-known one, marked by Age.
    wan.cut("dc1", "dc2");
    // Uncached, dc1's server answers from its memory, marked; DNS too.
    let r = http
        .get(&uncached)
        .header("Cache-Control", "stale-if-error=60")
        .send()
        .await
        .unwrap();
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_string();
    assert_eq!(r.status(), 200);
    assert_eq!(header("X-Consul-Effective-Consistency"), "stale");
    assert_eq!(header("X-Consulate-Unreachable-Datacenter"), "dc2");
    assert!(header("Age").parse::<u64>().is_ok());
    assert_eq!(ports(&r.json().await.unwrap()), [8001, 8002, 8003]);
    assert_eq!(
        dig_a(&ip(1, 21), "web.service.dc2.consul"),
        ["10.1.0.1"],
        "DNS answers from the last answer while dc2 is cut off"
    );
    let (status, _, _, _) = get(&http, &uncached, None).await;
    assert_eq!(status, 500, "a read that does not allow it fails");
    let stale = Some("stale-if-error=60");
    let lost = eventually(
        Duration::from_secs(40),
        "the refresh loses contact",
        || async {
            let (status, cache, age, v) = get(&http, &url, stale).await;
            assert_eq!((status, ports(&v)), (200, vec![8001, 8002, 8003]), "{v}");
            assert_eq!(cache, "HIT");
            (age > 0).then_some(age)
        },
    )
    .await;
    assert!(lost > 0);
    let mut answered = 0;
    for _ in 0..3 {
        let (status, cache, age, v) = get(&http, &url, stale).await;
        assert_eq!(
            (status, cache.as_str(), ports(&v)),
            (200, "HIT", vec![8001, 8002, 8003])
        );
        assert!(age > 0, "a stale answer says how old it is");
        answered += 1;
    }
    assert_eq!(answered, 3);
    let (status, _, _, v) = get(&http, &url, None).await;
    assert_eq!(
        status, 500,
        "without stale-if-error it fails as an uncached read: {v}"
    );
    // The cached execution through the cut: a fetch is asked for (max-age=0) and fails,
    // so stale-if-error serves the stored answer with its age; without it, the error.
    let (status, cache, age, v) = get(&http, &execute, Some("max-age=0, stale-if-error=60")).await;
    assert_eq!(
        (status, cache.as_str(), ports(&v["Nodes"])),
        (200, "HIT", vec![8001, 8002, 8003])
    );
    assert!(age > 0, "as old as its fetch, before the cut");
    let (status, ..) = get(&http, &execute, Some("max-age=0")).await;
    assert_eq!(
        status, 500,
        "without stale-if-error the failed fetch is the answer"
    );
    assert!(
        metric(
            &http,
            &c1,
            "consulate_cache_requests_total{outcome=\"stale_if_error\"}"
        )
        .await
        .unwrap()
            >= 3.0
    );
    assert!(
        metric(
            &http,
            &dc1_server,
            "consulate_federation_stale_answers_total{datacenter=\"dc2\"}"
        )
        .await
        .unwrap()
            >= 2.0
    );

    // Healed: fresh answers again (a change made during the cut included).
    register(&http, &c2, "n4", 8004).await;
    wan.heal("dc1", "dc2");
    let healed = std::time::Instant::now();
    eventually(
        Duration::from_secs(30),
        "fresh answers after healing",
        || async {
            let (status, _, age, v) = get(&http, &url, None).await;
            (status == 200 && age == 0 && ports(&v) == [8001, 8002, 8003, 8004]).then_some(())
        },
    )
    .await;
    println!("fresh cached answers {:?} after healing", healed.elapsed());
    // A simply cached execution is not refreshed in the background: the old answer until
    // max-age asks for a younger one.
    let (status, cache, _, v) = get(&http, &execute, None).await;
    assert_eq!(
        (status, cache.as_str(), ports(&v["Nodes"])),
        (200, "HIT", vec![8001, 8002, 8003])
    );
    let (status, cache, age, v) = get(&http, &execute, Some("max-age=1")).await;
    assert_eq!(
        (status, cache.as_str(), age, ports(&v["Nodes"])),
        (200, "MISS", 0, vec![8001, 8002, 8003, 8004])
    );
    drop(agents);
}
