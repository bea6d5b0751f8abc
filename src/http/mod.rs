//! HTTP routes. Each file is one area: inbound webhooks, the status API, health.

mod auth;
mod body;
pub mod errors;
mod health;
mod messages;
mod webhooks;

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use crate::config::Settings;
use crate::store::Store;
use errors::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(webhooks::routes)
        .configure(messages::routes)
        .configure(health::routes)
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| {
                ApiError::bad_request(format!("bad query string: {e}")).into()
            }),
        );
}

/// Unknown paths and methods answer in the same error shape as everything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}
