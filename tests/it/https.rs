//! The HTTP API over TLS (`ports.https`), as real processes with ACLs on: curl and the CLI
//! reach a server that requires client certificates (`verify_incoming`) only with one
//! signed by the federation's CA, and a client agent without that requirement with the CA
//! alone; plain HTTP keeps working beside it; a plain-HTTP request or a foreign certificate
//! on the HTTPS port is refused and counted.

use std::path::Path;
use std::time::Duration;

use consulate::pki::{self, AgentCertSpec, PemPaths, Validity};
use consulate::vocab::Role;

use crate::common::*;

const NET: u8 = 76;
const ROOT: &str = "root-secret-https";

/// Runs curl against `url` (named `name`, reached at `addr`) with `args`; its exit code
/// and output.
fn curl(name_at: (&str, &str), url: &str, args: &[&str]) -> (i32, String) {
    let (name, addr) = name_at;
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{addr}"))
        .args(["-H", &format!("X-Consul-Token: {ROOT}")])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn write_cert(dir: &Path, pki: &TestPki, role: Role, name: &str) -> PemPaths {
    let pair = pki::create_agent_cert(
        &pki.ca,
        &AgentCertSpec {
            role,
            datacenter: "dc1",
            domain: "consul",
            node: None,
        },
        Validity::days(1),
    )
    .unwrap();
    let paths = PemPaths {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    pki::write_pair(&paths, &pair, true).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_and_without_client_certificates() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ip = |host: u8| format!("127.{NET}.1.{host}");
    let acl = |initial: &str| {
        format!(
            "primary_datacenter = \"dc1\"\nacl = {{ enabled = true, default_policy = \"deny\", tokens = {{ {initial}agent = \"{ROOT}\" }} }}\n"
        )
    };
    let server = write_agent_config(
        dir.path(),
        &pki,
        ("s1", "dc1", Role::Server),
        &ip(1),
        &ip(1),
        &format!(
            "bootstrap_expect = 1\nports = {{ https = 8501 }}\n{}",
            acl(&format!("initial_management = \"{ROOT}\", "))
        ),
    );
    // `verify_incoming` is a key of the `[tls]` table the helper writes last.
    let text = std::fs::read_to_string(&server).unwrap() + "verify_incoming = true\n";
    std::fs::write(&server, text).unwrap();
    let client = write_agent_config(
        dir.path(),
        &pki,
        ("c1", "dc1", Role::Client),
        &ip(9),
        &ip(1),
        &format!("ports = {{ https = 8501 }}\n{}", acl("")),
    );
    let _agents = [spawn_agent(&server), spawn_agent(&client)];
    let ca = pki::ca_paths(dir.path(), "consul").cert;
    let ca = ca.to_str().unwrap();
    let cert = write_cert(dir.path(), &pki, Role::Client, "cli");
    let (cert_file, key_file) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let foreign_pki = TestPki::new();
    let foreign = write_cert(dir.path(), &foreign_pki, Role::Client, "foreign");

    // The server requires a client certificate signed by the CA.
    let s = ("server.dc1.consul", &*format!("8501:{}", ip(1)));
    let leader = "https://server.dc1.consul:8501/v1/status/leader";
    let with_cert = ["--cacert", ca, "--cert", cert_file, "--key", key_file];
    eventually(
        Duration::from_secs(30),
        "HTTPS with a client certificate",
        || async {
            let (code, out) = curl(s, leader, &with_cert);
            (code == 0 && out.contains(":8300")).then_some(())
        },
    )
    .await;
    let (code, out) = curl(s, leader, &["--cacert", ca]);
    assert_ne!(code, 0, "no client certificate: {out}");
    let foreign_cert = [
        "--cacert",
        ca,
        "--cert",
        foreign.cert.to_str().unwrap(),
        "--key",
        foreign.key.to_str().unwrap(),
    ];
    let (code, out) = curl(s, leader, &foreign_cert);
    assert_ne!(code, 0, "a certificate of another CA: {out}");
    // The agent's certificate is checked by curl too: without the CA it is unknown.
    let (code, out) = curl(s, leader, &["--cert", cert_file, "--key", key_file]);
    assert_ne!(code, 0, "an unknown issuer: {out}");

    // The client agent serves HTTPS without requiring a certificate; plain HTTP beside it.
    let c = ("client.dc1.consul", &*format!("8501:{}", ip(9)));
    let kv = "https://client.dc1.consul:8501/v1/kv/tls/k";
    eventually(Duration::from_secs(30), "a write over HTTPS", || async {
        let (code, out) = curl(c, kv, &["--cacert", ca, "-X", "PUT", "--data", "v1"]);
        (code == 0 && out == "true").then_some(())
    })
    .await;
    let (code, out) = curl(c, &format!("{kv}?raw"), &["--cacert", ca]);
    assert_eq!((code, out.as_str()), (0, "v1"));
    let http = http_client_bounded();
    let plain = http
        .get(format!("http://{}:8500/v1/kv/tls/k?raw", ip(9)))
        .header("X-Consul-Token", ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.text().await.unwrap(), "v1");

    // A plain-HTTP request on the HTTPS port is refused and counted.
    let (code, _) = curl(
        ("unused", "1:127.0.0.1"),
        &format!("http://{}:8501/v1/status/leader", ip(9)),
        &[],
    );
    assert_ne!(code, 0);
    let refused = |base: String| {
        let req = http
            .get(format!("{base}/metrics"))
            .header("X-Consul-Token", ROOT);
        async move {
            let text = req.send().await.ok()?.text().await.ok()?;
            let series = "consulate_http_connections_refused_total{reason=\"tls_handshake\"} ";
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.parse::<f64>().ok())
        }
    };
    eventually(
        Duration::from_secs(10),
        "handshakes refused, counted",
        || async {
            let client = refused(format!("http://{}:8500", ip(9))).await?;
            let server = refused(format!("http://{}:8500", ip(1))).await?;
            (client >= 1.0 && server >= 3.0).then_some(())
        },
    )
    .await;

    // The CLI: flags, and Consul's environment variables.
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(consulate_bin())
            .args(args)
            .envs(env.iter().copied())
            .env("CONSUL_HTTP_TOKEN", ROOT)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let server_url = format!("https://{}:8501", ip(1));
    let (ok, out) = cli(
        &[
            "kv",
            "get",
            "tls/k",
            "-http-addr",
            &server_url,
            "-ca-file",
            ca,
            "-client-cert",
            cert_file,
            "-client-key",
            key_file,
            "-tls-server-name",
            "server.dc1.consul",
        ],
        &[],
    );
    assert!(ok && out.trim() == "v1", "{out}");
    let env = [
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_CACERT", ca),
        ("CONSUL_TLS_SERVER_NAME", "client.dc1.consul"),
    ];
    let client_addr = format!("{}:8501", ip(9));
    let (ok, out) = cli(&["kv", "get", "tls/k", "-http-addr", &client_addr], &env);
    assert!(ok && out.trim() == "v1", "{out}");
    // Without a client certificate the server refuses the CLI, which says why.
    let (ok, out) = cli(
        &["kv", "get", "tls/k", "-http-addr", &server_url],
        &[
            ("CONSUL_CACERT", ca),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ],
    );
    assert!(!ok && out.contains("cannot reach the agent"), "{out}");
}
