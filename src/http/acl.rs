//! Consul's ACL endpoints (`/v1/acl/*`): bootstrap, policies, roles and tokens. Every
//! write goes through Raft as one command and is then read back in Consul's shape; who may
//! do what is decided where the data is (`state::authorize`), like every other request.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::HttpError;
use super::json::decode;
use super::params::Params;
use super::{Api, read};
use crate::acl::Secret;
use crate::acl::model::{Link, Policy, Role, Token, now_ms};
use crate::rpc::RpcError;
use crate::state::query::{AclName, Query, QueryResult};
use crate::state::{Command, CommandResult};
use crate::vocab::random_uuid;

/// A token as Consul's API shows it (times in RFC 3339).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TokenJson {
    #[serde(rename = "AccessorID")]
    accessor_id: String,
    #[serde(rename = "SecretID")]
    secret_id: String,
    description: String,
    policies: Vec<Link>,
    roles: Vec<Link>,
    local: bool,
    create_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration_time: Option<String>,
    create_index: u64,
    modify_index: u64,
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<Token> for TokenJson {
    fn from(t: Token) -> Self {
        TokenJson {
            accessor_id: t.accessor_id,
            secret_id: t.secret_id,
            description: t.description,
            policies: t.policies,
            roles: t.roles,
            local: t.local,
            create_time: rfc3339(t.create_ms),
            expiration_time: t.expiration_ms.map(rfc3339),
            create_index: t.create_index,
            modify_index: t.modify_index,
        }
    }
}

/// A link in a request body: `{"ID": ...}` or `{"Name": ...}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
}

fn links(bodies: Vec<LinkBody>) -> Vec<Link> {
    bodies
        .into_iter()
        .map(|l| Link {
            id: l.id,
            name: l.name,
        })
        .collect()
}

/// The request as sent to where global ACL objects are written (the primary DC, unless it
/// names a DC).
fn global(api: &Api, p: &Params) -> Params {
    p.for_dc(api.acl_dc(p).as_deref())
}

/// The request as sent to where token `accessor` lives: here if it is a `Local` token of
/// this DC, else the primary.
async fn token_home(api: &Api, p: &Params, accessor: &str) -> Result<Params, HttpError> {
    let here = read(
        api,
        p,
        Query::AclToken {
            accessor: accessor.to_string(),
        },
    )
    .await;
    match here {
        Ok((_, out)) if matches!(&out.result, QueryResult::AclTokens(v) if v.first().is_some_and(|t| t.local)) => {
            Ok(p.for_dc(p.dc()))
        }
        _ => Ok(global(api, p)),
    }
}

/// Runs `cmd` with the request's token: a refusal is 400 (or 403 for `forbidden`).
async fn apply(api: &Api, p: &Params, cmd: Command, forbidden: bool) -> Result<(), HttpError> {
    match api.dispatcher.write(p.token(), p.dc(), cmd).await? {
        CommandResult::Ok | CommandResult::Bool(_) => Ok(()),
        CommandResult::Rejected(why) if forbidden => Err(HttpError::Forbidden(why)),
        CommandResult::Rejected(why) => Err(HttpError::BadRequest(why)),
        CommandResult::Batch(_) | CommandResult::Txn(_) => Err(HttpError::shape()),
    }
}

/// The one policy, role or token `query` finds (with the request's token), or 404.
async fn one(api: &Api, p: &Params, query: Query, what: &str) -> Result<Response, HttpError> {
    let (headers, out) = read(api, p, query).await?;
    let json = match out.result {
        QueryResult::AclPolicies(mut v) if !v.is_empty() => Json(v.remove(0)).into_response(),
        QueryResult::AclRoles(mut v) if !v.is_empty() => Json(v.remove(0)).into_response(),
        QueryResult::AclTokens(mut v) if !v.is_empty() => {
            Json(TokenJson::from(v.remove(0))).into_response()
        }
        QueryResult::AclPolicies(_) | QueryResult::AclRoles(_) | QueryResult::AclTokens(_) => {
            return Err(HttpError::NotFoundBecause(format!(
                "Requested {what} does not exist"
            )));
        }
        _ => return Err(HttpError::shape()),
    };
    Ok((headers, json).into_response())
}

/// `PUT /v1/acl/bootstrap`: once per DC, a management token.
pub async fn bootstrap(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let p = global(&api, &p);
    let secret = random_uuid();
    let token = Token {
        accessor_id: random_uuid(),
        secret_id: secret.clone(),
        description: "Bootstrap Token (Global Management)".into(),
        create_ms: now_ms(),
        ..Token::default()
    };
    apply(&api, &p, Command::AclBootstrap(Box::new(token)), true).await?;
    let p = Params(p.0, Some(Secret(secret.clone())), p.2);
    one(
        &api,
        &p,
        Query::AclTokenSelf {
            secret: Secret(secret),
        },
        "token",
    )
    .await
}

/// A policy in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rules: String,
    #[serde(default)]
    datacenters: Vec<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    createindex: Option<u64>,
    #[serde(default)]
    modifyindex: Option<u64>,
}

