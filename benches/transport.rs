//! Transport benchmark: agent RPC round trips over QUIC (mutual TLS, one connection, a
//! stream per request) against a baseline measured in the same run: the same framed,
//! MessagePack-encoded echo over plain tokio TCP without TLS (one connection per in-flight
//! request, since plain TCP cannot multiplex). Also the CPU an idle agent process spends.
//!
//! `cargo bench --bench transport` (set BENCH_SECS to change the 5 s per measurement).

#[allow(dead_code)] // the bench uses a few of the suite's helpers
#[path = "../tests/it/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use consulate::dispatch::handler::AgentRpc;
use consulate::rpc::{AgentRequest, AgentResponse, Ping};
use consulate::transport::TransportOptions;
use consulate::transport::identity::{Alpn, Identity};
use consulate::transport::rpc::Handler;
use consulate::vocab::Role;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const PAYLOAD: &[u8] = &[7u8; 64];

struct Stats {
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn from(mut lat: Vec<Duration>, elapsed: Duration) -> Stats {
        lat.sort_unstable();
        let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
        Stats {
            requests: lat.len(),
            elapsed,
            p50: q(0.50),
            p99: q(0.99),
        }
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn request() -> AgentRequest {
    AgentRequest::from(Ping {
        payload: Bytes::from_static(PAYLOAD),
    })
}

/// Runs `concurrency` loops of `call` for `secs`, collecting every round trip.
async fn drive<F, Fut>(concurrency: usize, secs: Duration, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let end = start + secs;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while Instant::now() < end {
                    let t = Instant::now();
                    call(i).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Stats::from(all, start.elapsed())
}

/// A runtime of its own for the server side, as a separate agent process would have, so
/// client and server do not share worker threads. `BENCH_CT` makes both sides single-threaded.
fn server_runtime() -> tokio::runtime::Runtime {
    runtime()
}

fn runtime() -> tokio::runtime::Runtime {
    if std::env::var("BENCH_CT").is_ok() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

/// The baseline server: the same handler and codec over plain TCP.
async fn tcp_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(AgentRpc::new("bench", "dc1"));
    let peer = Identity {
        role: Role::Server,
        datacenter: "dc1".into(),
    };
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            let (handler, peer) = (handler.clone(), peer.clone());
            tokio::spawn(async move {
                let mut framed = Framed::new(sock, LengthDelimitedCodec::new());
                while let Some(Ok(frame)) = framed.next().await {
                    let req: AgentRequest = rmp_serde::from_slice(&frame).unwrap();
                    let resp = handler.handle(&peer, req).await;
                    let reply: Result<AgentResponse, ()> = Ok(resp);
                    let out = rmp_serde::to_vec_named(&reply).unwrap();
                    if framed.send(Bytes::from(out)).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn tcp_bench(
    server_rt: &tokio::runtime::Handle,
    concurrency: usize,
    secs: Duration,
) -> Stats {
    let addr = server_rt.spawn(tcp_server()).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        conns.push(Arc::new(tokio::sync::Mutex::new(Framed::new(
            s,
            LengthDelimitedCodec::new(),
        ))));
    }
    drive(concurrency, secs, move |i| {
        let conn = conns[i].clone();
        async move {
            let mut c = conn.lock().await;
            let req = rmp_serde::to_vec_named(&request()).unwrap();
            c.send(Bytes::from(req)).await.unwrap();
            let frame = c.next().await.unwrap().unwrap();
            let reply: Result<AgentResponse, ()> = rmp_serde::from_slice(&frame).unwrap();
            assert!(reply.is_ok());
        }
    })
    .await
}

async fn quic_bench(
    server_rt: &tokio::runtime::Handle,
    pki: &TestPki,
    concurrency: usize,
    secs: Duration,
) -> Stats {
    let server = {
        let _guard = server_rt.enter();
        TestNode::start(
            &pki.material(Role::Server, "dc1"),
            "dc1",
            TransportOptions::default(),
        )
    };
    let client_node = TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let client = client_node.client(Alpn::Rpc);
    let addr = server.addr();
    // Warm the pooled connection so the handshake is not measured.
    ping(&client, addr).await.unwrap();
    let stats = drive(concurrency, secs, move |_| {
        let client = client.clone();
        async move {
            client
                .call(addr, None, &request(), Duration::from_secs(5))
                .await
                .unwrap();
        }
    })
    .await;
    drop(client_node);
    server.shutdown.cancel();
    server_rt.spawn(async move { drop(server) });
    stats
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap() // utime + stime
}

/// CPU share of an idle agent process holding one open (keep-alive) connection.
async fn idle_agent_cpu(pki: &TestPki, secs: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let tls = pki.write_files(dir.path(), Role::Server, "dc1", "s1");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_name = \"s1\"\ndatacenter = \"dc1\"\nrole = \"server\"\ndata_dir = \"data\"\nbind_addr = \"127.78.0.1\"\nbootstrap_expect = 1\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display()
        ),
    )
    .unwrap();
    let agent = spawn_agent(&config);
    let me = TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let addr: SocketAddr = "127.78.0.1:8300".parse().unwrap();
    eventually(Duration::from_secs(10), "agent up", || async {
        ping(&me.client(Alpn::Rpc), addr).await.ok()
    })
    .await;
    let hz = 100.0; // USER_HZ on Linux
    let pid = agent.0.as_ref().expect("running").id() as i32;
    let before = cpu_ticks(pid);
    tokio::time::sleep(secs).await;
    let used = (cpu_ticks(pid) - before) as f64 / hz;
    used / secs.as_secs_f64() * 100.0
}

fn main() {
    let secs = Duration::from_secs(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let rt = runtime();
    let server_rt = std::thread::spawn(|| {
        let rt = server_runtime();
        let handle = rt.handle().clone();
        std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
        handle
    })
    .join()
    .unwrap();
    rt.block_on(async {
        let pki = TestPki::new();
        println!(
            "# transport benchmark: 64-byte ping/echo, {}s per row, {} CPUs",
            secs.as_secs(),
            std::thread::available_parallelism().unwrap()
        );
        println!("| transport | in flight | requests/s | p50 | p99 |");
        println!("|---|---|---|---|---|");
        let mut rows = Vec::new();
        for c in [1usize, 64] {
            let tcp = tcp_bench(&server_rt, c, secs).await;
            let quic = quic_bench(&server_rt, &pki, c, secs).await;
            for (name, s) in [("plain TCP (baseline)", &tcp), ("QUIC + mTLS", &quic)] {
                println!(
                    "| {name} | {c} | {:.0} | {:?} | {:?} |",
                    s.rps(),
                    s.p50,
                    s.p99
                );
            }
            rows.push((c, tcp, quic));
        }
        for (c, tcp, quic) in &rows {
            println!(
                "ratio at {c} in flight: QUIC/TCP requests/s = {:.2}, p50 QUIC/TCP = {:.2}",
                quic.rps() / tcp.rps(),
                quic.p50.as_secs_f64() / tcp.p50.as_secs_f64()
            );
        }
        let idle = idle_agent_cpu(&pki, Duration::from_secs(20)).await;
        println!("idle agent with one open connection: {idle:.2}% of one core over 20 s");
    });
}
