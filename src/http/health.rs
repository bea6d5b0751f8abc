//! Liveness and readiness, for load balancers and orchestrators; no token needed.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{guarded, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/healthz").route(web::get().to(healthz)))
        .service(guarded("/readyz").route(web::get().to(readyz)));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state
        .store
        .readiness()
        .and_then(|()| state.dispatcher.check())
    {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "not ready", "reason": reason }))
        }
    }
}
