//! `/openapi.json`: the OpenAPI 3 document, generated from the route annotations and the
//! schemas below (the shapes the handlers answer with).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

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
        ErrorBody,
        ErrorMessage,
        MessageView,
        EventView,
        ClickView,
        ActionView,
        MessagePage,
        ActionPage,
        RejectedPage,
        RejectedEvent,
        RetryAll,
        Requeued,
        Health,
        Readiness,
        super::stats::Stats,
        crate::store::Group,
        crate::store::Rates,
        crate::store::FailureReason,
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

/// A message: its state, timeline (single-message answers only) and actions.
#[derive(Serialize, ToSchema)]
pub struct MessageView {
    message_id: String,
    #[schema(example = "bik")]
    provider: String,
    channel: Option<String>,
    /// As the provider sent it (Meta: `16505551234`, BIK: `+919090909090`).
    recipient: Option<String>,
    /// `recipient` in E.164, or null when it is not a phone number.
    #[schema(example = "+16505551234")]
    recipient_e164: Option<String>,
    /// A business-scoped user id, for a user Meta addressed without a phone number.
    #[schema(example = "US.13491208655302741918")]
    recipient_user_id: Option<String>,
    /// `sent`, `delivered`, `read`, `played`, `failed`, or another status the provider sent.
    #[schema(example = "read")]
    status: Option<String>,
    /// The latest failed event's code (Meta's `errors[0].code`), while the status is `failed`.
    #[schema(example = "131047")]
    failure_code: Option<String>,
    /// The latest failed event's reason, while the status is `failed`.
    failure_reason: Option<String>,
    /// The decoded callback data, or null.
    callback_data: Option<Value>,
    /// The callback data as received.
    callback_data_raw: Option<String>,
    /// Set when the callback data starts like JSON (`{` or `[`) but does not parse, or is
    /// longer than `store.max_callback_bytes`; null for any other text, which is kept raw.
    callback_data_error: Option<String>,
    #[schema(format = DateTime)]
    first_seen_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[schema(format = DateTime)]
    sent_at: Option<String>,
    #[schema(format = DateTime)]
    delivered_at: Option<String>,
    #[schema(format = DateTime)]
    read_at: Option<String>,
    #[schema(format = DateTime)]
    failed_at: Option<String>,
    clicks: Vec<ClickView>,
    /// Distinct events received. More than `events` lists when the timeline is long: an
    /// answer lists its first and last 100, and past `store.max_events_per_message` the
    /// middle of a timeline is summarized (counted, and kept for rules, but not listed).
    events_total: u64,
    /// Absent in lists.
    events: Option<Vec<EventView>>,
    actions: Vec<ActionView>,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    /// `status` or `click`.
    kind: String,
    status: Option<String>,
    url: Option<String>,
    #[schema(format = DateTime)]
    at: String,
    #[schema(format = DateTime)]
    received_at: String,
    event_id: Option<String>,
    /// The provider's error code, on a failed event.
    #[schema(example = "131047")]
    failure_code: Option<String>,
    /// What the provider said (title, message and details, without repeats), on a failed event.
    #[schema(
        example = "Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number."
    )]
    failure_reason: Option<String>,
    /// The group member this status is about, for a group message.
    participant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClickView {
    url: String,
    #[schema(format = DateTime)]
    at: String,
}

/// A follow-up call queued by a rule.
#[derive(Serialize, ToSchema)]
pub struct ActionView {
    #[schema(example = "act_3da38bdeca64101e42459d74")]
    id: String,
    message_id: String,
    rule: String,
    #[schema(example = "bik.initiate_flow")]
    action: String,
    /// `pending`, `retrying`, `delivered`, `dead`, `skipped` or `cancelled`.
    state: String,
    attempts: u32,
    last_error: Option<String>,
    last_status: Option<u16>,
    /// The start of the last failed answer's body.
    last_response: Option<String>,
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    completed_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    messages: Vec<MessageView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ActionPage {
    actions: Vec<ActionView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RejectedPage {
    rejected: Vec<RejectedEvent>,
    next_cursor: Option<String>,
}

/// Which actions to requeue.
#[derive(Serialize, ToSchema)]
pub struct RetryAll {
    /// `dead` (default) or `retrying`.
    state: Option<String>,
    rule: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Requeued {
    requeued: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    status: String,
    /// Why not, when not.
    reason: Option<String>,
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
