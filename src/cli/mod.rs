//! The operator commands (`members`, `catalog`, `kv`, `services`): an HTTP client of the
//! local agent's Consul API, printing aligned tables as Consul's CLI does, or JSON for
//! scripts (`-format=json`). It speaks only the public API, so it works against any agent
//! and against Consul itself.

pub mod watch;

use std::path::Path;

use serde_json::Value;

/// Where the agent's HTTP API is: `CONSUL_HTTP_ADDR` or `-http-addr`, Consul's default
/// `127.0.0.1:8500` otherwise.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Pretty,
    /// The API's JSON.
    Json,
}

/// A failed command: what was asked and what the agent said. Retrying helps only when the
/// agent was unreachable or answered 5xx.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The agent could not be reached.
    #[error("cannot reach the agent at {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The agent refused or failed the request.
    #[error("{what}: {status} ({body})")]
    Refused {
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The agent's explanation.
        body: String,
    },
    /// A local problem: unreadable file, bad JSON.
    #[error("{0}")]
    Input(String),
}

impl CliError {
    /// Whether running the command again may succeed without a change.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            CliError::Unreachable { .. } => true,
            CliError::Refused { status, .. } => *status >= 500,
            CliError::Input(_) => false,
        }
    }
}

/// A client of one agent's HTTP API.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// How the CLI reaches an agent's HTTPS API: Consul's `CONSUL_HTTP_SSL`, `CONSUL_CACERT`,
/// `CONSUL_CLIENT_CERT`/`CONSUL_CLIENT_KEY` and `CONSUL_TLS_SERVER_NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `https://` for an address given without a scheme.
    pub ssl: bool,
    /// The CA that signed the agent's certificate (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key, for an agent with `verify_incoming`.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The name the agent's certificate is checked against, instead of the address's host
    /// (e.g. `server.dc1.consul` for an agent reached by an IP its certificate lacks).
    pub server_name: Option<String>,
}

impl Client {
    /// A client of the agent at `addr` (`host:port` or a URL) over `tls` where it says so.
    pub fn connect(addr: &str, tls: &TlsOptions) -> Result<Client, CliError> {
        if *tls == TlsOptions::default() {
            return Ok(Client::new(addr));
        }
        let scheme = if tls.ssl { "https" } else { "http" };
        let url = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let input = |e: &dyn std::fmt::Display| CliError::Input(e.to_string());
        let config = crate::transport::tls::api_client_config(
            tls.ca_file.as_deref(),
            tls.client_cert
                .as_ref()
                .map(|(cert, key)| (cert.as_path(), key.as_path())),
        )
        .map_err(|e| input(&e))?;
        let mut builder = reqwest::Client::builder().use_preconfigured_tls(config);
        let mut base = url.clone();
        if let Some(name) = &tls.server_name {
            // Connect to the address given, but name (and verify) the agent as `name`.
            let parsed = reqwest::Url::parse(&url).map_err(|e| input(&e))?;
            let host = parsed.host_str().unwrap_or_default();
            let port = parsed.port_or_known_default().unwrap_or(8501);
            let to = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .map_err(|e| input(&e))?
                .next()
                .ok_or_else(|| CliError::Input(format!("{host}: no address")))?;
            builder = builder.resolve(name, to);
            let mut named = parsed.clone();
            named.set_host(Some(name)).map_err(|e| input(&e))?;
            base = named.as_str().trim_end_matches('/').to_string();
        }
        let http = builder.build().map_err(|e| input(&e))?;
        Ok(Client {
            base,
            http,
            token: None,
        })
    }

    /// A client of the agent at `addr` (`host:port` or a URL).
    pub fn new(addr: &str) -> Client {
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        // One HTTP client per process: building one reads the system's root certificates,
        // and `up`/`status` talk to every agent of a federation.
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = HTTP.get_or_init(|| {
            reqwest::Client::builder()
                .use_preconfigured_tls(crate::transport::tls::web_client_config(true))
                .build()
                .expect("an HTTP client with a rustls config builds")
        });
        Client {
            base,
            http: http.clone(),
            token: None,
        }
    }

