//! What one client of the HTTP API may hold: connections per client IP (Consul's
//! `http_max_conns_per_client`: one more is answered 429 and closed) and the time a
//! request's body may take to arrive (past it: 408), so that a careless or hostile client
//! cannot pin an agent's connections or memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::HttpError;

/// Open connections by client IP, each capped.
#[derive(Clone)]
pub struct ConnLimiter {
    per_client: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnLimiter {
    /// At most `per_client` connections per client IP (0: no limit).
    pub fn new(per_client: usize) -> ConnLimiter {
        ConnLimiter {
            per_client,
            open: Arc::default(),
        }
    }

    /// A place for one more connection from `ip`, if it holds fewer than the cap.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnPermit> {
        let mut open = self.open.lock().expect("connection counts poisoned");
        let n = open.entry(ip).or_insert(0);
        if self.per_client > 0 && *n >= self.per_client {
            return None;
        }
        *n += 1;
        Some(ConnPermit {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection counts poisoned");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a refused connection is told before it is closed (as Consul's limiter does).
pub const TOO_MANY_CONNECTIONS: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Reads a request's body in full within `timeout` (at most `limit` bytes) before the
/// handler runs: a body trickled slower is answered 408, a larger one 413. A request
/// without a body passes as it is.
pub async fn read_body(req: Request, limit: usize, timeout: Duration) -> Result<Request, Response> {
    if req.body().is_end_stream() {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(_)) => Err(HttpError::TooLarge(limit).into_response()),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("Request body not received within {timeout:?}"),
        )
            .into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_ip_gets_its_own_cap_and_places_come_back() {
        let limiter = ConnLimiter::new(2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert!(limiter.admit(a).is_none(), "a third from the same IP");
        let _other = limiter.admit(b).expect("another IP has its own cap");
        drop(first);
        assert!(
            limiter.admit(a).is_some(),
            "a closed connection frees its place"
        );
        assert!(ConnLimiter::new(0).admit(a).is_some(), "0: no limit");
    }
}
