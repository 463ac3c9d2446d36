//! The `consulate` command line: parses arguments and hands each command to the module
//! that owns it. No logic of its own beyond wiring and printing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use consulate::agent::Agent;
use consulate::cli::{self as ops, DEFAULT_HTTP_ADDR, Format};
use consulate::config::topology::{RenderPaths, Topology};
use consulate::config::{AgentConfig, GossipKey};
use consulate::pki::{self, AgentCertSpec, CA_DAYS, CERT_DAYS, Validity};
use consulate::vocab::Role;

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
    /// Bring up a whole local federation from a topology file, until Ctrl-C.
    Up {
        /// The topology file.
        #[arg(default_value = "topology/local-2dc.toml")]
        topology: PathBuf,
        /// Where configs, data dirs and logs go.
        #[arg(long, default_value = ".consulate")]
        data_dir: PathBuf,
        /// Where the CA and agent certificates are (made if missing).
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        /// Wipe configs, data and logs first (certificates are kept).
        #[arg(long)]
        fresh: bool,
        /// Restart an agent that exits on its own.
        #[arg(long)]
        restart: bool,
        /// Turn ACLs on (default deny; the first DC is the primary) and print the
        /// management token (kept in the data dir, the same on every start).
        #[arg(long)]
        acl: bool,
    },
    /// Report on a running local federation: agents, leaders, WAN members, cross-DC queries
    /// (exit code 1 when anything is down or failing).
    Status {
        /// The topology file.
        #[arg(default_value = "topology/local-2dc.toml")]
        topology: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Print a new random gossip encryption key (base64, 32 bytes).
    Keygen,
    /// List the members this agent knows.
    Members {
        #[command(flatten)]
        http: HttpArgs,
        /// WAN members (the servers of every DC), asked of a server.
        #[arg(long)]
        wan: bool,
    },
    /// Operator commands: the Raft configuration.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Prepared queries: create, list, execute, delete.
    Query {
        #[command(subcommand)]
        command: QueryCommand,
    },
    /// The LAN gossip encryption keys of every DC: list, install, use (make primary),
    /// remove; a change returns once every live agent applied it.
    Keyring {
        #[command(flatten)]
        http: HttpArgs,
        /// List the keys each DC's agents hold and seal with.
        #[arg(long)]
        list: bool,
        /// Install a key (base64) on every agent.
        #[arg(long, value_name = "KEY")]
        install: Option<String>,
        /// Make an installed key the one every agent seals with.
        #[arg(long = "use", value_name = "KEY")]
        use_key: Option<String>,
        /// Remove a key (not the primary one) from every agent.
        #[arg(long, value_name = "KEY")]
        remove: Option<String>,
        /// Only the agent's own DC.
        #[arg(long)]
        local_only: bool,
    },
    /// Snapshots of the DC's state: save, restore, inspect.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Fire a user event to the agents of a DC (Consul's `consul event`).
    Event {
        #[command(flatten)]
        http: HttpArgs,
        /// The event's name.
        #[arg(long)]
        name: String,
        /// Only agents whose node name matches this regex keep it.
        #[arg(long)]
        node: Option<String>,
        /// Only agents with a service whose name matches this regex keep it.
        #[arg(long)]
        service: Option<String>,
        /// With `-service`: only if that service has a tag matching this regex.
        #[arg(long)]
        tag: Option<String>,
        /// The DC to fire it in (default: the agent's).
        #[arg(long)]
        datacenter: Option<String>,
        /// The payload.
        payload: Option<String>,
    },
    /// Watch a view of the DC and run a handler with it on stdin on every change
    /// (Consul's `consul watch`); without a handler, print it once.
    Watch {
        #[command(flatten)]
        http: HttpArgs,
        /// What to watch.
        #[arg(long = "type", value_enum)]
        kind: ops::watch::WatchType,
        /// `key`: the key.
        #[arg(long)]
        key: Option<String>,
        /// `keyprefix`: the prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// `service`, `checks`: the service.
        #[arg(long)]
        service: Option<String>,
        /// `service`: only instances with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// `service`: only passing instances.
        #[arg(long)]
        passingonly: bool,
        /// `checks`: the state (default any).
        #[arg(long)]
        state: Option<String>,
        /// `event`: the event name.
        #[arg(long)]
        name: Option<String>,
        /// The DC to watch (default: the agent's).
        #[arg(long)]
        datacenter: Option<String>,
        /// The command run (by `sh -c`) with the result on stdin.
        #[arg(trailing_var_arg = true)]
        handler: Vec<String>,
    },
    /// Make the agent read its config file again (services, checks, log level).
    Reload {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Estimate the round trip between two nodes from their network coordinates.
    Rtt {
        #[command(flatten)]
        http: HttpArgs,
        /// WAN coordinates (servers, named `node.dc`).
        #[arg(long)]
        wan: bool,
        /// The first node.
        node: String,
        /// The second node (default: the agent's own).
        other: Option<String>,
    },
    /// Make the agent leave its pool gracefully and shut down.
    Leave {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Force a failed member out of the agent's gossip pool (shown as left; with -prune,
    /// no longer listed).
    ForceLeave {
        #[command(flatten)]
        http: HttpArgs,
        /// Remove it from the member list at once.
        #[arg(long)]
        prune: bool,
        /// A member of the WAN pool (`node.dc`, asked of a server).
        #[arg(long)]
        wan: bool,
        /// The member's name.
        node: String,
    },
    /// Read the catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Read and write the KV store.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Register services with the local agent.
    Services {
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// Run a command while holding a lock on PREFIX (as `consul lock`): the command is
    /// stopped if the lock is lost; its exit code is returned.
    Lock {
        #[command(flatten)]
        http: HttpArgs,
        /// The session's name.
        #[arg(long, default_value = "consulate lock")]
        name: String,
        /// The session TTL (renewed every half of it).
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// How long the lock stays unavailable to others after this holder's session ends
        /// without releasing it (its machine or process died).
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        lock_delay: std::time::Duration,
        /// The KV prefix; the lock key is PREFIX/.lock.
        prefix: String,
        /// The command and its arguments, run with `sh -c`.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Sessions of the local DC.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Access control: bootstrap, policies and tokens.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
}

#[derive(Subcommand)]
enum AclCommand {
    /// Make the DC's first management token (once).
    Bootstrap {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Policies.
    Policy {
        #[command(subcommand)]
        command: AclPolicyCommand,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        command: AclTokenCommand,
    },
    /// How ACL replication from the primary DC stands.
    Replication {
        #[command(flatten)]
        http: HttpArgs,
    },
}

#[derive(Subcommand)]
enum AclPolicyCommand {
    /// Create a policy.
    Create {
        #[command(flatten)]
        http: HttpArgs,
        /// Its unique name.
        #[arg(long)]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// The rules (HCL or JSON), or @FILE to read them from.
        #[arg(long, default_value = "")]
        rules: String,
    },
    /// List every policy.
    List {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Show one policy.
    Read {
        #[command(flatten)]
        http: HttpArgs,
        /// Its ID.
        #[arg(long)]
        id: Option<String>,
        /// Its name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a policy.
    Delete {
        #[command(flatten)]
        http: HttpArgs,
        /// Its ID.
        #[arg(long)]
        id: Option<String>,
        /// Its name.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum AclTokenCommand {
    /// Create a token.
    Create {
        #[command(flatten)]
        http: HttpArgs,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// A policy by name (repeatable).
        #[arg(long)]
        policy_name: Vec<String>,
        /// A policy by ID (repeatable).
        #[arg(long)]
        policy_id: Vec<String>,
        /// A role by name (repeatable).
        #[arg(long)]
        role_name: Vec<String>,
        /// Keep the token in this DC (never replicated).
        #[arg(long)]
        local: bool,
        /// Expire the token after this long (1m to 24h).
        #[arg(long)]
        expires_ttl: Option<String>,
    },
    /// List every token.
    List {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Show a token (`-self`: the one this command runs with).
    Read {
        #[command(flatten)]
        http: HttpArgs,
        /// Its AccessorID.
        #[arg(long, required_unless_present = "self_")]
        id: Option<String>,
        /// The token given with `-token` or `CONSUL_HTTP_TOKEN`.
        #[arg(long = "self")]
        self_: bool,
    },
    /// Delete a token.
    Delete {
        #[command(flatten)]
        http: HttpArgs,
        /// Its AccessorID.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// List every session.
    List {
        #[command(flatten)]
        http: HttpArgs,
    },
}

/// A duration in Go syntax (`15s`, `1m30s`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    consulate::duration::parse_go_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as \"15s\""))
}

/// How the operator commands reach the agent and print.
#[derive(Args)]
struct HttpArgs {
    /// The agent's HTTP address.
    #[arg(long, env = "CONSUL_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    http_addr: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "pretty")]
    format: Format,
    /// The ACL token requests are made with.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Use HTTPS for an address given without a scheme (`CONSUL_HTTP_SSL=true`).
    #[arg(long, env = "CONSUL_HTTP_SSL")]
    http_ssl: bool,
    /// The CA certificate that signed the agent's HTTPS certificate.
    #[arg(long, env = "CONSUL_CACERT")]
    ca_file: Option<PathBuf>,
    /// A client certificate, for an agent with `verify_incoming`.
    #[arg(long, env = "CONSUL_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, env = "CONSUL_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The name the agent's certificate is verified against, instead of the address's host.
    #[arg(long, env = "CONSUL_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
}

impl HttpArgs {
    /// A client of the agent these arguments name.
    fn client(&self) -> anyhow::Result<ops::Client> {
        let tls = ops::TlsOptions {
            ssl: self.http_ssl,
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone().zip(self.client_key.clone()),
            server_name: self.tls_server_name.clone(),
        };
        Ok(ops::Client::connect(&self.http_addr, &tls)?.with_token(self.token.clone()))
    }
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Raft: list the servers, remove one.
    Raft {
        #[command(subcommand)]
        command: RaftCommand,
    },
    /// Autopilot: the servers' health.
    Autopilot {
        #[command(subcommand)]
        command: AutopilotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save the DC's whole state (catalog, KV, sessions, ACLs, prepared queries) to FILE.
    Save {
        #[command(flatten)]
        http: HttpArgs,
        /// Any server may answer (its state may lag the leader's).
        #[arg(long)]
        stale: bool,
        /// Where to write the archive.
        file: PathBuf,
    },
    /// Replace the DC's state with the archive in FILE (every server, through Raft).
    Restore {
        #[command(flatten)]
        http: HttpArgs,
        /// The archive.
        file: PathBuf,
    },
    /// Show an archive's metadata and entries per table (verifying it).
    Inspect {
        /// Output format.
        #[arg(long, value_enum, default_value = "pretty")]
        format: ops::Format,
        /// The archive.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AutopilotCommand {
    /// Each server's health as the leader sees it, and how many may fail.
    State {
        #[command(flatten)]
        http: HttpArgs,
    },
}

#[derive(Subcommand)]
enum RaftCommand {
    /// The servers of the DC's Raft configuration.
    ListPeers {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Hand the DC's leadership to another server.
    TransferLeader {
        #[command(flatten)]
        http: HttpArgs,
        /// The server's node ID, name or address (default: the leader picks).
        #[arg(long)]
        id: Option<String>,
    },
    /// Remove a server (dead, not coming back) from the Raft configuration.
    RemovePeer {
        #[command(flatten)]
        http: HttpArgs,
        /// Its QUIC address (`ip:port`).
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        address: Option<String>,
        /// Its node ID.
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueryCommand {
    /// Define a query; prints its ID.
    Create {
        #[command(flatten)]
        http: HttpArgs,
        /// Its name (what `execute` and DNS `<name>.query.consul` use).
        #[arg(long)]
        name: String,
        /// The service it selects.
        #[arg(long)]
        service: String,
        /// Fail over to this many nearest DCs (by network coordinates).
        #[arg(long, default_value_t = 0)]
        nearest_n: u32,
        /// Then to these DCs, in order (comma-separated).
        #[arg(long, value_delimiter = ',')]
        datacenters: Vec<String>,
        /// A tag every instance must carry (`!tag`: must not); repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Leave out instances with a warning check.
        #[arg(long)]
        only_passing: bool,
        /// Sort by round trip from this node (`_agent`: the agent's).
        #[arg(long)]
        near: Option<String>,
        /// The TTL of DNS answers (e.g. `10s`).
        #[arg(long)]
        dns_ttl: Option<String>,
        /// Ours, not Consul's: fail over while fewer instances than this are selected.
        #[arg(long, default_value_t = 0)]
        min_passing: u32,
    },
    /// List the queries.
    List {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Run a query by name or ID.
    Execute {
        #[command(flatten)]
        http: HttpArgs,
        /// Its name or ID.
        query: String,
        /// Sort by round trip from this node (`_agent`, `_ip`, or a node).
        #[arg(long)]
        near: Option<String>,
        /// At most this many instances.
        #[arg(long)]
        limit: Option<u32>,
        /// The datacenter to run it in.
        #[arg(long)]
        datacenter: Option<String>,
    },
    /// Delete a query.
    Delete {
        #[command(flatten)]
        http: HttpArgs,
        /// Its ID.
        id: String,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// List the known datacenters.
    Datacenters {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// List the nodes of a datacenter.
    Nodes {
        #[command(flatten)]
        http: HttpArgs,
        /// The datacenter (default: the agent's).
        #[arg(long)]
        datacenter: Option<String>,
    },
    /// List the services of a datacenter.
    Services {
        #[command(flatten)]
        http: HttpArgs,
        /// The datacenter (default: the agent's).
        #[arg(long)]
        datacenter: Option<String>,
        /// Show each service's tags.
        #[arg(long)]
        tags: bool,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Print a value (or every `key:value` under a prefix with -recurse).
    Get {
        #[command(flatten)]
        http: HttpArgs,
        /// Every key under KEY.
        #[arg(long)]
        recurse: bool,
        /// The key.
        key: String,
    },
    /// Write a value.
    Put {
        #[command(flatten)]
        http: HttpArgs,
        /// The key.
        key: String,
        /// The value (empty if omitted).
        #[arg(default_value = "")]
        value: String,
    },
    /// Delete a key (or every key under a prefix with -recurse).
    Delete {
        #[command(flatten)]
        http: HttpArgs,
        /// Every key under KEY.
        #[arg(long)]
        recurse: bool,
        /// The key.
        key: String,
    },
}

#[derive(Subcommand)]
enum ServicesCommand {
    /// Register the services in a JSON file (`{"service": {...}}` or `{"services": [...]}`).
    Register {
        #[command(flatten)]
        http: HttpArgs,
        /// The file.
        file: PathBuf,
    },
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

/// Cancels `token` on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the returned task first runs, so a signal that arrives while the agent starts
/// is never fatal.
fn shutdown_signal(token: CancellationToken) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    }
}

fn run_agent(config: PathBuf) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config)?;
    consulate::logging::init(config.log_level.as_deref());
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // The handlers go in before the agent starts serving: a SIGTERM sent as soon as
        // its API answers must stop it gracefully, not kill it (the future, spawned once
        // the agent has started, sees a signal that came in the meantime).
        let on_signal = shutdown_signal(shutdown.clone());
        let agent = Agent::start(config, shutdown.clone()).await?;
        tokio::spawn(on_signal);
        agent.run_until_shutdown().await;
        anyhow::Ok(())
    })
}

/// Runs an operator command against the agent and prints what it returns.
fn operate<F, Fut>(http: &HttpArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(ops::Client, Format) -> Fut,
    Fut: std::future::Future<Output = Result<String, ops::CliError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let client = http.client()?;
    let out = runtime.block_on(f(client, http.format))?;
    print!("{out}");
    Ok(())
}

fn run_acl(command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Bootstrap { http } => {
            operate(&http, |c, f| async move { ops::acl_bootstrap(&c, f).await })
        }
        AclCommand::Replication { http } => {
            operate(
                &http,
                |c, f| async move { ops::acl_replication(&c, f).await },
            )
        }
        AclCommand::Policy { command } => match command {
            AclPolicyCommand::Create {
                http,
                name,
                description,
                rules,
            } => operate(&http, |c, f| async move {
                ops::acl_policy_create(&c, &name, &description, &rules, f).await
            }),
            AclPolicyCommand::List { http } => {
                operate(
                    &http,
                    |c, f| async move { ops::acl_policy_list(&c, f).await },
                )
            }
            AclPolicyCommand::Read { http, id, name } => operate(&http, |c, f| async move {
                ops::acl_policy_read(&c, id.as_deref(), name.as_deref(), f).await
            }),
            AclPolicyCommand::Delete { http, id, name } => operate(&http, |c, _| async move {
                ops::acl_policy_delete(&c, id.as_deref(), name.as_deref()).await
            }),
        },
        AclCommand::Token { command } => match command {
            AclTokenCommand::Create {
                http,
                description,
                policy_name,
                policy_id,
                role_name,
                local,
                expires_ttl,
            } => {
                let spec = ops::TokenSpec {
                    description,
                    policy_names: policy_name,
                    policy_ids: policy_id,
                    role_names: role_name,
                    local,
                    expires_ttl,
                };
                operate(&http, |c, f| async move {
                    ops::acl_token_create(&c, &spec, f).await
                })
            }
            AclTokenCommand::List { http } => {
                operate(
                    &http,
                    |c, f| async move { ops::acl_token_list(&c, f).await },
                )
            }
            AclTokenCommand::Read { http, id, self_ } => operate(&http, |c, f| async move {
                let id = if self_ { None } else { id };
                ops::acl_token_read(&c, id.as_deref(), f).await
            }),
            AclTokenCommand::Delete { http, id } => {
                operate(
                    &http,
                    |c, _| async move { ops::acl_token_delete(&c, &id).await },
                )
            }
        },
    }
}

/// `consulate lock`: exits with the command's exit code.
fn run_lock(
    http: &HttpArgs,
    opts: &consulate::lock::LockOptions,
    command: &[String],
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let client = http.client()?;
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(shutdown_signal(shutdown.clone()));
        consulate::lock::run(&client, opts, command, shutdown).await
    })?;
    std::process::exit(code);
}

fn run_up(opts: consulate::up::UpOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(shutdown_signal(shutdown.clone()));
        consulate::up::up(opts, shutdown).await
    })?;
    Ok(())
}

fn run_status(topology: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status = runtime.block_on(consulate::up::status(topology))?;
    match format {
        Format::Pretty => print!("{}", status.pretty()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    let problems = status.problems();
    if !problems.is_empty() {
        anyhow::bail!("federation unhealthy: {}", problems.join("; "));
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Status { topology, format } => run_status(&topology, format),
        Command::Up {
            topology,
            data_dir,
            certs,
            fresh,
            restart,
            acl,
        } => run_up(consulate::up::UpOptions {
            topology,
            state_dir: data_dir,
            certs_dir: certs,
            fresh,
            restart,
            acl,
            ready_timeout: std::time::Duration::from_secs(60),
        }),
        Command::Members { http, wan } => {
            operate(&http, |c, f| async move { ops::members(&c, wan, f).await })
        }
        Command::Leave { http } => operate(&http, |c, _| async move { ops::leave(&c).await }),
        Command::ForceLeave {
            http,
            prune,
            wan,
            node,
        } => operate(&http, |c, _| async move {
            ops::force_leave(&c, &node, prune, wan).await
        }),
        Command::Operator {
            command:
                OperatorCommand::Autopilot {
                    command: AutopilotCommand::State { http },
                },
        } => operate(
            &http,
            |c, f| async move { ops::autopilot_state(&c, f).await },
        ),
        Command::Operator {
            command: OperatorCommand::Raft { command },
        } => match command {
            RaftCommand::ListPeers { http } => {
                operate(
                    &http,
                    |c, f| async move { ops::raft_list_peers(&c, f).await },
                )
            }
            RaftCommand::TransferLeader { http, id } => operate(&http, |c, _| async move {
                ops::raft_transfer_leader(&c, id.as_deref()).await
            }),
            RaftCommand::RemovePeer { http, address, id } => {
                let peer = address.or(id).unwrap_or_default();
                operate(&http, |c, _| async move {
                    ops::raft_remove_peer(&c, &peer).await
                })
            }
        },
        Command::Query { command } => match command {
            QueryCommand::Create {
                http,
                name,
                service,
                nearest_n,
                datacenters,
                tags,
                only_passing,
                near,
                dns_ttl,
                min_passing,
            } => {
                let d = ops::QueryDefinition {
                    name,
                    service,
                    nearest_n,
                    datacenters,
                    tags,
                    only_passing,
                    near,
                    dns_ttl,
                    min_passing,
                };
                operate(&http, |c, _| async move { ops::query_create(&c, &d).await })
            }
            QueryCommand::List { http } => {
                operate(&http, |c, f| async move { ops::query_list(&c, f).await })
            }
            QueryCommand::Execute {
                http,
                query,
                near,
                limit,
                datacenter,
            } => operate(&http, |c, f| async move {
                ops::query_execute(&c, &query, near.as_deref(), limit, datacenter.as_deref(), f)
                    .await
            }),
            QueryCommand::Delete { http, id } => {
                operate(
                    &http,
                    |c, _| async move { ops::query_delete(&c, &id).await },
                )
            }
        },
        Command::Keyring {
            http,
            list,
            install,
            use_key,
            remove,
            local_only,
        } => {
            let mut actions: Vec<ops::KeyringAction> = [
                install.map(ops::KeyringAction::Install),
                use_key.map(ops::KeyringAction::Use),
                remove.map(ops::KeyringAction::Remove),
            ]
            .into_iter()
            .flatten()
            .collect();
            if list {
                actions.push(ops::KeyringAction::List);
            }
            let [action] = <[ops::KeyringAction; 1]>::try_from(actions).map_err(|_| {
                anyhow::anyhow!("exactly one of -list, -install, -use or -remove must be given")
            })?;
            operate(&http, |c, f| async move {
                ops::keyring(&c, &action, local_only, f).await
            })
        }
        Command::Snapshot { command } => match command {
            SnapshotCommand::Save { http, stale, file } => operate(&http, |c, _| async move {
                ops::snapshot_save(&c, &file, stale).await
            }),
            SnapshotCommand::Restore { http, file } => operate(&http, |c, _| async move {
                ops::snapshot_restore(&c, &file).await
            }),
            SnapshotCommand::Inspect { format, file } => {
                print!("{}", ops::snapshot_inspect(&file, format)?);
                Ok(())
            }
        },
        Command::Event {
            http,
            name,
            node,
            service,
            tag,
            datacenter,
            payload,
        } => {
            let spec = ops::watch::EventSpec {
                name,
                node,
                service,
                tag,
                datacenter,
                payload: payload.unwrap_or_default().into_bytes(),
            };
            operate(
                &http,
                |c, _| async move { ops::watch::fire(&c, &spec).await },
            )
        }
        Command::Watch {
            http,
            kind,
            key,
            prefix,
            service,
            tag,
            passingonly,
            state,
            name,
            datacenter,
            handler,
        } => {
            let spec = ops::watch::WatchSpec {
                kind: Some(kind),
                key,
                prefix,
                service,
                tag,
                passing_only: passingonly,
                state,
                name,
                datacenter,
            };
            let handler = (!handler.is_empty()).then(|| handler.join(" "));
            operate(&http, |c, _| async move {
                let stop = CancellationToken::new();
                tokio::spawn(shutdown_signal(stop.clone()));
                ops::watch::watch(&c, &spec, handler.as_deref(), stop).await
            })
        }
        Command::Reload { http } => operate(&http, |c, _| async move {
            c.put("/v1/agent/reload", Vec::new(), "agent/reload")
                .await?;
            Ok("Configuration reload triggered\n".to_string())
        }),
        Command::Rtt {
            http,
            wan,
            node,
            other,
        } => operate(&http, |c, _| async move {
            ops::rtt(&c, wan, &node, other.as_deref()).await
        }),
        Command::Catalog { command } => match command {
            CatalogCommand::Datacenters { http } => {
                operate(&http, |c, f| async move { ops::datacenters(&c, f).await })
            }
            CatalogCommand::Nodes { http, datacenter } => operate(&http, |c, f| async move {
                ops::nodes(&c, datacenter.as_deref(), f).await
            }),
            CatalogCommand::Services {
                http,
                datacenter,
                tags,
            } => operate(&http, |c, f| async move {
                ops::services(&c, datacenter.as_deref(), tags, f).await
            }),
        },
        Command::Kv { command } => match command {
            KvCommand::Get { http, recurse, key } => operate(&http, |c, f| async move {
                ops::kv_get(&c, &key, recurse, f).await
            }),
            KvCommand::Put { http, key, value } => {
                operate(
                    &http,
                    |c, _| async move { ops::kv_put(&c, &key, &value).await },
                )
            }
            KvCommand::Delete { http, recurse, key } => operate(&http, |c, _| async move {
                ops::kv_delete(&c, &key, recurse).await
            }),
        },
        Command::Services {
            command: ServicesCommand::Register { http, file },
        } => operate(&http, |c, _| async move {
            ops::services_register(&c, &file).await
        }),
        Command::Session {
            command: SessionCommand::List { http },
        } => operate(&http, |c, f| async move { ops::session_list(&c, f).await }),
        Command::Acl { command } => run_acl(command),
        Command::Lock {
            http,
            name,
            ttl,
            lock_delay,
            prefix,
            command,
        } => {
            let opts = consulate::lock::LockOptions {
                prefix,
                name,
                ttl,
                lock_delay,
            };
            run_lock(&http, &opts, &command)
        }
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
                .write_configs(&topo.render(&paths), &out)
                .with_context(|| format!("writing {}", out.display()))?
            {
                println!("==> Wrote {}", written.display());
            }
            Ok(())
        }
    }
}

/// Consul's CLI spells long flags with one dash (`-recurse`, `-format=json`); clap wants
/// two. Single-dash words are given a second dash, up to a `--`.
fn consul_style_args() -> Vec<std::ffi::OsString> {
    let mut done = false;
    std::env::args_os()
        .map(|a| {
            let Some(s) = a.to_str() else { return a };
            if s == "--" {
                done = true;
            }
            let long_single = s.len() > 2
                && s.starts_with('-')
                && !s.starts_with("--")
                && s.as_bytes()[1].is_ascii_alphabetic();
            if !done && long_single {
                format!("-{s}").into()
            } else {
                a
            }
        })
        .collect()
}

fn main() -> ExitCode {
    match run(Cli::parse_from(consul_style_args())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
