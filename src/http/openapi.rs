//! `/openapi.json`: the OpenAPI 3 document, generated from the route annotations and the
//! response types the handlers answer with (each beside its handler); this file only lists
//! them.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::guarded;
use crate::store::{IngestOutcome, RejectedEvent};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/openapi.json").route(web::get().to(openapi_json)));
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowhook",
        description = "Verified webhooks in, durable message state, follow-ups out. \
                       Providers post status updates and link clicks to /webhooks/{provider}; \
                       a 200 means the events are on disk. The /v1 API (bearer token) answers \
                       what happened to a message, an order or a recipient, lists the \
                       follow-up actions that rules queued, and requeues dead ones."
    ),
    paths(
        super::webhooks::bik_webhook,
        super::webhooks::meta_handshake,
        super::webhooks::meta_webhook,
        super::webhooks::generic_webhook,
        super::messages::get_message,
        super::messages::find_messages,
        super::messages::get_recipient,
        super::messages::list_rejected,
        super::actions::list_actions,
        super::actions::retry_one,
        super::actions::retry_all,
        super::stats::stats,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
        super::ui::page,
        super::ui::script,
        super::ui::style,
    ),
    components(schemas(
        IngestOutcome,
        super::errors::ErrorBody,
        super::errors::ErrorMessage,
        super::messages::MessageView,
        super::messages::EventView,
        super::messages::ClickView,
        super::actions::ActionView,
        super::messages::MessagePage,
        super::actions::ActionPage,
        super::messages::RejectedPage,
        RejectedEvent,
        super::actions::RetryAll,
        super::actions::Requeued,
        super::health::Health,
        super::health::Readiness,
        super::stats::Stats,
        crate::store::Group,
        crate::store::Rates,
        crate::store::FailureReason,
        crate::store::Cost,
        crate::store::CategoryCost,
        crate::domain::Pricing,
        crate::domain::Reply,
        crate::domain::OptOut,
        crate::domain::Preference,
        crate::domain::optout::OptOutSource,
        crate::domain::optout::RecipientAnswer,
    )),
    modifiers(&Security),
    tags(
        (name = "webhooks", description = "Inbound provider webhooks, verified over the raw body"),
        (name = "status", description = "What happened to a message, an order, a recipient"),
        (name = "actions", description = "Follow-up calls queued by rules"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "dashboard", description = "The built-in dashboard (static files)"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <api.token>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bik_basic",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Basic <providers.bik.basic_auth>`, compared whole in constant time",
            ))),
        );
        components.add_security_scheme(
            "meta_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Hub-Signature-256",
                "`sha256=<hex HMAC-SHA256 of the raw body with an app secret>`",
            ))),
        );
        components.add_security_scheme(
            "standard_webhooks",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "Standard Webhooks: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`, with \
                 `webhook-id` and `webhook-timestamp` (within providers.generic.tolerance_seconds)",
            ))),
        );
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
