//! The one place where errors become HTTP status codes and bodies (plain text, as Consul).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::rpc::RpcError;

/// Everything an HTTP handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A client mistake: malformed parameter or body.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("not found")]
    NotFound,
    /// The thing named does not exist; the body says which.
    #[error("{0}")]
    NotFoundBecause(String),
    /// Refused for a reason the body says (e.g. a second ACL bootstrap).
    #[error("{0}")]
    Forbidden(String),
    /// The request body exceeds the endpoint's limit.
    #[error("Request body too large, max size: {0} bytes")]
    TooLarge(usize),
    /// A transaction with more operations than allowed (Consul's words).
    #[error("Transaction contains too many operations ({0} > {1})")]
    TooManyOps(usize, usize),
    /// A bug: an answer of the wrong shape. Never a client mistake.
    #[error("internal error: {0}")]
    Internal(String),
    /// Routing or Raft failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl HttpError {
    /// A query answered with a result of another kind than asked.
    pub fn shape() -> HttpError {
        HttpError::Internal("unexpected query result shape".into())
    }

    /// The status code Consul answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound | HttpError::NotFoundBecause(_) => StatusCode::NOT_FOUND,
            HttpError::TooLarge(_) | HttpError::TooManyOps(..) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::Rpc(RpcError::Acl(crate::acl::AclError::Disabled)) => {
                StatusCode::UNAUTHORIZED
            }
            HttpError::Rpc(RpcError::Acl(_)) => StatusCode::FORBIDDEN,
            HttpError::Rpc(RpcError::NotFound(_)) => StatusCode::NOT_FOUND,
            HttpError::Rpc(RpcError::Refused(_)) => StatusCode::BAD_REQUEST,
            HttpError::Internal(_) | HttpError::Rpc(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = match &self {
            HttpError::NotFound => String::new(),
            other => other.to_string(),
        };
        (self.status(), body).into_response()
    }
}
