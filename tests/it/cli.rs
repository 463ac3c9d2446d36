//! The built binary as a real process: certificate commands, topology rendering, config
//! errors, and an agent that serves QUIC and stops cleanly on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use consulate::config::AgentConfig;
use consulate::transport::TransportOptions;
use consulate::transport::identity::Alpn;
use consulate::vocab::Role;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_commands_make_consul_style_files_and_refuse_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out = run_cli(d, &["tls", "cert", "create", "--server", "--dc", "dc1"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("consulate tls ca create"),
        "{}",
        stderr_of(&out)
    );

    assert!(run_cli(d, &["tls", "ca", "create"]).status.success());
    let again = run_cli(d, &["tls", "ca", "create"]);
    assert!(!again.status.success());
    assert!(stderr_of(&again).contains("already exists"));
    assert!(
        run_cli(d, &["tls", "ca", "create", "--force"])
            .status
            .success()
    );

    let s = run_cli(
        d,
        &[
            "tls", "cert", "create", "--server", "--dc", "dc1", "--node", "s1",
        ],
    );
    assert!(s.status.success(), "{}", stderr_of(&s));
    assert!(
        run_cli(d, &["tls", "cert", "create", "--client", "--dc", "dc1"])
            .status
            .success()
    );
    assert!(
        run_cli(d, &["tls", "cert", "create", "--client", "--dc", "dc1"])
            .status
            .success()
    );
    let both = run_cli(
        d,
        &[
            "tls", "cert", "create", "--server", "--client", "--dc", "dc1",
        ],
    );
    assert!(!both.status.success());

    let certs = d.join("certs");
    for f in [
        "consul-agent-ca.pem",
        "dc1-server-consul-s1.pem",
        "dc1-client-consul-0.pem",
        "dc1-client-consul-1.pem",
    ] {
        assert!(certs.join(f).is_file(), "{f}");
    }
    for key in [
        "consul-agent-ca-key.pem",
        "dc1-server-consul-s1-key.pem",
        "dc1-client-consul-0-key.pem",
    ] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let again = run_cli(
        d,
        &[
            "tls", "cert", "create", "--server", "--dc", "dc1", "--node", "s1",
        ],
    );
    assert!(!again.status.success());
}

