//! `consulate up` as a user runs it: the shipped topologies brought up by one command, the
//! README's tour run command by command against it, a second `up` refused, a crashed agent
//! reported (and restarted with `--restart`), and SIGTERM taking everything down with every
//! agent gone and every port free. Both tests use the shipped topologies' fixed addresses
//! (127.0.<dc>.<n>), so nextest runs them one at a time (`.config/nextest.toml`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

/// A directory laid out as the repository's root is for a user: `topology/` (linked to the
/// shipped one), and room for `certs/` and `.consulate/`.
fn user_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology");
    std::os::unix::fs::symlink(shipped, dir.path().join("topology")).unwrap();
    dir
}

/// `consulate status [TOPOLOGY] -format FORMAT` run in `dir`, with the management token of
/// `up --acl` when there is one (as its output tells users to export it).
fn status(dir: &Path, topology: Option<&str>, format: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(consulate_bin());
    cmd.arg("status")
        .args(topology)
        .args(["-format", format])
        .current_dir(dir)
        .env_remove("CONSUL_HTTP_TOKEN");
    if let Ok(token) = std::fs::read_to_string(dir.join(".consulate/acl-management-token")) {
        cmd.env("CONSUL_HTTP_TOKEN", token.trim());
    }
    cmd.output().unwrap()
}

/// Polls `consulate status` until every agent's own view has converged (`up`'s readiness
/// check looks at the best-informed server of each DC); its JSON report.
async fn healthy(dir: &Path, topology: Option<&str>) -> serde_json::Value {
    let out = eventually(Duration::from_secs(20), "status healthy", || async {
        let out = status(dir, topology, "json");
        out.status.success().then_some(out)
    })
    .await;
    serde_json::from_slice(&out.stdout).unwrap()
}

/// SIGTERM to `up`: every agent stops in bounded time and leaves its ports free.
fn stop_and_check(up: &mut ChildGuard, state: &Path, addrs: &[String]) -> Duration {
    let t = Instant::now();
    let exit = up.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    let took = t.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let leftovers = processes_mentioning(&state.display().to_string());
    assert!(leftovers.is_empty(), "agents still running: {leftovers:?}");
    for ip in addrs {
        std::net::TcpListener::bind(format!("{ip}:8500")).expect("HTTP port free");
        std::net::UdpSocket::bind(format!("{ip}:8301")).expect("LAN gossip port free");
        std::net::UdpSocket::bind(format!("{ip}:8300")).expect("QUIC port free");
    }
    assert!(!state.join("up.pid").exists(), "the lock is released");
    assert_eq!(
        std::fs::read_dir(state.join("pids")).unwrap().count(),
        0,
        "pid files removed"
    );
    took
}

/// Every agent address of a shipped topology of `dcs` DCs (3 servers and a client each).
fn addresses(dcs: u8) -> Vec<String> {
    (1..=dcs)
        .flat_map(|dc| [1, 2, 3, 10].map(|n| format!("127.0.{dc}.{n}")))
        .collect()
}

/// The first `sh` block of the README section titled `title`.
fn readme_block(title: &str) -> &'static str {
    let readme = include_str!("../../README.md");
    let section = readme
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has a section {title:?}"));
    section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("README's {title:?} has a sh block"))
}

/// The commands of the README's tour, as a shell reads them (comments dropped).
fn tour() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## A tour\n")
        .nth(1)
        .expect("README has a tour");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the tour's commands are in a sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// What a tour command must do: exit as `ok` says with output holding every one of
/// `shows`, at once or, with `poll`, within a deadline (the command waits on something
/// asynchronous, such as anti-entropy syncing a registration).
struct Expect {
    ok: bool,
    poll: bool,
    shows: &'static [&'static str],
}

