//! Consul's `/v1/snapshot`: `GET` saves an archive of the DC's whole state at one index
//! (from the leader, or any server with `?stale`), `PUT` restores one into the running DC
//! through Raft (every server switches in one entry). Both need a management token. An
//! archive that fails verification is refused here, before anything is written.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::HttpError;
use super::params::Params;
use super::{Api, write_ok};
use crate::acl::{Access, Permission, Scalar};
use crate::rpc::SaveSnapshot;
use crate::state::{Command, archive};

/// The largest archive a restore takes (it travels as one Raft entry, inside the
/// transport's 64 MiB frames).
pub const MAX_ARCHIVE: usize = 48 * 1024 * 1024;

/// `GET /v1/snapshot` (`?dc=`, `?stale`): the archive, with `X-Consul-Index`.
pub async fn save(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    let mode = p.read_options()?.mode;
    let saved = api
        .dispatcher
        .call(SaveSnapshot {
            dc: p.dc().map(str::to_string),
            mode,
            token: p.token(),
        })
        .await?;
    let mut resp = saved.archive.into_response();
    let h = resp.headers_mut();
    h.insert(
        "X-Consul-Index",
        HeaderValue::from_str(&saved.index.to_string()).expect("digits are a valid header"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-gzip"),
    );
    Ok(resp)
}

/// `PUT /v1/snapshot` (`?dc=`): verifies the archive, then replaces the DC's state with it.
/// The body is taken whole (the router's body limit is for KV values; the middleware
/// already bounded this one by [`MAX_ARCHIVE`]).
pub async fn restore(
    State(api): State<Api>,
    p: Params,
    req: axum::extract::Request,
) -> Result<Response, HttpError> {
    // Who may restore is checked before the archive is looked at (as Consul: 403 first);
    // the leader checks again when it applies it.
    api.authorize(&p, Permission::scalar(Scalar::Acl, Access::Write))
        .await?;
    let body: Bytes = axum::body::to_bytes(req.into_body(), MAX_ARCHIVE)
        .await
        .map_err(|_| HttpError::TooLarge(MAX_ARCHIVE))?;
    let checked = body.clone();
    tokio::task::spawn_blocking(move || archive::verify(&checked))
        .await
        .map_err(|e| HttpError::BadRequest(format!("cannot verify the archive: {e}")))?
        .map_err(|e| HttpError::BadRequest(e.to_string()))?;
    write_ok(&api, &p, p.dc(), Command::Restore { archive: body }).await?;
    Ok(().into_response())
}
