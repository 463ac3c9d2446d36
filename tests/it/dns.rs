//! DNS as applications use it, asked with the real `dig` (Debian's bind9-dnsutils) of real
//! agent processes in two DCs (one server and one client agent each): local, cross-DC, tag,
//! RFC 2782 and node lookups, a failing instance leaving the answers, 40 instances cut
//! over UDP and complete over TCP, NXDOMAIN with the SOA, names outside the domain refused
//! or forwarded to recursors, garbage on the port never stopping it answering, and
//! lookups answered from the agent cache where `use_cache` is set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn ip(dc: u8, host: u8) -> String {
    format!("127.84.{dc}.{host}")
}

fn base(dc: u8, host: u8) -> String {
    format!("http://{}:8500", ip(dc, host))
}

/// The stub recursor's address (names outside the domain, asked of dc1's client agent).
const RECURSOR: &str = "127.84.0.53:5353";
/// A recursor address where nothing listens: tried first, skipped.
const DEAD_RECURSOR: &str = "127.84.0.54:5353";

/// DC `dc`: server `s1` on .1 and client `c1` on .21; dc1's client carries DNS settings,
/// dc2's answers from its agent cache (`use_cache`).
fn write_dc(dir: &Path, pki: &TestPki, dc: u8) -> Vec<PathBuf> {
    let client_extra = if dc == 1 {
        format!(
            "[dns]\nservice_ttl = {{ \"web\" = \"10s\", \"*\" = \"3s\" }}\nrecursors = [\"{DEAD_RECURSOR}\", \"{RECURSOR}\"]\nrecursor_timeout = \"500ms\"\n[dns.soa]\nmin_ttl = 30\n"
        )
    } else {
        "[dns]\nuse_cache = true\n".to_string()
    };
    write_small_dc(dir, pki, (84, dc), Some(3 - dc), &client_extra)
}

