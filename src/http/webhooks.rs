//! Inbound webhooks: verify over the raw bytes, parse into events, one durable commit, answer.
//! A handler never calls out; follow-ups go through the store's outbox.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};

use super::errors::ApiError;
use super::errors::ErrorBody;
use super::{body, guarded, AppState};
use crate::domain::Provider;
use crate::observe;
use crate::providers::{meta, Bik, Generic, Meta, ParseContext, Refusal, Source};
use crate::store::{IngestItem, IngestOutcome};

/// One line per provider: its route, served by [`webhook`].
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/webhooks/bik").route(web::post().to(bik_webhook)))
        .service(
            guarded("/webhooks/meta")
                .route(web::get().to(meta_handshake))
                .route(web::post().to(meta_webhook)),
        )
        .service(guarded("/webhooks/generic").route(web::post().to(generic_webhook)));
}

/// Every provider's webhook: its header checks, the body (bounded), verification over the
/// exact bytes, parsing, one durable commit, the answer. Refusals are counted and logged.
pub(super) async fn webhook<S: Source>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    counted(S::PROVIDER, async {
        let settings = S::settings(&state.settings.providers);
        let refused = |r| refused(S::PROVIDER, r);
        S::check_headers(settings, req.headers()).map_err(refused)?;
        let body = body::read(&req, payload, &state).await?;
        let ctx = state.parse_context();
        S::verify(settings, req.headers(), &body, ctx.received_at).map_err(refused)?;
        let items = S::parse(settings, req.headers(), &body, ctx)?;
        store(&state, S::PROVIDER, items, ctx).await
    })
    .await
}

/// What every webhook route answers, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum WebhookAnswer {
    /// Every event durably stored, every follow-up queued.
    #[response(status = 200)]
    Stored(IngestOutcome),
    /// Not JSON.
    #[response(status = 400)]
    NotJson(ErrorBody),
    /// Verification failed; nothing stored.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Over `server.max_body_bytes`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The store cannot make the write durable; retry later.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Counts a refused webhook request in the metrics, by why it was refused.
async fn counted(
    provider: Provider,
    handler: impl std::future::Future<Output = Result<HttpResponse, ApiError>>,
) -> Result<HttpResponse, ApiError> {
    let result = handler.await;
    if let Err(error) = &result {
        let outcome = match error.status.as_u16() {
            401 => "unauthorized",
            400 => "invalid",
            413 => "too_large",
            408 => "timeout",
            503 => "unavailable",
            _ => "error",
        };
        metrics::counter!(observe::WEBHOOKS, "provider" => provider.as_str(), "outcome" => outcome)
            .increment(1);
    }
    result
}

/// BIK status updates and link clicks (a JSON array of events, or one).
#[utoipa::path(
    post,
    path = "/webhooks/bik",
    tag = "webhooks",
    request_body(content = serde_json::Value, description = "BIK webhook events", content_type = "application/json"),
    security(("bik_basic" = [])),
    responses(WebhookAnswer)
)]
pub(super) async fn bik_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    webhook::<Bik>(req, payload, state).await
}

/// Meta's subscription handshake: echoes `hub.challenge`.
#[utoipa::path(
    get,
    path = "/webhooks/meta",
    tag = "webhooks",
    params(
        ("hub.mode" = String, Query, description = "`subscribe`"),
        ("hub.verify_token" = String, Query, description = "must equal providers.meta.verify_token"),
        ("hub.challenge" = String, Query, description = "echoed back"),
    ),
    responses(
        (status = 200, description = "The challenge", body = String, content_type = "text/plain"),
        (status = 403, description = "Wrong mode or token", body = ErrorBody),
    )
)]
pub(super) async fn meta_handshake(
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let get = |k: &str| query.get(k).map(String::as_str);
    match meta::handshake(
        get("hub.mode"),
        get("hub.verify_token"),
        get("hub.challenge"),
        &state.settings.providers.meta,
    ) {
        Some(challenge) => Ok(HttpResponse::Ok()
            .content_type("text/plain")
            .body(challenge.to_owned())),
        None => {
            tracing::warn!(provider = "meta", "subscription handshake refused");
            Err(ApiError::new(
                actix_web::http::StatusCode::FORBIDDEN,
                "hub.mode or hub.verify_token is wrong",
            ))
        }
    }
}

/// WhatsApp Cloud API webhooks (`entry[].changes[].value.statuses[]`).
#[utoipa::path(
    post,
    path = "/webhooks/meta",
    tag = "webhooks",
    request_body(content = serde_json::Value, description = "Meta webhook", content_type = "application/json"),
    security(("meta_signature" = [])),
    responses(WebhookAnswer)
)]
pub(super) async fn meta_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    webhook::<Meta>(req, payload, state).await
}

/// Any other provider or relay, signed with Standard Webhooks: one event or an array.
#[utoipa::path(
    post,
    path = "/webhooks/generic",
    tag = "webhooks",
    request_body(content = serde_json::Value, description = "`message.status` / `message.click` events", content_type = "application/json"),
    params(
        ("webhook-id" = String, Header, description = "the event id"),
        ("webhook-timestamp" = i64, Header, description = "unix seconds"),
    ),
    security(("standard_webhooks" = [])),
    responses(WebhookAnswer)
)]
pub(super) async fn generic_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    webhook::<Generic>(req, payload, state).await
}

async fn store(
    state: &AppState,
    provider: Provider,
    items: Vec<IngestItem>,
    ctx: ParseContext,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let outcome = state.store.ingest(provider, items, ctx.received_at).await?;
    metrics::histogram!(observe::INGEST_SECONDS, "provider" => provider.as_str())
        .record(started.elapsed());
    for (outcome_name, n) in [
        ("accepted", outcome.accepted),
        ("duplicate", outcome.duplicates),
        ("ignored", outcome.ignored),
        ("rejected", outcome.rejected),
    ] {
        metrics::counter!(observe::WEBHOOKS, "provider" => provider.as_str(), "outcome" => outcome_name)
            .increment(u64::from(n));
    }
    let mut response = HttpResponse::Ok().json(outcome);
    response
        .extensions_mut()
        .insert(Stored { provider, outcome });
    Ok(response)
}

/// What a webhook stored, left on its response for the request's access line
/// ([`super::request_id`]): one log line per webhook rather than two.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stored {
    pub provider: Provider,
    pub outcome: IngestOutcome,
}

/// Logs a refused webhook (never its headers or body) and turns it into its error answer.
fn refused(provider: Provider, refusal: Refusal) -> ApiError {
    tracing::warn!(provider = provider.as_str(), reason = %refusal, "webhook refused");
    ApiError::from(refusal)
}

impl AppState {
    fn parse_context(&self) -> ParseContext {
        ParseContext {
            received_at: crate::domain::now(),
            max_callback_bytes: self.settings.store.max_callback_bytes,
        }
    }
}