/// The expectation for each tour command, found by a piece of it. A command the test does
/// not know fails the test, so the README and this test change together.
fn expectation(cmd: &str) -> Expect {
    let table: [(&str, Expect); 10] = [
        (
            "export PATH",
            Expect {
                ok: true,
                poll: false,
                shows: &[],
            },
        ),
        (
            "/v1/agent/service/register",
            Expect {
                ok: true,
                poll: false,
                shows: &[],
            },
        ),
        (
            "/v1/catalog/service/web?dc=dc2",
            Expect {
                ok: true,
                poll: true,
                shows: &[r#""ServiceName":"web""#, r#""Datacenter":"dc2""#, r#""v1""#],
            },
        ),
        (
            "catalog services -datacenter dc2",
            Expect {
                ok: true,
                poll: true,
                shows: &["web", "v1"],
            },
        ),
        (
            "dig @127.0.1.10",
            Expect {
                ok: true,
                poll: false,
                shows: &["8080 dc2-client-1.node.dc2.consul."],
            },
        ),
        (
            "kill -9",
            Expect {
                ok: true,
                poll: false,
                shows: &[],
            },
        ),
        (
            "/v1/health/service/web?dc=dc2&passing",
            Expect {
                ok: true,
                poll: false,
                shows: &[r#""Service":"web""#, "dc2-client-1"],
            },
        ),
        (
            "consulate status",
            Expect {
                ok: false,
                poll: false,
                shows: &["dc2-server-1", "is down"],
            },
        ),
        (
            "consulate_http_requests_total",
            Expect {
                ok: true,
                poll: false,
                shows: &[r#"route="/v1/catalog/service/{name}""#],
            },
        ),
        (
            "consulate_rpc_cross_dc_total",
            Expect {
                ok: true,
                poll: false,
                shows: &[r#"datacenter="dc2""#, r#"outcome="ok""#],
            },
        ),
    ];
    let (_, expect) = table
        .into_iter()
        .find(|(piece, _)| cmd.contains(piece))
        .unwrap_or_else(|| panic!("the test has no expectation for the tour's `{cmd}`"));
    expect
}

/// Runs one tour command as a user's shell would, in `dir`, with the built binary on PATH.
fn run_step(dir: &Path, cmd: &str) -> (bool, String) {
    let bin_dir = consulate_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {cmd}")])
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_readme_tour_and_sigterm_takes_it_down() {
    let dir = user_checkout();
    let state = dir.path().join(".consulate");
    let started = Instant::now();
    // `consulate up` with its defaults, as the README's first command runs it.
    let (mut up, out_path) = spawn_up(dir.path(), &[]);
    let text = up_ready(&out_path).await;
    eprintln!("local-2dc ready {:?} after start", started.elapsed());
    assert!(text.contains("dc2-server-3") && text.contains("http://127.0.2.10:8500"));
    assert_eq!(
        text.matches("leader\n").count(),
        2,
        "one leader per DC:\n{text}"
    );
    assert!(dir.path().join("certs/consul-agent-ca.pem").is_file());

    // `consulate status`: everything alive, a leader per DC, every cross-DC query answered.
    let report = healthy(dir.path(), None).await;
    assert_eq!(report["agents"].as_array().unwrap().len(), 8);
    assert!(report["leaders"]["dc1"].is_string() && report["leaders"]["dc2"].is_string());
    assert_eq!(report["wan_members"].as_array().unwrap().len(), 6);
    assert!(
        report["cross_dc"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["error"].is_null()),
        "{report}"
    );
    let pretty = status(dir.path(), None, "pretty");
    assert!(pretty.status.success());
    assert!(String::from_utf8_lossy(&pretty.stdout).contains("dc2-server-1.dc2"));

    // A second `up` on the same state folder refuses instead of fighting over ports.
    let second = std::process::Command::new(consulate_bin())
        .arg("up")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");

    // The README's tour, command by command.
    let commands = tour();
    assert!(commands.len() >= 8, "{commands:?}");
    for cmd in &commands {
        let expect = expectation(cmd);
        let t = Instant::now();
        let check = |(ok, text): (bool, String)| {
            (ok == expect.ok && expect.shows.iter().all(|s| text.contains(s))).then_some(text)
        };
        let text = if expect.poll {
            eventually(Duration::from_secs(15), cmd, || async {
                check(run_step(dir.path(), cmd))
            })
            .await
        } else {
            let (ok, text) = run_step(dir.path(), cmd);
            check((ok, text.clone()))
                .unwrap_or_else(|| panic!("tour step `{cmd}` (exit ok: {ok}):\n{text}"))
        };
        eprintln!("tour: `{cmd}` in {:?}", t.elapsed());
        let _ = text;
    }
    // `up` reports the killed server (it looks every 250 ms).
    eventually(
        Duration::from_secs(5),
        "`up` reporting the crash",
        || async {
            let text = std::fs::read_to_string(&out_path).ok()?;
            text.contains("dc2-server-1 (dc2) exited").then_some(())
        },
    )
    .await;
    assert!(!state.join("pids/dc2-server-1.pid").exists());

    // A server stopped gracefully (SIGTERM) leaves the WAN pool: other DCs see it `left`
    // (Status 3), while the one killed outright is `failed` (4).
    signal(
        up_pid(&state, "dc2-server-2"),
        nix::sys::signal::Signal::SIGTERM,
    );
    let http = http_client();
    eventually(Duration::from_secs(15), "dc1's WAN view of dc2", || async {
        let r = http
            .get("http://127.0.1.1:8500/v1/agent/members?wan=1")
            .send()
            .await
            .ok()?;
        let members: serde_json::Value = r.json().await.ok()?;
        let status = |name: &str| {
            members
                .as_array()?
                .iter()
                .find(|m| m["Name"] == name)
                .map(|m| m["Status"].clone())
        };
        (status("dc2-server-2.dc2")? == 3 && status("dc2-server-1.dc2")? == 4).then_some(())
    })
    .await;

    let took = stop_and_check(&mut up, &state, &addresses(2));
    eprintln!("SIGTERM to every agent exited: {took:?}");
    let down = status(dir.path(), None, "pretty");
    assert!(!down.status.success(), "status fails when agents are down");
    assert!(String::from_utf8_lossy(&down.stderr).contains("is down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_brings_three_dcs_up_and_restarts_a_crashed_agent() {
    let dir = user_checkout();
    let state = dir.path().join(".consulate");
    let topology = "topology/local-3dc.toml";
    let started = Instant::now();
    // With ACLs on: dc1 is the primary, dc2 and dc3 replicate its management token.
    let (mut up, out_path) = spawn_up(dir.path(), &[topology, "--restart", "--acl"]);
    let text = up_ready(&out_path).await;
    eprintln!("local-3dc ready {:?} after start", started.elapsed());
    assert_eq!(text.matches("leader\n").count(), 3, "{text}");
    let token = std::fs::read_to_string(state.join("acl-management-token")).unwrap();
    let printed = eventually(Duration::from_secs(10), "the token printed", || async {
        let text = std::fs::read_to_string(&out_path).ok()?;
        text.contains("export CONSUL_HTTP_TOKEN=").then_some(text)
    })
    .await;
    assert!(printed.contains(&format!("export CONSUL_HTTP_TOKEN={}", token.trim())));
    let http = http_client();
    for dc in 1..=3 {
        let url = format!("http://127.0.{dc}.10:8500/v1/kv/up-acl");
        let anonymous = http.put(&url).body("v").send().await.unwrap();
        assert_eq!(
            anonymous.status(),
            403,
            "dc{dc} refuses a request without a token"
        );
        eventually(
            Duration::from_secs(20),
            "the management token in every DC",
            || async {
                let r = http
                    .put(&url)
                    .header("X-Consul-Token", token.trim())
                    .body("v")
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
    }

    let report = healthy(dir.path(), Some(topology)).await;
    assert_eq!(report["agents"].as_array().unwrap().len(), 12);
    assert_eq!(report["wan_members"].as_array().unwrap().len(), 9);
    assert_eq!(report["cross_dc"].as_array().unwrap().len(), 6, "{report}");

    // kill -9 a server: `up --restart` reports it and starts it again on its data dir.
    let pid_file = state.join("pids/dc3-server-2.pid");
    let pid = up_pid(&state, "dc3-server-2");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let t = Instant::now();
    eventually(Duration::from_secs(10), "the agent restarted", || async {
        let text = std::fs::read_to_string(&out_path).ok()?;
        let new: i32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (text.contains("dc3-server-2 (dc3) exited") && text.contains("restarted dc3-server-2"))
            .then_some(())
            .filter(|_| new != pid && Path::new(&format!("/proc/{new}")).exists())
    })
    .await;
    let report = healthy(dir.path(), Some(topology)).await;
    eprintln!(
        "restarted server back in a healthy federation {:?} after kill -9",
        t.elapsed()
    );
    assert!(
        report["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["node"] == "dc3-server-2" && a["alive"] == true)
    );

    let took = stop_and_check(&mut up, &state, &addresses(3));
    eprintln!("SIGTERM to every agent of 3 DCs exited: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_hand_run_commands_start_an_agent() {
    let dir = user_checkout();
    let block = readme_block("Running agents by hand");
    let (agent_line, setup): (Vec<&str>, Vec<&str>) = block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .partition(|l| l.starts_with("consulate agent"));
    // Everything but the build and the agent itself, as one shell script.
    let (ok, text) = run_step(dir.path(), &format!("set -e\n{}", setup.join("\n")));
    assert!(ok, "{text}");
    assert!(dir.path().join("certs/consul-agent-ca.pem").is_file());
    assert_eq!(
        std::fs::read_dir(dir.path().join("configs"))
            .unwrap()
            .count(),
        8
    );
    // The agent, as the README starts it (the comment dropped).
    let cmd = agent_line[0].split('#').next().unwrap().trim();
    let bin_dir = consulate_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let child = std::process::Command::new("bash")
        .args(["-c", &format!("exec {cmd}")])
        .current_dir(dir.path())
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = ChildGuard(Some(child), None);
    let http = http_client();
    eventually(
        Duration::from_secs(20),
        "the hand-run agent's API",
        || async {
            let r = http
                .get("http://127.0.1.1:8500/v1/agent/self")
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            (v["Config"]["NodeName"] == "dc1-server-1").then_some(())
        },
    )
    .await;
    let exit = agent.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    assert!(exit.success(), "{exit}");
}