/// `dig @server -p 8600 ARGS` (one try, 2 s): its output.
fn dig(server: &str, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([&format!("@{server}"), "-p", "8600", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig must be installed (.ci/run installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short`, sorted.
fn short(server: &str, name: &str, qtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig(server, &[name, qtype, "+short"])
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The records of the answer section (`name ttl class type data`).
fn answers(out: &str) -> Vec<Vec<String>> {
    let section = out.split(";; ANSWER SECTION:\n").nth(1).unwrap_or("");
    section
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Registers `service` (tags, a check with `status`) on node `node` at `address` in the
/// catalog of the DC whose agent is `agent`.
async fn register(
    http: &reqwest::Client,
    agent: &str,
    (node, address): (&str, &str),
    (service, tags): (&str, &[&str]),
    status: &str,
) {
    catalog_register(http, agent, (node, address), (service, 8080, tags), status).await;
}

/// A recursor stub: answers every A question with 192.0.2.7, over UDP.
async fn stub_recursor() -> tokio::task::JoinHandle<()> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    let socket = tokio::net::UdpSocket::bind(RECURSOR).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
            resp.metadata.recursion_available = true;
            resp.add_queries(query.queries.iter().cloned());
            if let Some(q) = query.queries.first() {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A([192, 0, 2, 7].into())),
                ));
            }
            let _ = socket.send_to(&resp.to_vec().unwrap(), from).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_finds_services_and_nodes_in_every_dc() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let _recursor = stub_recursor().await;
    let mut agents = Vec::new();
    for dc in [1, 2] {
        for cfg in write_dc(dir.path(), &pki, dc) {
            agents.push(spawn_agent(&cfg));
        }
    }
    let http = http_client();
    let (c1, c2) = (base(1, 21), base(2, 21));
    let (dns1, dns2) = (ip(1, 21), ip(2, 21));
    for c in [&c1, &c2] {
        wait_for_leader(&http, c, "").await;
    }
    register(
        &http,
        &c1,
        ("a1", "127.84.1.50"),
        ("web", &["v1"]),
        "passing",
    )
    .await;
    register(
        &http,
        &c1,
        ("a2", "127.84.1.51"),
        ("web", &["v1"]),
        "passing",
    )
    .await;
    for (i, tag) in [(0, "v1"), (1, "v2"), (2, "v2")] {
        let node = format!("n{}", i + 1);
        let addr = format!("127.84.2.{}", 50 + i);
        register(&http, &c2, (&node, &addr), ("web", &[tag]), "passing").await;
    }
    for i in 0..40 {
        let node = format!("big-{i}");
        let addr = format!("10.84.{}.{}", i / 200, i % 200 + 1);
        register(&http, &c2, (&node, &addr), ("big", &[]), "passing").await;
    }
    register(
        &http,
        &c2,
        ("Mixed-Case", "127.84.2.60"),
        ("Api", &["Blue"]),
        "passing",
    )
    .await;
    // The WAN pool takes a moment: dc1 sees dc2's web instances through DNS.
    eventually(
        Duration::from_secs(30),
        "dc2 reachable from dc1",
        || async { (short(&dns1, "web.service.dc2.consul", "A").len() == 3).then_some(()) },
    )
    .await;

    // Every server is service `consul` (port 8300), in its own DC and another.
    for (dns, name, server) in [
        (&dns1, "consul.service.consul", ip(1, 1)),
        (&dns1, "consul.service.dc2.consul", ip(2, 1)),
        (&dns2, "consul.service.consul", ip(2, 1)),
    ] {
        let found = eventually(Duration::from_secs(30), "service consul", || async {
            let a = short(dns, name, "A");
            (!a.is_empty()).then_some(a)
        })
        .await;
        assert_eq!(found, std::slice::from_ref(&server), "{name} from {dns}");
        let srv = short(dns, name, "SRV");
        assert!(
            srv.len() == 1 && srv[0].contains(" 8300 "),
            "{name} SRV from {dns}: {srv:?}"
        );
    }

    // Local lookups: SRV targets are node names, glued; A records; the configured TTL.
    let srv = dig(
        &dns1,
        &[
            "web.service.consul",
            "SRV",
            "+noall",
            "+answer",
            "+additional",
        ],
    );
    let records = answers(&format!(";; ANSWER SECTION:\n{srv}"));
    assert_eq!(records.len(), 4, "{srv}");
    assert!(srv.contains("1 1 8080 a1.node.dc1.consul.") && srv.contains("a2.node.dc1.consul."));
    let glue = ["a1.node.dc1.consul.", "10", "IN", "A", "127.84.1.50"].map(String::from);
    assert!(records.contains(&glue.to_vec()), "{srv}");
    assert_eq!(
        short(&dns1, "web.service.consul", "A"),
        ["127.84.1.50", "127.84.1.51"]
    );
    assert_eq!(short(&dns2, "web.service.consul", "A").len(), 3);

    // dc2's client answers services and prepared queries from its agent cache: asked
    // again, a hit, not a read of the servers.
    let hits = || async {
        metric(
            &http,
            &c2,
            "consulate_cache_requests_total{outcome=\"hit\"}",
        )
        .await
        .unwrap_or(0.0)
    };
    let before = hits().await;
    assert_eq!(short(&dns2, "web.service.consul", "A").len(), 3);
    assert_eq!(hits().await, before + 1.0, "the service lookup was a hit");
    let created = http
        .post(format!("{c2}/v1/query"))
        .body(r#"{"Name": "webq", "Service": {"Service": "web"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    assert_eq!(short(&dns2, "webq.query.consul", "A").len(), 3);
    let before = hits().await;
    assert_eq!(short(&dns2, "webq.query.consul", "A").len(), 3);
    assert_eq!(hits().await, before + 1.0, "the prepared query was a hit");

    // Another DC's names, a tag, the RFC 2782 form, a node.
    assert_eq!(
        short(&dns1, "web.service.dc2.consul", "A"),
        ["127.84.2.50", "127.84.2.51", "127.84.2.52"]
    );
    assert_eq!(
        short(&dns1, "v1.web.service.dc2.consul", "A"),
        ["127.84.2.50"]
    );
    let rfc = short(&dns1, "_web._v2.service.dc2.consul", "SRV");
    assert_eq!(
        rfc,
        [
            "1 1 8080 n2.node.dc2.consul.",
            "1 1 8080 n3.node.dc2.consul."
        ]
    );
    assert_eq!(short(&dns1, "_web._tcp.service.dc2.consul", "SRV").len(), 3);
    assert_eq!(short(&dns1, "n1.node.dc2.consul", "A"), ["127.84.2.50"]);
    assert_eq!(short(&dns1, "s1.node.dc2.consul", "A"), ["127.84.2.1"]);
    // DNS names are case-insensitive, and so are Consul's service, tag and node names.
    assert_eq!(
        short(&dns1, "blue.api.service.dc2.consul", "A"),
        ["127.84.2.60"]
    );
    assert_eq!(
        short(&dns1, "BLUE.Api.Service.DC2.Consul", "A"),
        ["127.84.2.60"]
    );
    assert_eq!(
        short(&dns1, "mixed-case.node.dc2.consul", "A"),
        ["127.84.2.60"]
    );

    // A failing instance disappears from the answers.
    register(
        &http,
        &c2,
        ("n2", "127.84.2.51"),
        ("web", &["v2"]),
        "critical",
    )
    .await;
    eventually(Duration::from_secs(10), "n2 gone from DNS", || async {
        (short(&dns1, "web.service.dc2.consul", "A") == ["127.84.2.50", "127.84.2.52"])
            .then_some(())
    })
    .await;

    // 40 instances: cut over UDP (TC), complete over TCP; dig retries over TCP by itself.
    let udp = dig(
        &dns1,
        &["big.service.dc2.consul", "SRV", "+ignore", "+noedns"],
    );
    assert!(
        udp.contains("flags: qr aa tc") || udp.contains(" tc"),
        "TC set over UDP: {udp}"
    );
    assert!(answers(&udp).len() < 40, "{udp}");
    let tcp = dig(&dns1, &["big.service.dc2.consul", "SRV", "+tcp"]);
    assert_eq!(answers(&tcp).len(), 40, "{tcp}");
    let retried = dig(&dns1, &["big.service.dc2.consul", "SRV", "+noedns"]);
    assert!(
        retried.contains("Truncated, retrying in TCP mode"),
        "{retried}"
    );
    assert_eq!(answers(&retried).len(), 40);
    assert!(
        answers(&tcp).iter().all(|r| r[1] == "3"),
        "the `*` TTL: {tcp}"
    );

    // Unknown names: NXDOMAIN with the SOA, whose TTL is the negative-caching time.
    for name in [
        "nothing.service.consul",
        "web.service.dc9.consul",
        "x.consul",
    ] {
        let out = dig(&dns1, &[name, "A"]);
        assert!(out.contains("status: NXDOMAIN"), "{name}: {out}");
        assert!(
            out.contains("consul.\t\t\t30\tIN\tSOA\tns.consul. hostmaster.consul."),
            "{name}: {out}"
        );
    }
    let soa = short(&dns2, "consul", "SOA");
    assert!(
        soa[0].starts_with("ns.consul. hostmaster.consul."),
        "{soa:?}"
    );
    assert_eq!(short(&dns2, "consul", "NS"), ["s1.node.dc2.consul."]);

    // Outside the domain: refused without recursors; forwarded (past a dead one) with.
    assert!(dig(&dns2, &["example.com", "A"]).contains("status: REFUSED"));
    assert_eq!(short(&dns1, "example.com", "A"), ["192.0.2.7"]);

    // Garbage and oversized packets on both protocols: counted, and DNS keeps answering.
    let udp_socket = std::net::UdpSocket::bind(format!("{}:0", ip(0, 9))).unwrap();
    let target = format!("{dns1}:8600");
    let mut seed = 0x9e37_79b9_u32;
    for i in 0..500usize {
        let len = [0, 3, 11, 12, 40, 512, 4000, 60_000][i % 8];
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        let _ = udp_socket.send_to(&junk, &target);
    }
    {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(&target).unwrap();
        let mut frame = vec![0xff, 0xff];
        frame.extend(std::iter::repeat_n(0xa5, 65535));
        let _ = tcp.write_all(&frame);
        let mut tcp = std::net::TcpStream::connect(&target).unwrap();
        let _ = tcp.write_all(b"\x00\x05hello GET / HTTP/1.1\r\n\r\n");
    }
    assert_eq!(
        short(&dns1, "web.service.consul", "A"),
        ["127.84.1.50", "127.84.1.51"]
    );
    let text = scrape(&http, &c1).await.unwrap();
    let count = |needle: &str| sum_samples(&text, needle);
    assert!(
        count("consulate_dns_queries_total{outcome=\"malformed\"") >= 100.0,
        "{text}"
    );
    assert!(count("consulate_dns_queries_total{outcome=\"forwarded\"") >= 1.0);
    assert!(count("consulate_dns_cross_dc_lookups_total{outcome=\"ok\"}") >= 5.0);
    assert!(count("consulate_dns_truncated_total") >= 1.0);
    assert!(count("consulate_dns_query_duration_seconds_count{protocol=\"tcp\"}") >= 1.0);
    drop(agents);
}
