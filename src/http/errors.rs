//! Every error a client sees, in BIK's shape: `{"status": 400, "errors": [{"message": "..."}]}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::providers::Refusal;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After` seconds, for answers that ask the client to come back.
    pub retry_after: Option<u32>,
}

/// How long a client is asked to wait while the store cannot take writes.
const STORAGE_RETRY_AFTER_SECONDS: u32 = 30;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A 500 whose body says nothing; the cause goes to the log only.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the server log",
        )
    }
}

/// Every error: `{"status": 400, "errors": [{"message": "..."}]}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    status: u16,
    errors: Vec<ErrorMessage>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorMessage {
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody {
            status: self.status.as_u16(),
            errors: vec![ErrorMessage {
                message: self.message.clone(),
            }],
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::BadCursor => Self::bad_request("cursor is not valid for this query"),
            // Logged once per change of state by the store, not per request.
            failure if failure.is_storage_failure() => Self {
                retry_after: Some(STORAGE_RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage is not accepting writes; nothing was stored; retry later",
                )
            },
            // Already counted and logged with its key where it was read.
            unreadable if unreadable.is_unreadable() => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this record is stored but cannot be read; the rest of the store is served \
                 (`flowhook check-store` lists such records)",
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthorized(reason) => Self::unauthorized(reason),
            Refusal::NotJson(_) => Self::bad_request(refusal.to_string()),
        }
    }
}
