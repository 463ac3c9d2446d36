//! The one place where errors become HTTP status codes and bodies (plain text, as Consul).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::dispatch::DispatchError;

/// Everything an HTTP handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A client mistake: malformed parameter or body.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("not found")]
    NotFound,
    /// The request body exceeds the endpoint's limit.
    #[error("Request body too large, max size: {0} bytes")]
    TooLarge(usize),
    /// Routing or Raft failed.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

impl HttpError {
    /// The status code Consul answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Dispatch(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
