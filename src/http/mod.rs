//! HTTP routes. Each file is one area: inbound webhooks, the status API, health.

mod actions;
mod auth;
mod body;
pub mod errors;
mod health;
mod messages;
pub mod openapi;
pub mod request_id;
mod stats;
mod ui;
mod webhooks;

use std::sync::Arc;

use std::panic::AssertUnwindSafe;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use futures_util::FutureExt;

use crate::config::Settings;
use crate::store::Store;
use errors::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub dispatcher: crate::dispatch::Health,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(webhooks::routes)
        .configure(messages::routes)
        .configure(actions::routes)
        .configure(stats::routes)
        .configure(ui::routes)
        .configure(health::routes)
        .configure(openapi::routes)
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| {
                ApiError::bad_request(format!("bad query string: {e}")).into()
            }),
        );
}

/// A resource whose handlers answer a panic with a logged, opaque `500` instead of a dropped
/// connection. Resource level, not app level: the router must own the request while it
/// matches, and the catcher keeps a clone of it to answer with.
fn guarded(
    path: &str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path)
        .default_service(web::to(method_not_allowed))
        .wrap(actix_web::middleware::from_fn(catch_panics))
}

async fn catch_panics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let http_req = req.request().clone();
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(result) => result.map(ServiceResponse::map_into_boxed_body),
        Err(_) => {
            let error = ApiError::internal(&format!(
                "handler panicked on {} {}",
                http_req.method(),
                http_req.path()
            ));
            Ok(ServiceResponse::new(http_req, error.error_response()))
        }
    }
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    ))
}

/// Unknown paths answer in the same error shape as everything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}
