//! Shared test harness: an in-memory PKI, in-process transports, deadlines for polling, and
//! helpers to run the built `consulate` binary as a real process.

pub mod dc;
pub mod wan;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consulate::config::TlsConfig;
use consulate::dispatch::handler::AgentRpc;
use consulate::metrics::Metrics;
use consulate::pki::{self, AgentCertSpec, PemPair, Validity};
use consulate::rpc::{AgentRequest, AgentResponse, Ping};
use consulate::transport::identity::Alpn;
use consulate::transport::rpc::{RpcClient, RpcService};
use consulate::transport::tls::TlsMaterial;
use consulate::transport::{Services, Transport, TransportOptions};
use consulate::vocab::Role;
use tokio_util::sync::CancellationToken;

pub const DOMAIN: &str = "consul";

/// A CA held in memory, issuing certificates on demand.
pub struct TestPki {
    pub ca: PemPair,
}

impl TestPki {
    pub fn new() -> TestPki {
        TestPki {
            ca: pki::create_ca(DOMAIN, Validity::days(1)).unwrap(),
        }
    }

    pub fn pair(&self, role: Role, dc: &str, validity: Validity) -> PemPair {
        let spec = AgentCertSpec {
            role,
            datacenter: dc,
            domain: DOMAIN,
            node: Some("n"),
        };
        pki::create_agent_cert(&self.ca, &spec, validity).unwrap()
    }

    pub fn material_with(&self, pair: &PemPair) -> TlsMaterial {
        TlsMaterial::from_pem(&self.ca.cert_pem, &pair.cert_pem, &pair.key_pem, DOMAIN).unwrap()
    }

    pub fn material(&self, role: Role, dc: &str) -> TlsMaterial {
        self.material_with(&self.pair(role, dc, Validity::days(1)))
    }

    /// Writes the CA and a certificate for (role, dc) into `dir`; returns the config paths.
    pub fn write_files(&self, dir: &Path, role: Role, dc: &str, node: &str) -> TlsConfig {
        let ca = pki::ca_paths(dir, DOMAIN);
        pki::write_pair(&ca, &self.ca, true).unwrap();
        let spec = AgentCertSpec {
            role,
            datacenter: dc,
            domain: DOMAIN,
            node: Some(node),
        };
        let paths = pki::agent_paths(dir, &spec);
        let pair = pki::create_agent_cert(&self.ca, &spec, Validity::days(1)).unwrap();
        pki::write_pair(&paths, &pair, true).unwrap();
        TlsConfig {
            ca_file: ca.cert,
            cert_file: paths.cert,
            key_file: paths.key,
            verify_incoming: false,
        }
    }
}

pub type AgentClient = RpcClient<AgentRequest, AgentResponse>;

