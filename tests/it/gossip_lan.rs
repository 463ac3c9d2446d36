//! LAN gossip with real processes: 3 servers and 5 client agents of one DC, gossip sealed
//! with a key. Everyone sees everyone; `kill -9` of a client turns its `serfHealth`
//! critical and takes its service out of `?passing`; restarting it brings it back; a
//! graceful leave (`consulate leave`, SIGTERM) deregisters the node; an agent with the
//! wrong key never becomes a member and its packets are counted as rejected.

use std::time::{Duration, Instant};

use crate::common::dc::*;
use crate::common::*;
use consulate::config::GossipKey;
use consulate::transport::identity::Alpn;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const NET: u8 = 13;

async fn get_json(c: &reqwest::Client, url: &str) -> Option<Value> {
    c.get(url).send().await.ok()?.json().await.ok()
}

fn serf_status(checks: &Value) -> Option<String> {
    checks
        .as_array()?
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .map(|c| c["Status"].as_str().unwrap_or_default().to_string())
}

fn member_status(members: &Value, name: &str) -> Option<u64> {
    members
        .as_array()?
        .iter()
        .find(|m| m["Name"] == name)
        .and_then(|m| m["Status"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_gossip_membership_failure_and_leave() {
    let key = GossipKey::generate();
    let extra = format!("encrypt = \"{}\"\n", key.to_base64());
    let pki = TestPki::new();
    let dc = write_dc_with(NET, &pki, &extra);
    let mut servers: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    let client_cfgs: Vec<_> = (1..=5)
        .map(|i| write_client_with(&dc, &pki, NET, 20 + i, &format!("c{i}"), &extra))
        .collect();
    let mut clients: Vec<ChildGuard> = client_cfgs.iter().map(|c| spawn_agent(c)).collect();
    let (me, li) = observe_leader(&pki, &dc.addrs[..3]).await;
    let leader = format!("http://{}:8500", dc.addrs[li].ip());
    let client_url = |i: usize| format!("http://127.79.{NET}.{}:8500", 20 + i);
    let http = http_client();

    // Everyone sees all eight, alive, from a server and from a client.
    for url in [leader.clone(), client_url(3)] {
        eventually(Duration::from_secs(15), "all 8 members alive", || async {
            let m = get_json(&http, &format!("{url}/v1/agent/members")).await?;
            let a = m.as_array()?;
            (a.len() == 8 && a.iter().all(|x| x["Status"] == 1)).then_some(())
        })
        .await;
    }

    // Each client caught up through a push-pull sync (TCP, sealed under the DC's key).
    let pulled = "consulate_gossip_syncs_total{pool=\"lan\",result=\"ok\",side=\"pulled\"}";
    for i in 1..=5 {
        let n = metric(&http, &client_url(i), pulled).await.unwrap();
        assert!(n >= 1.0, "c{i} pulled the pool's state ({n} syncs)");
    }

    // Each client registers a web instance with its agent.
    for i in 1..=5 {
        let r = http
            .put(format!("{}/v1/agent/service/register", client_url(i)))
            .body(json!({"Name": "web", "ID": format!("web-c{i}"), "Port": 80}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let passing = |n: usize| {
        let http = http.clone();
        let url = format!("{leader}/v1/health/service/web?passing");
        async move {
            let v = get_json(&http, &url).await?;
            (v.as_array()?.len() == n).then_some(())
        }
    };
    eventually(Duration::from_secs(15), "5 passing web instances", || {
        passing(5)
    })
    .await;

    // kill -9 of c1: serfHealth critical, out of ?passing.
    clients[0].signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "c1's serfHealth critical",
        || async {
            let checks = get_json(&http, &format!("{leader}/v1/health/node/c1")).await?;
            (serf_status(&checks)? == "critical").then_some(())
        },
    )
    .await;
    let detected = killed.elapsed();
    eventually(Duration::from_secs(5), "4 passing web instances", || {
        passing(4)
    })
    .await;
    eprintln!("kill -9 to serfHealth critical: {detected:?}");
    let members = get_json(&http, &format!("{leader}/v1/agent/members"))
        .await
        .unwrap();
    assert_eq!(member_status(&members, "c1"), Some(4), "failed");

    // Restarted, it is alive and passing again.
    clients[0] = spawn_agent(&client_cfgs[0]);
    eventually(Duration::from_secs(20), "c1 passing again", || async {
        let checks = get_json(&http, &format!("{leader}/v1/health/node/c1")).await?;
        (serf_status(&checks)? == "passing").then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "5 passing again", || passing(5)).await;

    // Graceful leaves: `consulate leave` for c2, SIGTERM for c3. Both are deregistered.
    let out = std::process::Command::new(consulate_bin())
        .args(["leave", "-http-addr", &format!("127.79.{NET}.22:8500")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = clients[2].signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
    assert!(status.success());
    for node in ["c2", "c3"] {
        eventually(
            Duration::from_secs(15),
            "a left node deregistered",
            || async {
                let nodes = get_json(&http, &format!("{leader}/v1/catalog/nodes")).await?;
                (!nodes.as_array()?.iter().any(|n| n["Node"] == node)).then_some(())
            },
        )
        .await;
        let members = get_json(&http, &format!("{leader}/v1/agent/members"))
            .await
            .unwrap();
        assert_eq!(member_status(&members, node), Some(3), "{node} left");
    }
    eventually(Duration::from_secs(5), "3 passing", || passing(3)).await;

    // An agent with the wrong key: its packets are rejected, it never becomes a member.
    let decrypt = "consulate_gossip_packets_dropped_total{pool=\"lan\",reason=\"decrypt\"}";
    let dropped_before = metric(&http, &leader, decrypt).await.unwrap();
    let wrong = format!("encrypt = \"{}\"\n", GossipKey::generate().to_base64());
    let bad_cfg = write_client_with(&dc, &pki, NET, 29, "intruder", &wrong);
    let _bad = spawn_agent(&bad_cfg);
    eventually(
        Duration::from_secs(15),
        "the intruder's packets rejected",
        || async {
            let n = metric(&http, &leader, decrypt).await?;
            (n >= dropped_before + 5.0).then_some(())
        },
    )
    .await;
    let members = get_json(&http, &format!("{leader}/v1/agent/members"))
        .await
        .unwrap();
    assert_eq!(member_status(&members, "intruder"), None);
    let theirs = get_json(
        &http,
        &format!("http://127.79.{NET}.29:8500/v1/agent/members"),
    )
    .await
    .unwrap();
    assert_eq!(theirs.as_array().unwrap().len(), 1, "it knows only itself");
    // Its push-pull syncs were refused too, and counted where they arrived.
    let refused = "consulate_gossip_syncs_total{pool=\"lan\",result=\"decrypt\",side=\"served\"}";
    eventually(
        Duration::from_secs(15),
        "the intruder's syncs refused",
        || {
            let http = http.clone();
            let urls: Vec<String> = (1..=5)
                .map(client_url)
                .chain(
                    dc.addrs[..3]
                        .iter()
                        .map(|a| format!("http://{}:8500", a.ip())),
                )
                .collect();
            async move {
                let mut n = 0.0;
                for url in &urls {
                    n += metric(&http, url, refused).await.unwrap_or(0.0);
                }
                (n >= 1.0).then_some(())
            }
        },
    )
    .await;

    // The server a client uses first (its list comes from gossip, by name: s1) dies: the
    // client keeps serving reads and writes through the others.
    servers[0].signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
    let c4 = client_url(4);
    for i in 0..5 {
        let key = format!("{c4}/v1/kv/after-s1/{i}");
        eventually(Duration::from_secs(15), "a write through c4", || async {
            let r = http.put(&key).body("v").send().await.ok()?;
            (r.text().await.ok()? == "true").then_some(())
        })
        .await;
        let v = get_json(&http, &format!("{c4}/v1/catalog/service/web")).await;
        assert!(v.is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty())));
    }

    // A new leader re-runs the reconciliation: with s1 back, the leader and a client die
    // together; the next leader marks both failed.
    servers[0] = spawn_agent(&dc.configs[0]);
    let li = agreed_leader(&me.client(Alpn::Rpc), &dc.addrs[..3]).await;
    let old_leader = format!("s{}", li + 1);
    servers[li].signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
    clients[4].signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
    let survivors: Vec<_> = (0..3).filter(|i| *i != li).map(|i| dc.addrs[i]).collect();
    let ni = agreed_leader(&me.client(Alpn::Rpc), &survivors).await;
    let new_leader = format!("http://{}:8500", survivors[ni].ip());
    for node in ["c5", old_leader.as_str()] {
        eventually(
            Duration::from_secs(20),
            "failed while the leader changed",
            || async {
                let checks =
                    get_json(&http, &format!("{new_leader}/v1/health/node/{node}")).await?;
                (serf_status(&checks)? == "critical").then_some(())
            },
        )
        .await;
    }
}