async fn put_policy(
    api: &Api,
    p: &Params,
    id: String,
    body: &Bytes,
) -> Result<Response, HttpError> {
    let b: PolicyBody = decode(body)?;
    if !b.id.is_empty() && b.id != id {
        return Err(HttpError::BadRequest(
            "Policy ID in URL and payload do not match".into(),
        ));
    }
    let _ = (b.hash, b.createindex, b.modifyindex);
    let policy = Policy {
        id: id.clone(),
        name: b.name,
        description: b.description,
        rules: b.rules,
        datacenters: b.datacenters,
        ..Policy::default()
    };
    apply(api, p, Command::AclPolicySet(Box::new(policy)), false).await?;
    one(api, p, Query::AclPolicy(AclName::Id(id)), "policy").await
}

/// `PUT /v1/acl/policy`: creates a policy.
pub async fn create_policy(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    put_policy(&api, &global(&api, &p), random_uuid(), &body).await
}

/// `PUT /v1/acl/policy/:id`: updates a policy.
pub async fn update_policy(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let p = global(&api, &p);
    one(
        &api,
        &p,
        Query::AclPolicy(AclName::Id(id.clone())),
        "policy",
    )
    .await?;
    put_policy(&api, &p, id, &body).await
}

/// `GET /v1/acl/policy/:id`.
pub async fn get_policy(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    one(&api, &p, Query::AclPolicy(AclName::Id(id)), "policy").await
}

/// `GET /v1/acl/policy/name/:name`.
pub async fn get_policy_named(
    State(api): State<Api>,
    Path(name): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    one(&api, &p, Query::AclPolicy(AclName::Name(name)), "policy").await
}

/// `DELETE /v1/acl/policy/:id`.
pub async fn delete_policy(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    apply(
        &api,
        &global(&api, &p),
        Command::AclPolicyDelete { id },
        false,
    )
    .await?;
    Ok(Json(true).into_response())
}

/// Every policy, role or token (with the request's token), in Consul's shapes.
async fn all(api: &Api, p: &Params, query: Query) -> Result<Response, HttpError> {
    let (headers, out) = read(api, p, query).await?;
    let json = match out.result {
        QueryResult::AclPolicies(v) => Json(v).into_response(),
        QueryResult::AclRoles(v) => Json(v).into_response(),
        QueryResult::AclTokens(v) => {
            Json(v.into_iter().map(TokenJson::from).collect::<Vec<_>>()).into_response()
        }
        _ => return Err(HttpError::shape()),
    };
    Ok((headers, json).into_response())
}

/// `GET /v1/acl/policies`.
pub async fn policies(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    all(&api, &p, Query::AclPolicies).await
}

/// A role in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    policies: Vec<LinkBody>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    createindex: Option<u64>,
    #[serde(default)]
    modifyindex: Option<u64>,
}

async fn put_role(api: &Api, p: &Params, id: String, body: &Bytes) -> Result<Response, HttpError> {
    let b: RoleBody = decode(body)?;
    if !b.id.is_empty() && b.id != id {
        return Err(HttpError::BadRequest(
            "Role ID in URL and payload do not match".into(),
        ));
    }
    let _ = (b.hash, b.createindex, b.modifyindex);
    let role = Role {
        id: id.clone(),
        name: b.name,
        description: b.description,
        policies: links(b.policies),
        ..Role::default()
    };
    apply(api, p, Command::AclRoleSet(Box::new(role)), false).await?;
    one(api, p, Query::AclRole(AclName::Id(id)), "role").await
}

/// `PUT /v1/acl/role`: creates a role.
pub async fn create_role(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    put_role(&api, &global(&api, &p), random_uuid(), &body).await
}

/// `PUT /v1/acl/role/:id`: updates a role.
pub async fn update_role(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let p = global(&api, &p);
    one(&api, &p, Query::AclRole(AclName::Id(id.clone())), "role").await?;
    put_role(&api, &p, id, &body).await
}

/// `GET /v1/acl/role/:id`.
pub async fn get_role(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    one(&api, &p, Query::AclRole(AclName::Id(id)), "role").await
}

/// `GET /v1/acl/role/name/:name`.
pub async fn get_role_named(
    State(api): State<Api>,
    Path(name): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    one(&api, &p, Query::AclRole(AclName::Name(name)), "role").await
}

/// `DELETE /v1/acl/role/:id`.
pub async fn delete_role(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    apply(
        &api,
        &global(&api, &p),
        Command::AclRoleDelete { id },
        false,
    )
    .await?;
    Ok(Json(true).into_response())
}

/// `GET /v1/acl/roles`.
pub async fn roles(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    all(&api, &p, Query::AclRoles).await
}

/// A token in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[serde(default)]
    accessorid: String,
    #[serde(default)]
    secretid: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    policies: Vec<LinkBody>,
    #[serde(default)]
    roles: Vec<LinkBody>,
    #[serde(default)]
    local: bool,
    #[serde(default)]
    expirationttl: Option<String>,
    #[serde(default)]
    expirationtime: Option<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    createtime: Option<String>,
    #[serde(default)]
    createindex: Option<u64>,
    #[serde(default)]
    modifyindex: Option<u64>,
}