/// An in-process QUIC endpoint on 127.0.0.1 serving the agent RPC on every ALPN (so the
/// authorization of each ALPN can be observed through one handler).
pub struct TestNode {
    pub transport: Transport,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

impl TestNode {
    pub fn start(tls: &TlsMaterial, dc: &str, opts: TransportOptions) -> TestNode {
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let handler = Arc::new(AgentRpc::new("node", dc));
        let mut services = Services::default();
        for alpn in Alpn::ALL {
            services = services.with(
                alpn,
                RpcService::new(handler.clone(), opts.max_frame, metrics.transport.clone()),
            );
        }
        let transport = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            dc,
            tls,
            opts,
            metrics.transport.clone(),
        )
        .unwrap();
        transport.serve(services, shutdown.clone());
        TestNode {
            transport,
            metrics,
            shutdown,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    pub fn client(&self, alpn: Alpn) -> AgentClient {
        RpcClient::new(self.transport.clone(), alpn)
    }

    pub fn refused(&self, reason: &str) -> u64 {
        self.metrics
            .transport
            .handshakes_refused
            .with_label_values(&[reason])
            .get()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn ping(
    client: &AgentClient,
    to: SocketAddr,
) -> Result<AgentResponse, consulate::transport::TransportError> {
    client
        .call(
            to,
            None,
            &AgentRequest::from(Ping {
                payload: bytes::Bytes::from_static(b"hello"),
            }),
            Duration::from_secs(5),
        )
        .await
}

/// Polls `f` until it returns `Some` or `deadline` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The built `consulate` binary.
pub fn consulate_bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_consulate").into()
}

/// Runs `consulate ARGS` in `dir` to completion.
pub fn run_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(consulate_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run consulate")
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind;
/// if the test is failing, its log's tail is printed.
pub struct ChildGuard(
    pub Option<std::process::Child>,
    pub Option<std::path::PathBuf>,
);

impl ChildGuard {
    /// Sends `signal` and waits up to `bound` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        bound: Duration,
    ) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let end = Instant::now() + bound;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("process did not exit within {bound:?} after {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking()
            && let Some(log) = &self.1
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("---- {} (last {} lines)", log.display(), tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// Starts `consulate agent --config CONFIG`, logging to `<config>.log`.
pub fn spawn_agent(config: &Path) -> ChildGuard {
    let log_path = config.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(consulate_bin())
        .args(["agent", "--config"])
        .arg(config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn agent");
    ChildGuard(Some(child), Some(log_path))
}

/// `GET url` read as JSON; `None` if it cannot be.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Waits until the agent at `base` names a leader (`query`: `""` for its own DC, or e.g.
/// `"?dc=dc2"` for another).
pub async fn wait_for_leader(http: &reqwest::Client, base: &str, query: &str) {
    let url = format!("{base}/v1/status/leader{query}");
    eventually(
        Duration::from_secs(30),
        &format!("a leader at {url}"),
        || async {
            let leader = get_json(http, &url).await?;
            (!leader.as_str()?.is_empty()).then_some(())
        },
    )
    .await
}

/// The Prometheus exposition of the agent whose HTTP API is at `base`.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Option<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of the Prometheus sample `series` (name and labels exactly as exposed) on the
/// agent whose HTTP API is at `base`; `None` if it cannot be read, 0 if it is not exposed.
pub async fn metric(http: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = scrape(http, base).await?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0),
    )
}

/// The sum of every sample in the Prometheus exposition `text` whose line starts with
/// `prefix` (a family and, if wanted, the start of its labels).
pub fn sum_samples(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP client for the agents' API (TLS through the ring provider, as the agent's own).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().unwrap()
}

/// [`http_client`] with a 20 s bound on every request, for tests that keep loading agents
/// while servers are killed or partitioned (a request never hangs the test).
pub fn http_client_bounded() -> reqwest::Client {
    http_client_builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}

/// [`http_client`]'s builder, for tests that set more options.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(consulate::transport::tls::web_client_config(true))
}

/// A checked application on `bind` (port 0: any): `GET /health` answers with the status
/// code the returned cell holds, or never answers while it holds 0 (a hung target).
pub async fn checked_app(
    bind: &str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU16>,
) {
    use std::sync::atomic::{AtomicU16, Ordering};
    let code = std::sync::Arc::new(AtomicU16::new(200));
    let app = {
        let code = code.clone();
        axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let code = code.clone();
                async move {
                    match code.load(Ordering::SeqCst) {
                        0 => std::future::pending().await,
                        c => axum::http::StatusCode::from_u16(c).unwrap(),
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, code)
}

/// `consulate up ARGS` started in `dir`, its output going to `dir/up.out`.
pub fn spawn_up(dir: &Path, args: &[&str]) -> (ChildGuard, std::path::PathBuf) {
    let out_path = dir.join("up.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let child = std::process::Command::new(consulate_bin())
        .arg("up")
        .args(args)
        .current_dir(dir)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    (ChildGuard(Some(child), Some(out_path.clone())), out_path)
}

/// Waits until `up` reports the federation ready, its whole report printed (the last
/// line of which says how to stop it); its output so far.
pub async fn up_ready(out_path: &Path) -> String {
    eventually(Duration::from_secs(60), "`up` reporting ready", || async {
        let text = std::fs::read_to_string(out_path).ok()?;
        (text.contains("Federation ready") && text.contains("Ctrl-C stops every agent"))
            .then_some(text)
    })
    .await
}

/// Writes the config of agent `node` of `dc` (certificates from `pki`) binding `ip`,
/// joining `lan_join`, with `extra` lines before its `[tls]` table; returns its path.
pub fn write_agent_config(
    dir: &Path,
    pki: &TestPki,
    (node, dc, role): (&str, &str, Role),
    ip: &str,
    lan_join: &str,
    extra: &str,
) -> std::path::PathBuf {
    let tls = pki.write_files(dir, role, dc, &format!("{node}.{dc}"));
    let text = format!(
        "node_name = \"{node}\"\ndatacenter = \"{dc}\"\nrole = \"{role}\"\ndata_dir = \"{node}.{dc}-data\"\nbind_addr = \"{ip}\"\nlan_join = [\"{lan_join}\"]\n{extra}[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls.ca_file.display(),
        tls.cert_file.display(),
        tls.key_file.display()
    );
    let path = dir.join(format!("{node}.{dc}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A small DC `dc<dc>` on 127.<net>.<dc>.x: server `s1` on .1 (bootstrapping alone,
/// joining the WAN pool through DC `wan_join`'s server) and client `c1` on .21 with
/// `client_extra` config lines; the config paths, server first.
pub fn write_small_dc(
    dir: &Path,
    pki: &TestPki,
    (net, dc): (u8, u8),
    wan_join: Option<u8>,
    client_extra: &str,
) -> Vec<std::path::PathBuf> {
    write_small_dc_with(dir, pki, (net, dc), wan_join, "", client_extra)
}

/// [`write_small_dc`] with `server_extra` config lines for the server too.
pub fn write_small_dc_with(
    dir: &Path,
    pki: &TestPki,
    (net, dc): (u8, u8),
    wan_join: Option<u8>,
    server_extra: &str,
    client_extra: &str,
) -> Vec<std::path::PathBuf> {
    let ip = |dc: u8, host: u8| format!("127.{net}.{dc}.{host}");
    let wan = wan_join.map_or(String::new(), |other| {
        format!("wan_join = [\"{}\"]\n", ip(other, 1))
    });
    let dc_name = format!("dc{dc}");
    [("s1", Role::Server, 1), ("c1", Role::Client, 21)]
        .into_iter()
        .map(|(node, role, host)| {
            let extra = match role {
                Role::Server => format!("bootstrap_expect = 1\n{wan}{server_extra}"),
                Role::Client => client_extra.to_string(),
            };
            write_agent_config(
                dir,
                pki,
                (node, &dc_name, role),
                &ip(dc, host),
                &ip(dc, 1),
                &extra,
            )
        })
        .collect()
}

/// The pid `consulate up` (state folder `state`) recorded for agent `node`.
pub fn up_pid(state: &Path, node: &str) -> i32 {
    std::fs::read_to_string(state.join(format!("pids/{node}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// Registers `service` (port, tags) on node `node` at `address`, with one check in
/// `status`, through the catalog API of the agent at `agent` (a base URL).
pub async fn catalog_register(
    http: &reqwest::Client,
    agent: &str,
    (node, address): (&str, &str),
    (service, port, tags): (&str, u16, &[&str]),
    status: &str,
) {
    let body = serde_json::json!({
        "Node": node, "Address": address,
        "Service": {"Service": service, "ID": format!("{service}-{node}"), "Port": port,
                    "Tags": tags},
        "Check": {"CheckID": format!("{service}-{node}-health"), "Name": "health",
                  "Status": status, "ServiceID": format!("{service}-{node}")}
    });
    register_body(http, agent, &body).await;
}

/// `PUT /v1/catalog/register` of `body` through the agent at `agent` (a base URL); panics
/// with the agent's answer unless it succeeded.
pub async fn register_body(http: &reqwest::Client, agent: &str, body: &serde_json::Value) {
    let r = http
        .put(format!("{agent}/v1/catalog/register"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// The A records `dig` gets for `name` from the agent at `server` (DNS port 8600).
pub fn dig_a(server: &str, name: &str) -> Vec<String> {
    let out = std::process::Command::new("dig")
        .args([&format!("@{server}"), "-p", "8600", "+time=3", "+tries=1"])
        .args([name, "A", "+short"])
        .output()
        .expect("dig must be installed (.ci/run installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// `v` in base64, as Consul's JSON carries values.
pub fn base64_of(v: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v)
}
