//! Reads a request body: up to `server.max_body_bytes` (`413` past it), and within
//! `server.body_timeout_ms` (`408` after it, and the connection is closed), so that a client
//! that stops sending cannot hold a connection, and its file descriptor, for long.

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::HttpRequest;
use futures_util::StreamExt;

use super::errors::ApiError;
use super::AppState;

/// The body, within the server's size and time limits.
pub async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    let server = &state.settings.server;
    let timeout = std::time::Duration::from_millis(server.body_timeout_ms);
    match tokio::time::timeout(timeout, read_all(req, payload, server.max_body_bytes)).await {
        Ok(body) => body,
        Err(_) => {
            metrics::counter!(crate::observe::BODY_TIMEOUTS).increment(1);
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms",
                    server.body_timeout_ms
                ),
            ))
        }
    }
}

async fn read_all(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