    /// Sends `token` (`CONSUL_HTTP_TOKEN` or `-token`) with every request, as
    /// `X-Consul-Token`.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, CliError> {
        let req = match &self.token {
            Some(t) => req.header("X-Consul-Token", t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            addr: self.base.clone(),
            reason: e.to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(CliError::Refused {
            what: what.to_string(),
            status,
            body: body.trim().to_string(),
        })
    }

    /// `GET path`; `None` for a 404 (a missing key).
    async fn get(&self, path: &str, what: &str) -> Result<Option<Value>, CliError> {
        match self
            .send(self.http.get(format!("{}{path}", self.base)), what)
            .await
        {
            Ok(resp) => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| CliError::Input(format!("{what}: bad answer: {e}"))),
            Err(CliError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET path` with its `X-Consul-Index`; `None` for a 404 (the index still given).
    pub async fn get_indexed(
        &self,
        path: &str,
        what: &str,
    ) -> Result<(Option<Value>, u64), CliError> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)), what)
            .await;
        let index_of = |r: &reqwest::Response| {
            r.headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0)
        };
        match resp {
            Ok(r) => {
                let index = index_of(&r);
                let v = r
                    .json()
                    .await
                    .map_err(|e| CliError::Input(format!("{what}: bad answer: {e}")))?;
                Ok((Some(v), index))
            }
            Err(CliError::Refused { status: 404, .. }) => Ok((None, 0)),
            Err(e) => Err(e),
        }
    }

    /// `PUT path` with `body`: the answer's text.
    pub async fn put(&self, path: &str, body: Vec<u8>, what: &str) -> Result<String, CliError> {
        let resp = self
            .send(
                self.http.put(format!("{}{path}", self.base)).body(body),
                what,
            )
            .await?;
        Ok(resp.text().await.unwrap_or_default())
    }

    async fn delete(&self, path: &str, what: &str) -> Result<String, CliError> {
        let resp = self
            .send(self.http.delete(format!("{}{path}", self.base)), what)
            .await?;
        Ok(resp.text().await.unwrap_or_default())
    }
}

/// The DC's leader as `status/leader` gives it (`""` while there is none).
pub async fn leader(c: &Client) -> Result<String, CliError> {
    Ok(c.get("/v1/status/leader", "status/leader")
        .await?
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default())
}

/// Whether the agent answers its API (`/v1/agent/self`).
pub async fn alive(c: &Client) -> bool {
    matches!(c.get("/v1/agent/self", "agent/self").await, Ok(Some(_)))
}

/// Asks the agent for another DC's services: `Ok` if that DC answered.
pub async fn reaches(c: &Client, dc: &str) -> Result<(), CliError> {
    c.get(&format!("/v1/catalog/services?dc={dc}"), "catalog/services")
        .await
        .map(|_| ())
}

/// The WAN pool as a server lists it: `(name, status)`.
pub async fn wan_members(c: &Client) -> Result<Vec<(String, String)>, CliError> {
    let v = c
        .get("/v1/agent/members?wan=1", "agent/members?wan=1")
        .await?
        .unwrap_or_default();
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let status = match m["Status"].as_u64() {
                Some(1) => "alive",
                Some(3) => "left",
                Some(4) => "failed",
                _ => "unknown",
            };
            (
                m["Name"].as_str().unwrap_or("").to_string(),
                status.to_string(),
            )
        })
        .collect())
}

/// How many members of the WAN pool a server sees alive.
pub async fn wan_alive(c: &Client) -> Result<usize, CliError> {
    let v = c
        .get("/v1/agent/members?wan=1", "agent/members?wan=1")
        .await?
        .unwrap_or_default();
    Ok(v.as_array()
        .map_or(0, |a| a.iter().filter(|m| m["Status"] == 1).count()))
}

/// Renders rows as columns separated by two spaces, each as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = *w));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn dc_param(dc: Option<&str>) -> String {
    dc.map(|d| format!("?dc={d}")).unwrap_or_default()
}

fn json_out(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// `consulate members [-wan]`.
pub async fn members(c: &Client, wan: bool, format: Format) -> Result<String, CliError> {
    let path = if wan {
        "/v1/agent/members?wan=1"
    } else {
        "/v1/agent/members"
    };
    let v = c.get(path, "listing members").await?.unwrap_or_default();
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let status = |s: &Value| match s.as_u64() {
        Some(1) => "alive",
        Some(2) => "leaving",
        Some(3) => "left",
        Some(4) => "failed",
        _ => "unknown",
    };
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let role = match m["Tags"]["role"].as_str() {
                Some("consul") => "server",
                _ => "client",
            };
            vec![
                text(&m["Name"]),
                format!("{}:{}", text(&m["Addr"]), text(&m["Port"])),
                status(&m["Status"]).to_string(),
                role.to_string(),
                text(&m["Tags"]["build"]),
                text(&m["Tags"]["dc"]),
            ]
        })
        .collect();
    Ok(table(
        &["Node", "Address", "Status", "Type", "Build", "DC"],
        &rows,
    ))
}

/// `consulate leave`: the agent leaves its LAN pool gracefully and shuts down.
pub async fn leave(c: &Client) -> Result<String, CliError> {
    c.put("/v1/agent/leave", Vec::new(), "leaving").await?;
    Ok("Graceful leave complete\n".to_string())
}

/// `consulate force-leave [-prune] [-wan] NODE`: forces a failed member out of the
/// agent's pool (`node.dc` for a WAN member, asked of a server).
pub async fn force_leave(
    c: &Client,
    node: &str,
    prune: bool,
    wan: bool,
) -> Result<String, CliError> {
    let mut query = Vec::new();
    if prune {
        query.push("prune");
    }
    if wan {
        query.push("wan");
    }
    let path = format!(
        "/v1/agent/force-leave/{}{}{}",
        node.replace('/', "%2F"),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    c.put(&path, Vec::new(), "forcing the member to leave")
        .await?;
    Ok(String::new())
}

/// What `consulate keyring` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringAction {
    /// `-list`.
    List,
    /// `-install KEY`.
    Install(String),
    /// `-use KEY`.
    Use(String),
    /// `-remove KEY`.
    Remove(String),
}

/// `consulate keyring -list|-install KEY|-use KEY|-remove KEY [-local-only]`: the LAN
/// gossip keys of every DC, as `consul keyring` prints and changes them. A change returns
/// once every live agent applied it.
pub async fn keyring(
    c: &Client,
    action: &KeyringAction,
    local_only: bool,
    format: Format,
) -> Result<String, CliError> {
    let path = match local_only {
        true => "/v1/operator/keyring?local-only",
        false => "/v1/operator/keyring",
    };
    let url = format!("{}{path}", c.base);
    let body = |key: &str| serde_json::json!({ "Key": key }).to_string();
    let (req, what, done) = match action {
        KeyringAction::List => {
            let pools = c
                .get(path, "listing gossip keys")
                .await?
                .unwrap_or_default();
            if format == Format::Json {
                return Ok(format!("{pools:#}\n"));
            }
            let mut out = String::from("==> Gathering installed encryption keys...\n");
            for pool in pools.as_array().into_iter().flatten() {
                let nodes = pool["NumNodes"].as_u64().unwrap_or(0);
                out += &format!("\n{} (LAN):\n", pool["Datacenter"].as_str().unwrap_or("?"));
                for (title, field) in [("Keys", "Keys"), ("Primary Keys", "PrimaryKeys")] {
                    out += &format!("  {title}:\n");
                    for (key, n) in pool[field].as_object().into_iter().flatten() {
                        out += &format!("    {key} [{}/{nodes}]\n", n.as_u64().unwrap_or(0));
                    }
                }
                for (node, why) in pool["Messages"].as_object().into_iter().flatten() {
                    out += &format!("  {node}: {}\n", why.as_str().unwrap_or_default());
                }
            }
            return Ok(out);
        }
        KeyringAction::Install(k) => (
            c.http.post(&url).body(body(k)),
            "installing the gossip key",
            "==> Installing new gossip encryption key...\n",
        ),
        KeyringAction::Use(k) => (
            c.http.put(&url).body(body(k)),
            "changing the primary gossip key",
            "==> Changing primary gossip encryption key...\n",
        ),
        KeyringAction::Remove(k) => (
            c.http.delete(&url).body(body(k)),
            "removing the gossip key",
            "==> Removing gossip encryption key...\n",
        ),
    };
    c.send(req, what).await?;
    Ok(done.to_string())
}

/// `consulate catalog datacenters`.
pub async fn datacenters(c: &Client, format: Format) -> Result<String, CliError> {
    let v = c
        .get("/v1/catalog/datacenters", "listing datacenters")
        .await?
        .unwrap_or_default();
    Ok(match format {
        Format::Json => json_out(&v),
        Format::Pretty => lines(&v),
    })
}

fn lines(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|d| text(d) + "\n")
        .collect()
}

/// `consulate catalog nodes [-datacenter DC]`.
pub async fn nodes(c: &Client, dc: Option<&str>, format: Format) -> Result<String, CliError> {
    let path = format!("/v1/catalog/nodes{}", dc_param(dc));
    let header = ["Node", "ID", "Address", "DC"];
    list(c, &path, "listing nodes", format, &header, |n| {
        vec![
            text(&n["Node"]),
            text(&n["ID"]).chars().take(8).collect(),
            text(&n["Address"]),
            text(&n["Datacenter"]),
        ]
    })
    .await
}

/// GETs the JSON array at `path`: as it is with `-format=json`, else a table of `header`
/// with a row per element.
async fn list(
    c: &Client,
    path: &str,
    what: &str,
    format: Format,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<String, CliError> {
    let v = c.get(path, what).await?.unwrap_or_default();
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let rows: Vec<Vec<String>> = v.as_array().into_iter().flatten().map(row).collect();
    Ok(table(header, &rows))
}

/// `consulate catalog services [-datacenter DC] [-tags]`.
pub async fn services(
    c: &Client,
    dc: Option<&str>,
    tags: bool,
    format: Format,
) -> Result<String, CliError> {
    let v = c
        .get(
            &format!("/v1/catalog/services{}", dc_param(dc)),
            "listing services",
        )
        .await?
        .unwrap_or_default();
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let Some(map) = v.as_object() else {
        return Ok(String::new());
    };
    if !tags {
        return Ok(map.keys().map(|k| format!("{k}\n")).collect());
    }
    let rows: Vec<Vec<String>> = map
        .iter()
        .map(|(name, t)| {
            let tags: Vec<String> = t.as_array().into_iter().flatten().map(text).collect();
            vec![name.clone(), tags.join(",")]
        })
        .collect();
    Ok(table(&["Service", "Tags"], &rows))
}

fn decode_value(e: &Value) -> Result<String, CliError> {
    use base64::Engine;
    let raw = match e["Value"].as_str() {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|err| CliError::Input(format!("bad value encoding: {err}")))?,
        None => Vec::new(),
    };
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// `consulate kv get KEY [-recurse]`: the value, or `key:value` lines with `-recurse`.
pub async fn kv_get(
    c: &Client,
    key: &str,
    recurse: bool,
    format: Format,
) -> Result<String, CliError> {
    let path = format!("/v1/kv/{key}{}", if recurse { "?recurse" } else { "" });
    let Some(v) = c.get(&path, &format!("reading {key}")).await? else {
        return Err(CliError::Input(format!("No key exists at: {key}")));
    };
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let entries = v.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    for e in &entries {
        if recurse {
            out.push_str(&format!("{}:{}\n", text(&e["Key"]), decode_value(e)?));
        } else {
            out.push_str(&decode_value(e)?);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `consulate kv put KEY [VALUE]`.
pub async fn kv_put(c: &Client, key: &str, value: &str) -> Result<String, CliError> {
    let answer = c
        .put(
            &format!("/v1/kv/{key}"),
            value.as_bytes().to_vec(),
            &format!("writing {key}"),
        )
        .await?;
    if answer.trim() != "true" {
        return Err(CliError::Input(format!("Failed writing data to {key}")));
    }
    Ok(format!("Success! Data written to: {key}\n"))
}

/// `consulate kv delete KEY [-recurse]`.
pub async fn kv_delete(c: &Client, key: &str, recurse: bool) -> Result<String, CliError> {
    let path = format!("/v1/kv/{key}{}", if recurse { "?recurse" } else { "" });
    c.delete(&path, &format!("deleting {key}")).await?;
    Ok(if recurse {
        format!("Success! Deleted keys with prefix: {key}\n")
    } else {
        format!("Success! Deleted key: {key}\n")
    })
}

/// `consulate session list`: every session of the DC (Consul's fields).
pub async fn session_list(c: &Client, format: Format) -> Result<String, CliError> {
    let header = [
        "ID",
        "Name",
        "Node",
        "TTL",
        "Behavior",
        "LockDelay",
        "Checks",
    ];
    list(
        c,
        "/v1/session/list",
        "listing sessions",
        format,
        &header,
        |s| {
            let checks: Vec<String> = s["NodeChecks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            vec![
                text(&s["ID"]),
                text(&s["Name"]),
                text(&s["Node"]),
                text(&s["TTL"]),
                text(&s["Behavior"]),
                format!("{}s", s["LockDelay"].as_u64().unwrap_or(0) / 1_000_000_000),
                checks.join(","),
            ]
        },
    )
    .await
}

/// `consulate services register FILE`: a JSON file holding Consul's `{"service": {...}}`
/// or `{"services": [...]}` (or a bare service object), registered with the local agent.
pub async fn services_register(c: &Client, file: &Path) -> Result<String, CliError> {
    let content = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    let v: Value = serde_json::from_str(&content)
        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    let field = |name: &str| {
        v.as_object().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    };
    let defs: Vec<Value> = match (field("service"), field("services")) {
        (Some(one), _) => vec![one],
        (None, Some(Value::Array(many))) => many,
        _ => vec![v.clone()],
    };
    let mut out = String::new();
    for def in defs {
        let name = def
            .as_object()
            .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("name")))
            .map(|(_, v)| text(v))
            .unwrap_or_default();
        c.put(
            "/v1/agent/service/register",
            def.to_string().into_bytes(),
            &format!("registering service {name:?}"),
        )
        .await?;
        out.push_str(&format!("Registered service: {name}\n"));
    }
    Ok(out)
}

/// A token as Consul's CLI prints it.
fn token_text(t: &Value) -> String {
    let mut out = format!(
        "AccessorID:       {}\nSecretID:         {}\nDescription:      {}\nLocal:            {}\nCreate Time:      {}\n",
        text(&t["AccessorID"]),
        text(&t["SecretID"]),
        text(&t["Description"]),
        t["Local"].as_bool().unwrap_or(false),
        text(&t["CreateTime"]),
    );
    if let Some(exp) = t["ExpirationTime"].as_str() {
        out += &format!("Expiration Time:  {exp}\n");
    }
    out += "Policies:\n";
    for p in t["Policies"].as_array().into_iter().flatten() {
        out += &format!("   {} - {}\n", text(&p["ID"]), text(&p["Name"]));
    }
    out
}

/// A policy as Consul's CLI prints it.
fn policy_text(p: &Value) -> String {
    format!(
        "ID:           {}\nName:         {}\nDescription:  {}\nDatacenters:  {}\nRules:\n{}\n",
        text(&p["ID"]),
        text(&p["Name"]),
        text(&p["Description"]),
        p["Datacenters"]
            .as_array()
            .map(|d| d.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        text(&p["Rules"]),
    )
}

fn one_out(v: &Value, format: Format, pretty: fn(&Value) -> String) -> String {
    match format {
        Format::Json => json_out(v),
        Format::Pretty => pretty(v),
    }
}

async fn put_json(c: &Client, path: &str, body: &Value, what: &str) -> Result<Value, CliError> {
    let answer = c.put(path, body.to_string().into_bytes(), what).await?;
    serde_json::from_str(&answer).map_err(|e| CliError::Input(format!("{what}: bad answer: {e}")))
}

/// `consulate acl bootstrap`: the DC's first management token.
pub async fn acl_bootstrap(c: &Client, format: Format) -> Result<String, CliError> {
    let t = put_json(c, "/v1/acl/bootstrap", &Value::Null, "bootstrapping ACLs").await?;
    Ok(one_out(&t, format, token_text))
}

/// Rules given as `@FILE` (read from it) or inline.
fn rules_arg(rules: &str) -> Result<String, CliError> {
    match rules.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Input(format!("reading rules from {path}: {e}"))),
        None => Ok(rules.to_string()),
    }
}

/// `consulate acl policy create -name N [-description D] [-rules @FILE|RULES]`.
pub async fn acl_policy_create(
    c: &Client,
    name: &str,
    description: &str,
    rules: &str,
    format: Format,
) -> Result<String, CliError> {
    let body = serde_json::json!({
        "Name": name, "Description": description, "Rules": rules_arg(rules)?,
    });
    let p = put_json(c, "/v1/acl/policy", &body, "creating the policy").await?;
    Ok(one_out(&p, format, policy_text))
}

/// The policy path for `-id` or `-name`.
fn policy_path(id: Option<&str>, name: Option<&str>) -> Result<String, CliError> {
    match (id, name) {
        (Some(id), _) => Ok(format!("/v1/acl/policy/{id}")),
        (None, Some(name)) => Ok(format!("/v1/acl/policy/name/{name}")),
        (None, None) => Err(CliError::Input("Must specify either -id or -name".into())),
    }
}

/// `consulate acl policy read -id ID | -name NAME`.
pub async fn acl_policy_read(
    c: &Client,
    id: Option<&str>,
    name: Option<&str>,
    format: Format,
) -> Result<String, CliError> {
    let path = policy_path(id, name)?;
    let p = c
        .get(&path, "reading the policy")
        .await?
        .ok_or_else(|| CliError::Input("Policy not found".into()))?;
    Ok(one_out(&p, format, policy_text))
}

/// `consulate acl policy list`.
pub async fn acl_policy_list(c: &Client, format: Format) -> Result<String, CliError> {
    list(
        c,
        "/v1/acl/policies",
        "listing policies",
        format,
        &["ID", "Name", "Description"],
        |p| vec![text(&p["ID"]), text(&p["Name"]), text(&p["Description"])],
    )
    .await
}

/// `consulate acl policy delete -id ID | -name NAME`.
pub async fn acl_policy_delete(
    c: &Client,
    id: Option<&str>,
    name: Option<&str>,
) -> Result<String, CliError> {
    let id = match (id, name) {
        (Some(id), _) => id.to_string(),
        _ => {
            let p = c
                .get(&policy_path(None, name)?, "finding the policy")
                .await?
                .ok_or_else(|| CliError::Input("Policy not found".into()))?;
            text(&p["ID"])
        }
    };
    c.delete(&format!("/v1/acl/policy/{id}"), "deleting the policy")
        .await?;
    Ok(format!("Policy \"{id}\" deleted successfully\n"))
}

/// What `consulate acl token create` is given.
pub struct TokenSpec {
    /// `-description`.
    pub description: String,
    /// `-policy-name` (repeatable).
    pub policy_names: Vec<String>,
    /// `-policy-id` (repeatable).
    pub policy_ids: Vec<String>,
    /// `-role-name` (repeatable).
    pub role_names: Vec<String>,
    /// `-local`.
    pub local: bool,
    /// `-expires-ttl` (Go duration).
    pub expires_ttl: Option<String>,
}

/// `consulate acl token create ...`.
pub async fn acl_token_create(
    c: &Client,
    spec: &TokenSpec,
    format: Format,
) -> Result<String, CliError> {
    let policies: Vec<Value> = spec
        .policy_names
        .iter()
        .map(|n| serde_json::json!({"Name": n}))
        .chain(spec.policy_ids.iter().map(|i| serde_json::json!({"ID": i})))
        .collect();
    let roles: Vec<Value> = spec
        .role_names
        .iter()
        .map(|n| serde_json::json!({"Name": n}))
        .collect();
    let mut body = serde_json::json!({
        "Description": spec.description, "Policies": policies, "Roles": roles,
        "Local": spec.local,
    });
    if let Some(ttl) = &spec.expires_ttl {
        body["ExpirationTTL"] = Value::String(ttl.clone());
    }
    let t = put_json(c, "/v1/acl/token", &body, "creating the token").await?;
    Ok(one_out(&t, format, token_text))
}

/// `consulate acl token read -id ACCESSOR | -self`.
pub async fn acl_token_read(
    c: &Client,
    id: Option<&str>,
    format: Format,
) -> Result<String, CliError> {
    let path = match id {
        Some(id) => format!("/v1/acl/token/{id}"),
        None => "/v1/acl/token/self".to_string(),
    };
    let t = c
        .get(&path, "reading the token")
        .await?
        .ok_or_else(|| CliError::Input("Token not found".into()))?;
    Ok(one_out(&t, format, token_text))
}

/// `consulate acl token list`.
pub async fn acl_token_list(c: &Client, format: Format) -> Result<String, CliError> {
    list(
        c,
        "/v1/acl/tokens",
        "listing tokens",
        format,
        &["AccessorID", "Description", "Local", "Policies"],
        |t| {
            let policies: Vec<String> = t["Policies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| text(&p["Name"]))
                .collect();
            vec![
                text(&t["AccessorID"]),
                text(&t["Description"]),
                t["Local"].as_bool().unwrap_or(false).to_string(),
                policies.join(","),
            ]
        },
    )
    .await
}

/// `consulate acl token delete -id ACCESSOR`.
pub async fn acl_token_delete(c: &Client, id: &str) -> Result<String, CliError> {
    c.delete(&format!("/v1/acl/token/{id}"), "deleting the token")
        .await?;
    Ok(format!("Token \"{id}\" deleted successfully\n"))
}

/// `consulate acl replication`: how ACL replication stands (Consul's fields).
pub async fn acl_replication(c: &Client, format: Format) -> Result<String, CliError> {
    let v = c
        .get("/v1/acl/replication", "reading the replication status")
        .await?
        .unwrap_or_default();
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let rows = [
        ("Enabled", "Enabled"),
        ("Running", "Running"),
        ("Source Datacenter", "SourceDatacenter"),
        ("Replication Type", "ReplicationType"),
        ("Replicated Index", "ReplicatedIndex"),
        ("Replicated Token Index", "ReplicatedTokenIndex"),
        ("Last Success", "LastSuccess"),
        ("Last Error", "LastError"),
        ("Last Error Message", "LastErrorMessage"),
    ];
    Ok(rows
        .iter()
        .map(|(label, key)| format!("{:<24}{}\n", format!("{label}:"), text(&v[*key])))
        .collect())
}

/// `consulate rtt [-wan] A [B]`: the round trip estimated from network coordinates between
/// two nodes (B defaults to the agent's own node), as `consul rtt` prints it. LAN names
/// are node names; WAN names are `node.dc`.
pub async fn rtt(c: &Client, wan: bool, a: &str, b: Option<&str>) -> Result<String, CliError> {
    let own = || async {
        let me = c
            .get("/v1/agent/self", "reading the agent")
            .await?
            .unwrap_or_default();
        let node = text(&me["Config"]["NodeName"]);
        Ok::<String, CliError>(if wan {
            format!("{node}.{}", text(&me["Config"]["Datacenter"]))
        } else {
            node
        })
    };
    let b = match b {
        Some(b) => b.to_string(),
        None => own().await?,
    };
    let list: Vec<Value> = if wan {
        let dcs = c
            .get("/v1/coordinate/datacenters", "reading WAN coordinates")
            .await?
            .unwrap_or_default();
        dcs.as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["Coordinates"].as_array().cloned().unwrap_or_default())
            .collect()
    } else {
        c.get("/v1/coordinate/nodes", "reading LAN coordinates")
            .await?
            .unwrap_or_default()
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let find = |name: &str| {
        list.iter()
            .find(|e| e["Node"] == name)
            .and_then(|e| {
                serde_json::from_value::<crate::coordinate::Coordinate>(e["Coord"].clone()).ok()
            })
            .ok_or_else(|| CliError::Input(format!("no coordinate for node {name:?}")))
    };
    let (ca, cb) = (find(a)?, find(&b)?);
    if !ca.is_compatible_with(&cb) {
        return Err(CliError::Input("the coordinates are not compatible".into()));
    }
    let ms = ca.distance_to(&cb).as_secs_f64() * 1000.0;
    let pool = if wan { "WAN" } else { "LAN" };
    Ok(format!(
        "Estimated {a} <-> {b} rtt: {ms:.3} ms (using {pool} coordinates)\n"
    ))
}

/// What `consulate query create` defines (Consul's prepared-query fields).
#[derive(Debug, Clone, Default)]
pub struct QueryDefinition {
    /// The query's name.
    pub name: String,
    /// The service it selects.
    pub service: String,
    /// Fail over to this many nearest DCs.
    pub nearest_n: u32,
    /// Then to these DCs.
    pub datacenters: Vec<String>,
    /// Tags every instance must carry (`!tag`: must not).
    pub tags: Vec<String>,
    /// Leave out instances with a warning.
    pub only_passing: bool,
    /// Sort by round trip from this node (`_agent`).
    pub near: Option<String>,
    /// The TTL of DNS answers.
    pub dns_ttl: Option<String>,
    /// Our extension: fail over while fewer instances than this are selected.
    pub min_passing: u32,
}

/// `consulate query create -name N -service S [...]`: prints the new query's ID.
pub async fn query_create(c: &Client, d: &QueryDefinition) -> Result<String, CliError> {
    let mut failover = serde_json::json!({
        "NearestN": d.nearest_n,
        "Datacenters": d.datacenters,
    });
    if d.min_passing > 0 {
        failover["MinPassing"] = d.min_passing.into();
    }
    let body = serde_json::json!({
        "Name": d.name,
        "Service": {
            "Service": d.service,
            "Failover": failover,
            "Tags": d.tags,
            "OnlyPassing": d.only_passing,
            "Near": d.near.clone().unwrap_or_default(),
        },
        "DNS": {"TTL": d.dns_ttl.clone().unwrap_or_default()},
    });
    let resp = c
        .send(
            c.http
                .post(format!("{}/v1/query", c.base))
                .body(body.to_string()),
            "creating the query",
        )
        .await?;
    let v: Value = resp
        .json()
        .await
        .map_err(|e| CliError::Input(format!("creating the query: bad answer: {e}")))?;
    Ok(format!("{}\n", text(&v["ID"])))
}

/// `consulate query list`.
pub async fn query_list(c: &Client, format: Format) -> Result<String, CliError> {
    let header = ["ID", "Name", "Service", "Failover"];
    list(c, "/v1/query", "listing queries", format, &header, |q| {
        let f = &q["Service"]["Failover"];
        let dcs: Vec<String> = f["Datacenters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        vec![
            text(&q["ID"]),
            text(&q["Name"]),
            text(&q["Service"]["Service"]),
            format!("nearest {} then [{}]", text(&f["NearestN"]), dcs.join(",")),
        ]
    })
    .await
}

/// `consulate query execute NAME [-near N] [-limit N] [-datacenter DC]`: the instances,
/// and which DC answered after how many failovers.
pub async fn query_execute(
    c: &Client,
    name: &str,
    near: Option<&str>,
    limit: Option<u32>,
    dc: Option<&str>,
    format: Format,
) -> Result<String, CliError> {
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(n) = near {
        params.push(("near", n.to_string()));
    }
    if let Some(l) = limit {
        params.push(("limit", l.to_string()));
    }
    if let Some(d) = dc {
        params.push(("dc", d.to_string()));
    }
    let query = serde_urlencoded::to_string(&params).unwrap_or_default();
    let path = format!("/v1/query/{name}/execute?{query}");
    let v = c
        .get(&path, &format!("executing {name}"))
        .await?
        .ok_or_else(|| CliError::Input(format!("no query named {name:?}")))?;
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let rows: Vec<Vec<String>> = v["Nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["Node"]["Node"]),
                text(&e["Node"]["Address"]),
                text(&e["Service"]["Port"]),
                text(&e["Service"]["ID"]),
            ]
        })
        .collect();
    Ok(format!(
        "{}Datacenter: {} (failovers: {})\n",
        table(&["Node", "Address", "Port", "Service ID"], &rows),
        text(&v["Datacenter"]),
        text(&v["Failovers"])
    ))
}

/// `consulate query delete ID`.
pub async fn query_delete(c: &Client, id: &str) -> Result<String, CliError> {
    c.delete(&format!("/v1/query/{id}"), "deleting the query")
        .await?;
    Ok(format!("Query {id} deleted\n"))
}

/// `consulate operator raft list-peers`: the Raft configuration, as `consul operator raft
/// list-peers` prints it.
pub async fn raft_list_peers(c: &Client, format: Format) -> Result<String, CliError> {
    let v = c
        .get(
            "/v1/operator/raft/configuration",
            "reading the Raft configuration",
        )
        .await?
        .unwrap_or_default();
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let rows: Vec<Vec<String>> = v["Servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(&s["Node"]),
                text(&s["ID"]),
                text(&s["Address"]),
                if s["Leader"] == true {
                    "leader"
                } else {
                    "follower"
                }
                .to_string(),
                text(&s["Voter"]),
                text(&s["ProtocolVersion"]),
            ]
        })
        .collect();
    Ok(table(
        &["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
        &rows,
    ))
}

/// `consulate operator raft remove-peer -address IP:PORT` (or `-id`).
pub async fn raft_remove_peer(c: &Client, peer: &str) -> Result<String, CliError> {
    let key = if peer.contains(':') { "address" } else { "id" };
    let query = serde_urlencoded::to_string([(key, peer)]).unwrap_or_default();
    c.delete(
        &format!("/v1/operator/raft/peer?{query}"),
        "removing the peer",
    )
    .await?;
    Ok(format!("Removed peer with {key} \"{peer}\"\n"))
}

/// `consulate operator raft transfer-leader [-id ID]`: hands leadership to that server
/// (node ID, name or address), or to the one the leader picks.
pub async fn raft_transfer_leader(c: &Client, id: Option<&str>) -> Result<String, CliError> {
    let path = match id {
        Some(id) => format!(
            "/v1/operator/raft/transfer-leader?{}",
            serde_urlencoded::to_string([("id", id)]).unwrap_or_default()
        ),
        None => "/v1/operator/raft/transfer-leader".into(),
    };
    c.send(
        c.http.post(format!("{}{path}", c.base)),
        "transferring leadership",
    )
    .await?;
    Ok("Success\n".into())
}

/// `consulate operator autopilot state`: each server's health as the leader sees it, and
/// how many may fail (an unhealthy DC is a 429 whose body says the same).
pub async fn autopilot_state(c: &Client, format: Format) -> Result<String, CliError> {
    let v = match c
        .get("/v1/operator/autopilot/health", "reading autopilot health")
        .await
    {
        Ok(v) => v.unwrap_or_default(),
        Err(CliError::Refused {
            status: 429, body, ..
        }) => serde_json::from_str(&body)
            .map_err(|e| CliError::Input(format!("reading autopilot health: {e}")))?,
        Err(e) => return Err(e),
    };
    if format == Format::Json {
        return Ok(json_out(&v));
    }
    let rows: Vec<Vec<String>> = v["Servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(&s["Name"]),
                text(&s["Address"]),
                text(&s["Leader"]),
                text(&s["Voter"]),
                text(&s["LastContact"]),
                text(&s["Healthy"]),
            ]
        })
        .collect();
    Ok(format!(
        "Healthy: {}\nFailure Tolerance: {}\n{}",
        text(&v["Healthy"]),
        text(&v["FailureTolerance"]),
        table(
            &[
                "Node",
                "Address",
                "Leader",
                "Voter",
                "LastContact",
                "Healthy"
            ],
            &rows
        )
    ))
}

/// `consulate snapshot save FILE` (`-stale`): saves the DC's state, verifies the archive,
/// and only then puts it at `file` (written beside it and renamed: a failed save leaves no
/// partial file).
pub async fn snapshot_save(c: &Client, file: &Path, stale: bool) -> Result<String, CliError> {
    let path = if stale {
        "/v1/snapshot?stale"
    } else {
        "/v1/snapshot"
    };
    let resp = c
        .send(
            c.http.get(format!("{}{path}", c.base)),
            "saving the snapshot",
        )
        .await?;
    let archive = resp
        .bytes()
        .await
        .map_err(|e| CliError::Input(format!("saving the snapshot: {e}")))?;
    let meta = crate::state::archive::verify(&archive)
        .map_err(|e| CliError::Input(format!("the saved snapshot does not verify: {e}")))?;
    let partial = file.with_extension("partial");
    std::fs::write(&partial, &archive)
        .and_then(|()| std::fs::rename(&partial, file))
        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    Ok(format!(
        "Saved and verified snapshot to index {}\n",
        meta.index
    ))
}

/// `consulate snapshot restore FILE`: replaces the DC's state with the archive's.
pub async fn snapshot_restore(c: &Client, file: &Path) -> Result<String, CliError> {
    let archive =
        std::fs::read(file).map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    c.put("/v1/snapshot", archive, "restoring the snapshot")
        .await?;
    Ok("Restored snapshot\n".into())
}

/// `consulate snapshot inspect FILE`: the archive's metadata and entries per table, read
/// locally (every checksum verified).
pub fn snapshot_inspect(file: &Path, format: Format) -> Result<String, CliError> {
    let archive =
        std::fs::read(file).map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    let (meta, counts) = crate::state::archive::inspect(&archive)
        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    if format == Format::Json {
        let mut v = serde_json::to_value(&meta).unwrap_or_default();
        v["Counts"] = counts
            .iter()
            .map(|(t, n)| ((*t).to_string(), Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        return Ok(format!("{v:#}\n"));
    }
    let mut out = String::new();
    for (k, v) in [
        ("ID", meta.id.clone()),
        ("Size", meta.size.to_string()),
        ("Index", meta.index.to_string()),
        ("Term", meta.term.to_string()),
        ("Version", meta.version.to_string()),
        ("Datacenter", meta.datacenter.clone()),
    ] {
        out.push_str(&format!(" {k:<12} {v}\n"));
    }
    out.push('\n');
    out.push_str(&format!(" {:<18} {:>8}\n", "Type", "Count"));
    for (t, n) in counts {
        out.push_str(&format!(" {t:<18} {n:>8}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_consul() {
        let t = table(
            &["Node", "Address", "Status"],
            &[
                vec!["s1".into(), "127.0.0.1:8300".into(), "alive".into()],
                vec!["client-22".into(), "10.0.0.2:8300".into(), "failed".into()],
            ],
        );
        assert_eq!(
            t,
            "Node       Address         Status\n\
             s1         127.0.0.1:8300  alive\n\
             client-22  10.0.0.2:8300   failed\n"
        );
    }
}