/// When a token made now with `body`'s expiry stops working.
fn expiry(b: &TokenBody, now: u64) -> Result<Option<u64>, HttpError> {
    if let Some(ttl) = b.expirationttl.as_deref().filter(|t| !t.is_empty()) {
        let d = crate::duration::parse_go_duration(ttl)
            .ok_or_else(|| HttpError::BadRequest(format!("Invalid ExpirationTTL {ttl:?}")))?;
        if d < std::time::Duration::from_secs(60) || d > std::time::Duration::from_secs(24 * 3600) {
            return Err(HttpError::BadRequest(
                "Token ExpirationTTL must be between 1m0s and 24h0m0s".into(),
            ));
        }
        return Ok(Some(now + d.as_millis() as u64));
    }
    if let Some(at) = b.expirationtime.as_deref().filter(|t| !t.is_empty()) {
        let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map_err(|e| HttpError::BadRequest(format!("Invalid ExpirationTime: {e}")))?;
        let ms = (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        if ms <= now {
            return Err(HttpError::BadRequest(
                "ExpirationTime cannot be in the past".into(),
            ));
        }
        return Ok(Some(ms));
    }
    Ok(None)
}

async fn put_token(
    api: &Api,
    p: &Params,
    accessor: Option<String>,
    body: &Bytes,
) -> Result<Response, HttpError> {
    let b: TokenBody = decode(body)?;
    let _ = (&b.hash, &b.createtime, b.createindex, b.modifyindex);
    // A `Local` token lives in this DC; any other is written in the primary.
    let global_p;
    let p = if b.local {
        p
    } else {
        global_p = global(api, p);
        &global_p
    };
    let now = now_ms();
    let accessor = match (accessor, b.accessorid.is_empty()) {
        (Some(a), false) if a != b.accessorid => {
            return Err(HttpError::BadRequest(
                "AccessorID in URL and payload do not match".into(),
            ));
        }
        (Some(a), _) => a,
        (None, false) => b.accessorid.clone(),
        (None, true) => random_uuid(),
    };
    let expiration_ms = expiry(&b, now)?;
    let secret = if b.secretid.is_empty() {
        // An update keeps the stored secret; a new token gets a fresh one.
        match read(
            api,
            p,
            Query::AclToken {
                accessor: accessor.clone(),
            },
        )
        .await
        {
            Ok((_, out)) => match out.result {
                QueryResult::AclTokens(v) if !v.is_empty() && v[0].secret_id != "<hidden>" => {
                    v[0].secret_id.clone()
                }
                _ => random_uuid(),
            },
            Err(HttpError::Rpc(RpcError::Acl(e))) => return Err(RpcError::Acl(e).into()),
            Err(_) => random_uuid(),
        }
    } else {
        b.secretid.clone()
    };
    let token = Token {
        accessor_id: accessor.clone(),
        secret_id: secret,
        description: b.description,
        policies: links(b.policies),
        roles: links(b.roles),
        local: b.local,
        expiration_ms,
        create_ms: now,
        ..Token::default()
    };
    apply(api, p, Command::AclTokenSet(Box::new(token)), false).await?;
    one(api, p, Query::AclToken { accessor }, "token").await
}

/// `PUT /v1/acl/token`: creates a token.
pub async fn create_token(
    State(api): State<Api>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    put_token(&api, &p, None, &body).await
}

/// `PUT /v1/acl/token/:accessor`: updates a token.
pub async fn update_token(
    State(api): State<Api>,
    Path(accessor): Path<String>,
    p: Params,
    body: Bytes,
) -> Result<Response, HttpError> {
    let p = token_home(&api, &p, &accessor).await?;
    one(
        &api,
        &p,
        Query::AclToken {
            accessor: accessor.clone(),
        },
        "token",
    )
    .await?;
    put_token(&api, &p, Some(accessor), &body).await
}

/// `GET /v1/acl/token/:accessor`.
pub async fn get_token(
    State(api): State<Api>,
    Path(accessor): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    one(&api, &p, Query::AclToken { accessor }, "token").await
}

/// `GET /v1/acl/token/self`: the token the request carries.
pub async fn token_self(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let Some(secret) = p.token() else {
        return Err(HttpError::Rpc(RpcError::Acl(
            crate::acl::AclError::NotFound,
        )));
    };
    one(&api, &p, Query::AclTokenSelf { secret }, "token").await
}

/// `DELETE /v1/acl/token/:accessor`.
pub async fn delete_token(
    State(api): State<Api>,
    Path(accessor): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    let p = token_home(&api, &p, &accessor).await?;
    apply(&api, &p, Command::AclTokenDelete { accessor }, false).await?;
    Ok(Json(true).into_response())
}

/// `GET /v1/acl/tokens`.
pub async fn tokens(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    all(&api, &p, Query::AclTokens).await
}

/// `GET /v1/acl/replication`: how ACL replication stands on the server that answers (of
/// `?dc=`); no token needed, as in Consul.
pub async fn replication(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let status = api
        .dispatcher
        .call(crate::rpc::AclReplicationStatus {
            dc: p.dc().map(str::to_string),
        })
        .await?;
    Ok(Json(status).into_response())
}
