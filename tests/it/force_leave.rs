//! Real processes: `PUT /v1/agent/force-leave` of a dead client (LAN: shown as left, its
//! node leaves the catalog) and, with `consulate force-leave -prune -wan`, of a
//! decommissioned DC's server (WAN: the
//! DC disappears from `catalog/datacenters` and a `?dc=` request for it fails at once with
//! no server to try); a live member and an unknown one are refused.

use std::time::Duration;

use crate::common::*;

const NET: u8 = 72;

/// `name`'s status code in the member list at `url` (`None`: not listed).
async fn status(http: &reqwest::Client, url: &str, name: &str) -> Option<Option<u64>> {
    let v = get_json(http, url).await?;
    Some(
        v.as_array()?
            .iter()
            .find(|m| m["Name"] == name)
            .and_then(|m| m["Status"].as_u64()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_leave_removes_a_dead_client_and_prunes_a_decommissioned_dc() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let dc1 = write_small_dc(dir.path(), &pki, (NET, 1), None, "");
    let dc2 = write_small_dc(dir.path(), &pki, (NET, 2), Some(1), "");
    let _s1 = spawn_agent(&dc1[0]);
    let mut c1 = spawn_agent(&dc1[1]);
    let mut dc2_agents: Vec<ChildGuard> = dc2.iter().map(|c| spawn_agent(c)).collect();
    let http = http_client_bounded();
    let s1 = format!("http://127.{NET}.1.1:8500");
    let put = |path: String| {
        let req = http.put(format!("{s1}{path}"));
        async move {
            let r = req.send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
        }
    };
    eventually(
        Duration::from_secs(30),
        "both DCs federated, c1 in the catalog",
        || async {
            let dcs = get_json(&http, &format!("{s1}/v1/catalog/datacenters")).await?;
            let nodes = get_json(&http, &format!("{s1}/v1/catalog/nodes")).await?;
            (dcs.as_array()?.len() == 2 && nodes.as_array()?.iter().any(|n| n["Node"] == "c1"))
                .then_some(())
        },
    )
    .await;

    // Refused: a live member, an unknown one.
    let (code, text) = put("/v1/agent/force-leave/c1".into()).await.unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("alive"), "{text}");
    let (code, text) = put("/v1/agent/force-leave/nobody".into()).await.unwrap();
    assert_eq!(code, 404, "{text}");

    // LAN: a dead client forced out is left, and its node leaves the catalog.
    c1.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    let members = format!("{s1}/v1/agent/members");
    // Forced out once gossip holds it failed (a young member's liveness may flap once
    // before its death is settled, so a refusal as alive is retried, never accepted).
    eventually(
        Duration::from_secs(30),
        "c1 failed and forced out",
        || async {
            (status(&http, &members, "c1").await? == Some(4)).then_some(())?;
            let (code, _) = put("/v1/agent/force-leave/c1".into()).await?;
            (code == 200).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "c1 left and deregistered",
        || async {
            let nodes = get_json(&http, &format!("{s1}/v1/catalog/nodes")).await?;
            (status(&http, &members, "c1").await? == Some(3)
                && !nodes.as_array()?.iter().any(|n| n["Node"] == "c1"))
            .then_some(())
        },
    )
    .await;

    // WAN: dc2 decommissioned (its agents killed), then pruned.
    for a in &mut dc2_agents {
        a.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    }
    let wan = format!("{s1}/v1/agent/members?wan=1");
    eventually(
        Duration::from_secs(30),
        "s1.dc2 failed in the WAN pool",
        || async { (status(&http, &wan, "s1.dc2").await? == Some(4)).then_some(()) },
    )
    .await;
    // Through the CLI, as an operator would.
    let out = std::process::Command::new(consulate_bin())
        .args(["force-leave", "-prune", "-wan", "-http-addr"])
        .arg(format!("127.{NET}.1.1:8500"))
        .arg("s1.dc2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(30), "dc2 gone", || async {
        let dcs = get_json(&http, &format!("{s1}/v1/catalog/datacenters")).await?;
        (dcs == serde_json::json!(["dc1"]) && status(&http, &wan, "s1.dc2").await?.is_none())
            .then_some(())
    })
    .await;
    let r = http
        .get(format!("{s1}/v1/kv/x?dc=dc2"))
        .send()
        .await
        .unwrap();
    let (code, text) = (r.status().as_u16(), r.text().await.unwrap());
    assert!(
        code >= 400 && text.contains("No path to datacenter"),
        "{code} {text}"
    );
}
