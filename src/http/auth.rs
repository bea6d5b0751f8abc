//! The status API's bearer token, checked as an extractor so a handler cannot forget it.

use std::future::{ready, Ready};

use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};

use super::errors::ApiError;
use super::AppState;
use crate::providers::constant_time_eq;

/// Present in a handler's arguments only when `Authorization: Bearer <api.token>` matched.
pub struct ApiCaller;

impl FromRequest for ApiCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::internal(&"application state is missing")));
        };
        let expected = state.settings.api.token.expose();
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.as_bytes().strip_prefix(b"Bearer "));
        ready(match presented {
            Some(token) if !expected.is_empty() && constant_time_eq(token, expected.as_bytes()) => {
                Ok(ApiCaller)
            }
            Some(_) => Err(ApiError::unauthorized("invalid bearer token")),
            None => Err(ApiError::unauthorized(
                "missing Authorization: Bearer <api.token> header",
            )),
        })
    }
}
