//! The `consulate` command line: parses arguments and hands each command to the module
//! that owns it. No logic of its own beyond wiring and printing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use consulate::agent::Agent;
use consulate::config::topology::{RenderPaths, Topology};
use consulate::config::{AgentConfig, GossipKey};
use consulate::pki::{self, AgentCertSpec, CA_DAYS, CERT_DAYS, Validity};
use consulate::transport::identity::Role;

#[derive(Parser)]
#[command(
    name = "consulate",
    version,
    about = "Multi-datacenter service discovery, Consul-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent (server or client) from its config file.
    Agent {
        /// The agent's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create the development CA and agent certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Work with federation topology files.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Print a new random gossip encryption key (base64, 32 bytes).
    Keygen,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Certificate authority commands.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Agent certificate commands.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Args)]
struct PkiArgs {
    /// Directory the PEM files are written to.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// DNS domain of the federation.
    #[arg(long, default_value = "consul")]
    domain: String,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new CA: <domain>-agent-ca.pem and <domain>-agent-ca-key.pem.
    Create {
        #[command(flatten)]
        pki: PkiArgs,
        /// Validity in days.
        #[arg(long, default_value_t = CA_DAYS)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create a server or client certificate signed by the CA in --dir.
    Create {
        #[command(flatten)]
        pki: PkiArgs,
        /// A server certificate (server.<dc>.<domain>).
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        server: bool,
        /// A client certificate (client.<dc>.<domain>).
        #[arg(long)]
        client: bool,
        /// The datacenter.
        #[arg(long)]
        dc: String,
        /// The node name (adds <node>.server.<dc>.<domain> and names the files after it).
        #[arg(long)]
        node: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = CERT_DAYS)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Write every agent's config file derived from a topology.
    Render {
        /// The topology file.
        file: PathBuf,
        /// Output directory for <node>.toml files.
        #[arg(long)]
        out: PathBuf,
        /// Certificates directory the configs point to.
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        /// State directory under which each agent gets its data dir.
        #[arg(long, default_value = ".consulate")]
        data_dir: PathBuf,
    },
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("{}", p.display()))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    token.cancel();
}

fn run_agent(config: PathBuf) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config)?;
    init_tracing();
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let agent = Agent::start(config, shutdown.clone()).await?;
        tokio::spawn(shutdown_signal(shutdown));
        agent.run_until_shutdown().await;
        anyhow::Ok(())
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config } => run_agent(config),
        Command::Keygen => {
            println!("{}", GossipKey::generate().to_base64());
            Ok(())
        }
        Command::Tls {
            command:
                TlsCommand::Ca {
                    command: CaCommand::Create { pki: args, days },
                },
        } => {
            let paths = pki::ca_paths(&args.dir, &args.domain);
            let ca = pki::create_ca(&args.domain, Validity::days(days))?;
            pki::write_pair(&paths, &ca, args.force)?;
            println!("==> Saved {}", paths.cert.display());
            println!("==> Saved {}", paths.key.display());
            Ok(())
        }
        Command::Tls {
            command:
                TlsCommand::Cert {
                    command:
                        CertCommand::Create {
                            pki: args,
                            server,
                            client: _,
                            dc,
                            node,
                            days,
                        },
                },
        } => {
            let spec = AgentCertSpec {
                role: if server { Role::Server } else { Role::Client },
                datacenter: &dc,
                domain: &args.domain,
                node: node.as_deref(),
            };
            let paths = pki::issue_agent_cert_files(&args.dir, &spec, days, args.force)?;
            println!("==> Saved {}", paths.cert.display());
            println!("==> Saved {}", paths.key.display());
            Ok(())
        }
        Command::Topology {
            command:
                TopologyCommand::Render {
                    file,
                    out,
                    certs,
                    data_dir,
                },
        } => {
            let topo = Topology::load(&file)?;
            let paths = RenderPaths {
                certs_dir: absolute(certs)?,
                state_dir: absolute(data_dir)?,
            };
            for written in topo
                .write_configs(&paths, &out)
                .with_context(|| format!("writing {}", out.display()))?
            {
                println!("==> Wrote {}", written.display());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