#[test]
fn topology_render_writes_loadable_configs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topo = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/local-3dc.toml");
    let out = run_cli(
        d,
        &["topology", "render", topo.to_str().unwrap(), "--out", "cfg"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mut files: Vec<_> = std::fs::read_dir(d.join("cfg"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 12);
    // The configs point at certificates `up` would create; create them and load every config.
    assert!(run_cli(d, &["tls", "ca", "create"]).status.success());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        let role = if cfg.role == Role::Server {
            "--server"
        } else {
            "--client"
        };
        let made = run_cli(
            d,
            &[
                "tls",
                "cert",
                "create",
                role,
                "--dc",
                &cfg.datacenter,
                "--node",
                &cfg.node_name,
            ],
        );
        assert!(made.status.success(), "{}", stderr_of(&made));
        let loaded = AgentConfig::load(f).unwrap();
        assert!(
            loaded.data_dir.starts_with(d.canonicalize().unwrap())
                || loaded.data_dir.starts_with(d)
        );
    }
}

/// Writes a valid server config for 127.77.<n>.1 with its certificates; returns its path.
fn valid_config(dir: &Path, n: u8, pki: &TestPki) -> std::path::PathBuf {
    let tls = pki.write_files(dir, Role::Server, "dc1", "s1");
    let text = format!(
        r#"node_name = "s1"
datacenter = "dc1"
role = "server"
data_dir = "data"
bind_addr = "127.77.{n}.1"
bootstrap_expect = 1

[ports]
http = 18500
dns = 18600
lan = 18301
quic = 18300

[tls]
ca_file = "{}"
cert_file = "{}"
key_file = "{}"
"#,
        tls.ca_file.display(),
        tls.cert_file.display(),
        tls.key_file.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_one_line_error(config: &Path, wants: &[&str]) {
    let out = std::process::Command::new(consulate_bin())
        .args(["agent", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "agent must refuse this config");
    let err = stderr_of(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got: {err}");
    for w in wants {
        assert!(err.contains(w), "{err:?} should mention {w:?}");
    }
}

#[test]
fn bad_configs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let good = valid_config(dir.path(), 1, &pki);
    let text = std::fs::read_to_string(&good).unwrap();
    let write = |body: String| {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, body).unwrap();
        p
    };

    let unknown = write(text.replace("role = \"server\"", "role = \"server\"\ncolour = \"blue\""));
    assert_one_line_error(&unknown, &["bad.toml:4", "unknown field `colour`"]);

    let bad_addr = write(text.replace("127.77.1.1", "300.1.2.3"));
    assert_one_line_error(&bad_addr, &["bad.toml:5", "invalid IP address"]);

    let bad_join = write(text.replace(
        "bootstrap_expect = 1",
        "bootstrap_expect = 1\nlan_join = [\"nowhere:99\"]",
    ));
    assert_one_line_error(&bad_join, &["bad.toml:7", "nowhere:99"]);

    let missing = write(text.replace("-key.pem", "-gone.pem"));
    assert_one_line_error(&missing, &["`tls.key_file`", "does not exist"]);

    let client_wan = write(
        text.replace("role = \"server\"", "role = \"client\"")
            .replace("bootstrap_expect = 1", "wan_join = [\"127.0.0.9\"]"),
    );
    assert_one_line_error(&client_wan, &["bad.toml:6", "`wan_join`", "only servers"]);

    let client_raft = write(
        text.replace("role = \"server\"", "role = \"client\"")
            .replace("bootstrap_expect = 1", "raft_trailing_logs = 10"),
    );
    assert_one_line_error(
        &client_raft,
        &["bad.toml:6", "`raft_trailing_logs`", "only servers"],
    );

    let no_snapshots = write(text.replace(
        "bootstrap_expect = 1",
        "bootstrap_expect = 1\nraft_snapshot_threshold = 0",
    ));
    assert_one_line_error(
        &no_snapshots,
        &["bad.toml:7", "`raft_snapshot_threshold`", "at least 1"],
    );

    let hasty_snapshots = write(text.replace(
        "bootstrap_expect = 1",
        "bootstrap_expect = 1\nraft_snapshot_interval = \"1ms\"",
    ));
    assert_one_line_error(
        &hasty_snapshots,
        &["bad.toml:7", "`raft_snapshot_interval`", "at least 5ms"],
    );

    let bad_port = write(text.replace("http = 18500", "http = 70000"));
    assert_one_line_error(&bad_port, &["bad.toml:9"]);

    let bad_key = write(text.replace(
        "bootstrap_expect = 1",
        "bootstrap_expect = 1\nencrypt = \"c2hvcnQ=\"",
    ));
    assert_one_line_error(&bad_key, &["bad.toml:7", "expected 32"]);

    // A server config holding a client certificate fails at start-up, not at first use.
    let client_tls = pki.write_files(dir.path(), Role::Client, "dc1", "c1");
    let wrong_cert = write(
        text.replace(
            &format!(
                "cert_file = \"{}\"",
                dir.path().join("dc1-server-consul-s1.pem").display()
            ),
            &format!("cert_file = \"{}\"", client_tls.cert_file.display()),
        )
        .replace(
            &format!(
                "key_file = \"{}\"",
                dir.path().join("dc1-server-consul-s1-key.pem").display()
            ),
            &format!("key_file = \"{}\"", client_tls.key_file.display()),
        ),
    );
    assert_one_line_error(
        &wrong_cert,
        &["is for client.dc1", "configured as server.dc1"],
    );

    let missing_file = dir.path().join("nope.toml");
    assert_one_line_error(&missing_file, &["nope.toml", "cannot read"]);
}

#[tokio::test]
async fn agent_process_serves_quic_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let config = valid_config(dir.path(), 2, &pki);
    let mut agent = spawn_agent(&config);
    let addr = "127.77.2.1:18300".parse().unwrap();

    let me = TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let pong = eventually(
        Duration::from_secs(10),
        "agent answering over QUIC",
        || async { ping(&me.client(Alpn::Rpc), addr).await.ok() },
    )
    .await;
    let consulate::rpc::AgentResponse::Ping(Ok(consulate::rpc::Pong {
        node, datacenter, ..
    })) = pong
    else {
        panic!("expected a pong, got {pong:?}")
    };
    assert_eq!((node.as_str(), datacenter.as_str()), ("s1", "dc1"));

    let status = agent.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5));
    assert!(status.success(), "graceful exit, got {status}");
    // The port is free again.
    std::net::UdpSocket::bind("127.77.2.1:18300").expect("QUIC port released");
}
