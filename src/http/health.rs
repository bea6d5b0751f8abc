//! Liveness and readiness, for load balancers and orchestrators; no token needed.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{guarded, AppState};
use crate::observe;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/healthz").route(web::get().to(healthz)))
        .service(guarded("/readyz").route(web::get().to(readyz)))
        .service(guarded("/metrics").route(web::get().to(metrics)));
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    status: &'static str,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Ready to take traffic: store writable and flushing, free disk above the floor,
/// dispatcher running.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready, with the reason", body = Readiness))
)]
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state
        .store
        .readiness()
        .await
        .and_then(|()| state.dispatcher.check())
    {
        Ok(()) => HttpResponse::Ok().json(Readiness {
            status: "ready",
            reason: None,
        }),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            HttpResponse::ServiceUnavailable().json(Readiness {
                status: "not ready",
                reason: Some(reason),
            })
        }
    }
}

/// Prometheus text. Gauges that describe the store are read now, at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let store = &state.store;
    match store.size_on_disk().await {
        Ok(bytes) => metrics::gauge!(observe::STORE_BYTES).set(bytes as f64),
        Err(error) => tracing::warn!(%error, "could not read the store size"),
    }
    match store.action_counts().await {
        Ok(counts) => {
            for (s, n) in counts {
                metrics::gauge!(observe::OUTBOX_DEPTH, "state" => s.as_str()).set(n as f64);
            }
        }
        Err(error) => tracing::warn!(%error, "could not count actions"),
    }
    match store.oldest_due_ms().await {
        Ok(ms) => metrics::gauge!(observe::OUTBOX_OLDEST_DUE).set(ms as f64 / 1000.0),
        Err(error) => tracing::warn!(%error, "could not read the outbox"),
    }
    if let Some((open, idle)) = store.database_connections() {
        let in_use = (open as usize).saturating_sub(idle);
        metrics::gauge!(observe::DB_CONNECTIONS, "state" => "idle").set(idle as f64);
        metrics::gauge!(observe::DB_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(observe::handle().render())
}
