//! A datacenter of real server processes for the process-tier tests: configs on 127.79.<net>.x,
//! and the probes that tell who leads and what each server holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use consulate::rpc::{
    AgentRequest, AgentResponse, Call, GetServerInfo, Read, ReadOptions, ReadOutcome, ServerInfo,
    Write,
};
use consulate::state::query::{Query, QueryResult};
use consulate::state::{Command, CommandResult};
use consulate::vocab::ReadMode;
use consulate::vocab::Role;

use super::{AgentClient, TestPki, eventually};

pub struct Dc {
    pub dir: tempfile::TempDir,
    pub configs: Vec<PathBuf>,
    pub addrs: Vec<SocketAddr>,
}

/// Four servers on 127.79.<net>.1-4; the first three bootstrap (`bootstrap_expect = 3`),
/// the fourth has no `bootstrap_expect` and may only join an existing cluster.
pub fn write_dc(net: u8, pki: &TestPki) -> Dc {
    write_dc_with(net, pki, "")
}

/// [`write_dc`] with `extra` top-level config lines in every server's file.
pub fn write_dc_with(net: u8, pki: &TestPki, extra: &str) -> Dc {
    let dir = tempfile::tempdir().unwrap();
    let ips: Vec<String> = (1..=4).map(|i| format!("127.79.{net}.{i}")).collect();
    let mut configs = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let node = format!("s{}", i + 1);
        let tls = pki.write_files(dir.path(), Role::Server, "dc1", &node);
        let join: Vec<String> = ips
            .iter()
            .filter(|o| *o != ip)
            .map(|o| format!("\"{o}\""))
            .collect();
        let expect = if i < 3 { "bootstrap_expect = 3\n" } else { "" };
        let text = format!(
            "node_name = \"{node}\"\ndatacenter = \"dc1\"\nrole = \"server\"\ndata_dir = \"{node}-data\"\nbind_addr = \"{ip}\"\n{expect}{extra}lan_join = [{}]\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            join.join(", "),
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display()
        );
        let path = dir.path().join(format!("{node}.toml"));
        std::fs::write(&path, text).unwrap();
        configs.push(path);
    }
    let addrs = ips
        .iter()
        .map(|ip| format!("{ip}:8300").parse().unwrap())
        .collect();
    Dc {
        dir,
        configs,
        addrs,
    }
}

/// An in-process node with a client agent's identity in dc1 and its RPC client: how the
/// process tests probe servers (the node must outlive the client's use).
pub fn prober(pki: &TestPki) -> (super::TestNode, AgentClient) {
    let me = super::TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        consulate::transport::TransportOptions::default(),
    );
    let client = me.client(consulate::transport::identity::Alpn::Rpc);
    (me, client)
}

pub async fn info(client: &AgentClient, addr: SocketAddr) -> Option<ServerInfo> {
    let req = AgentRequest::from(GetServerInfo);
    let reply = client.call(addr, None, &req, Duration::from_secs(1)).await;
    reply
        .ok()
        .and_then(|r| GetServerInfo::reply(r).ok())
        .flatten()
}

/// Waits until every address in `addrs` reports the same leader; returns its index.
pub async fn agreed_leader(client: &AgentClient, addrs: &[SocketAddr]) -> usize {
    eventually(
        Duration::from_secs(15),
        "all servers agree on a leader",
        || async {
            let mut leader = None;
            for a in addrs {
                let l = info(client, *a).await?.leader?;
                if leader.get_or_insert(l.clone()) != &l {
                    return None;
                }
            }
            let l = leader?;
            addrs.iter().position(|a| a.to_string() == l.addr)
        },
    )
    .await
}

pub async fn put(client: &AgentClient, addr: SocketAddr, key: &str) -> bool {
    let req = AgentRequest::from(Write {
        dc: None,
        cmd: Command::KvSet {
            key: key.into(),
            value: Bytes::from_static(b"v"),
            flags: 0,
        },
        token: None,
    });
    matches!(
        client.call(addr, None, &req, Duration::from_secs(5)).await,
        Ok(AgentResponse::Write(Ok(CommandResult::Bool(true))))
    )
}

pub fn data_dir(dc: &Dc, i: usize) -> PathBuf {
    dc.dir.path().join(format!("s{}-data", i + 1))
}

pub fn has_keys(dir: &Path) -> bool {
    dir.join("raft/log").is_dir()
}

/// The KV keys under `prefix` in the server's own (stale) state.
pub async fn keys_on(client: &AgentClient, addr: SocketAddr, prefix: &str) -> Option<Vec<String>> {
    let req = AgentRequest::from(Read {
        dc: None,
        query: Query::KvKeys {
            prefix: prefix.into(),
            separator: None,
        },
        opts: ReadOptions::now(ReadMode::Stale),
        token: None,
    });
    match client.call(addr, None, &req, Duration::from_secs(5)).await {
        Ok(AgentResponse::Read(Ok(ReadOutcome {
            result: QueryResult::Keys(k),
            ..
        }))) => Some(k),
        _ => None,
    }
}

/// A client agent `node` of the DC on 127.79.<net>.<host>, joining the first three servers,
/// with a 1 s anti-entropy interval.
pub fn write_client(dc: &Dc, pki: &TestPki, net: u8, host: u8, node: &str) -> PathBuf {
    write_client_with(dc, pki, net, host, node, "")
}

/// [`write_client`] with `extra` top-level config lines.
pub fn write_client_with(
    dc: &Dc,
    pki: &TestPki,
    net: u8,
    host: u8,
    node: &str,
    extra: &str,
) -> PathBuf {
    let ip = format!("127.79.{net}.{host}");
    let tls = pki.write_files(dc.dir.path(), Role::Client, "dc1", node);
    let join: Vec<String> = dc.addrs[..3]
        .iter()
        .map(|a| format!("\"{}\"", a.ip()))
        .collect();
    let text = format!(
        "node_name = \"{node}\"\ndatacenter = \"dc1\"\nrole = \"client\"\ndata_dir = \"{node}-data\"\nbind_addr = \"{ip}\"\nsync_interval = \"1s\"\n{extra}lan_join = [{}]\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        join.join(", "),
        tls.ca_file.display(),
        tls.cert_file.display(),
        tls.key_file.display()
    );
    let path = dc.dir.path().join(format!("{node}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// An in-process observer holding a dc1 client certificate, and the index in `addrs` of
/// the leader all those servers agree on.
pub async fn observe_leader(pki: &TestPki, addrs: &[SocketAddr]) -> (super::TestNode, usize) {
    let me = super::TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        consulate::transport::TransportOptions::default(),
    );
    let li = agreed_leader(&me.client(consulate::transport::identity::Alpn::Rpc), addrs).await;
    (me, li)
}
