//! The status API: what happened to a message, to an order, to a recipient; the quarantine.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::actions::ActionView;
use super::auth::ApiCaller;
use super::errors::{ApiError, ErrorBody};
use super::{guarded, AppState};
use crate::domain::optout::RecipientAnswer;
use crate::domain::{
    time_format, Click, EventKind, MessageState, OptOut, Pricing, Provider, Reply, Status,
    TimelineEvent,
};
use crate::store::{Action, Lookup, RejectedEvent};

/// A message: its state, timeline (single-message answers only) and actions.
#[derive(Serialize, ToSchema)]
pub struct MessageView {
    message_id: String,
    #[schema(value_type = String, example = "bik")]
    provider: Provider,
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
    #[schema(value_type = Option<String>, example = "read")]
    status: Option<Status>,
    /// The latest failed event's code (Meta's `errors[0].code`), while the status is `failed`.
    #[schema(example = "131047")]
    failure_code: Option<String>,
    /// The latest failed event's reason, while the status is `failed`.
    failure_reason: Option<String>,
    /// The decoded callback data, or null.
    #[schema(value_type = Option<Object>)]
    callback_data: Option<Map<String, Value>>,
    /// The callback data as received.
    callback_data_raw: Option<String>,
    /// Set when the callback data starts like JSON (`{` or `[`) but does not parse, or is
    /// longer than `store.max_callback_bytes`; null for any other text, which is kept raw.
    callback_data_error: Option<String>,
    #[serde(with = "time_format")]
    #[schema(value_type = String, format = DateTime)]
    first_seen_at: DateTime<Utc>,
    #[serde(with = "time_format")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: DateTime<Utc>,
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    sent_at: Option<DateTime<Utc>>,
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    delivered_at: Option<DateTime<Utc>>,
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    read_at: Option<DateTime<Utc>>,
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    failed_at: Option<DateTime<Utc>>,
    /// When the customer first replied to it.
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    replied_at: Option<DateTime<Utc>>,
    /// When its recipient first opted out in answer to it (contract section 8.2).
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    opted_out_at: Option<DateTime<Utc>>,
    clicks: Vec<ClickView>,
    /// What the provider says the message costs: the latest `pricing` a status carried (Meta).
    pricing: Option<Pricing>,
    /// The conversation the provider billed it under (Meta's `conversation.id`).
    conversation_id: Option<String>,
    /// Distinct events received. More than `events` lists when the timeline is long: an
    /// answer lists its first and last 100, and past `store.max_events_per_message` the
    /// middle of a timeline is summarized (counted, and kept for rules, but not listed).
    events_total: u64,
    /// Absent in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventView>>,
    actions: Vec<ActionView>,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    /// `status`, `click`, `reply` or `opt_out`.
    #[schema(value_type = String)]
    kind: EventKind,
    #[schema(value_type = Option<String>)]
    status: Option<Status>,
    url: Option<String>,
    #[serde(with = "time_format")]
    #[schema(value_type = String, format = DateTime)]
    at: DateTime<Utc>,
    #[serde(with = "time_format")]
    #[schema(value_type = String, format = DateTime)]
    received_at: DateTime<Utc>,
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
    /// On a `reply` event: what the customer sent (its own message id, type, text, payload).
    reply: Option<Reply>,
    /// On an `opt_out` event: `stop` or `resume`, and its source (`meta`, `bik`, `keyword`).
    opt_out: Option<OptOut>,
}

#[derive(Serialize, ToSchema)]
pub struct ClickView {
    url: String,
    #[serde(with = "time_format")]
    #[schema(value_type = String, format = DateTime)]
    at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    messages: Vec<MessageView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RejectedPage {
    rejected: Vec<RejectedEvent>,
    next_cursor: Option<String>,
}

const MESSAGES_PREFIX: &str = "/v1/messages/";
const RECIPIENTS_PREFIX: &str = "/v1/recipients/";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/v1/messages").route(web::get().to(find_messages)))
        // The tail pattern also catches ids whose `/` arrived unencoded.
        .service(guarded("/v1/messages/{id:.+}").route(web::get().to(get_message)))
        .service(guarded("/v1/recipients/{recipient:.+}").route(web::get().to(get_recipient)))
        .service(guarded("/v1/rejected").route(web::get().to(list_rejected)));
}

/// The rest of the path after `prefix`, decoded by hand so that %2F, %2B and %3D all come back
/// as `/`, `+` and `=` (message ids hold them; a phone number may hold `+`).
fn path_tail<'a>(
    req: &'a HttpRequest,
    prefix: &str,
    what: &str,
) -> Result<std::borrow::Cow<'a, str>, ApiError> {
    let raw = req.uri().path().strip_prefix(prefix).unwrap_or_default();
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request(format!("{what} is not valid UTF-8")))
}

/// A recipient's marketing preference (contract section 8.2): whether its latest stop or
/// resume (by provider time, a stop winning a tie) leaves it opted out.
#[utoipa::path(
    get,
    path = "/v1/recipients/{recipient}",
    tag = "status",
    params(("recipient" = String, Path, description = "a phone number written any common way (`919090909090`, `+91 90909 09090`, percent-encoded), or a business-scoped user id as sent")),
    security(("api_token" = [])),
    responses(
        (status = 200, body = RecipientAnswer),
        (status = 401, body = ErrorBody),
        (status = 404, description = "flowhook knows nothing of this recipient: no message to it and no opt-out", body = ErrorBody),
    )
)]
pub(super) async fn get_recipient(
    _: ApiCaller,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let recipient = path_tail(&req, RECIPIENTS_PREFIX, "recipient")?;
    match state.store.recipient(&recipient).await? {
        Some(answer) => Ok(HttpResponse::Ok().json(answer)),
        None => Err(ApiError::not_found(format!(
            "flowhook knows nothing of recipient {recipient:?}"
        ))),
    }
}

/// One message: state, timeline and actions. Percent-encode the id as one path segment.
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}",
    tag = "status",
    params(("message_id" = String, Path, description = "the provider's message id, percent-encoded")),
    security(("api_token" = [])),
    responses(
        (status = 200, body = MessageView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Unknown message", body = ErrorBody),
    )
)]
pub(super) async fn get_message(
    _: ApiCaller,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path_tail(&req, MESSAGES_PREFIX, "message id")?;
    match state.store.message(&id).await? {
        Some(message) => {
            let actions = state.store.message_actions(&id).await?;
            Ok(HttpResponse::Ok().json(MessageView::of(&message, true, &actions)))
        }
        None => Err(ApiError::not_found(format!("no message with id {id:?}"))),
    }
}

/// Query parameters of the list routes, checked by hand so every mistake gets a clear 400.
pub(super) struct Paging {
    pub limit: usize,
    pub cursor: Option<String>,
}

/// `400` naming the first parameter left in `query` after a handler took the ones it knows.
pub(super) fn reject_unknown(query: &HashMap<String, String>, known: &str) -> Result<(), ApiError> {
    match query.keys().next() {
        Some(name) => Err(ApiError::bad_request(format!(
            "unknown parameter {name:?}: only {known}"
        ))),
        None => Ok(()),
    }
}

impl Paging {
    const DEFAULT: usize = 50;
    const MAX: usize = 500;

    pub fn take(query: &mut HashMap<String, String>) -> Result<Self, ApiError> {
        let limit = match query.remove("limit") {
            None => Self::DEFAULT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=Self::MAX).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be a whole number from 1 to {}",
                        Self::MAX
                    )))
                }
            },
        };
        Ok(Self {
            limit,
            cursor: query.remove("cursor").filter(|c| !c.is_empty()),
        })
    }
}

/// Messages by an indexed callback field (`?callback.<field>=`), by `?recipient=`, or the
/// most recently updated (`?order=recent`).
#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "status",
    params(
        ("callback.order_id" = Option<String>, Query, description = "any field in store.index_callback_fields, as callback.<field>"),
        ("recipient" = Option<String>, Query, description = "a phone number written any common way (`919090909090`, `+91 90909 09090`), matched by its E.164 form; or a group id or business-scoped user id as sent"),
        ("order" = Option<String>, Query, description = "`recent`: every message, most recently updated first (instead of a filter)"),
        ("limit" = Option<usize>, Query, description = "1 to 500, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    security(("api_token" = [])),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, description = "No filter, two filters, an unindexed field, a bad limit or cursor", body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
pub(super) async fn find_messages(
    _: ApiCaller,
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut query = query.into_inner();
    let paging = Paging::take(&mut query)?;
    let indexed = state.store.index_fields();
    let hint = || {
        let fields: Vec<String> = indexed.iter().map(|f| format!("callback.{f}")).collect();
        format!(
            "filter by exactly one of recipient, {}, or ask for order=recent",
            fields.join(", ")
        )
    };
    if query.len() == 1 && query.get("order").map(String::as_str) == Some("recent") {
        let page = state
            .store
            .recent(paging.limit, paging.cursor.as_deref())
            .await?;
        return respond_page(&state, &page).await;
    }
    if query.len() != 1 {
        return Err(ApiError::bad_request(hint()));
    }
    let Some((name, value)) = query.into_iter().next() else {
        return Err(ApiError::bad_request(hint()));
    };
    let lookup = match name.strip_prefix("callback.") {
        None if name == "recipient" => Lookup::Recipient(value),
        Some(field) if indexed.iter().any(|f| f == field) => Lookup::Callback {
            field: field.to_owned(),
            value,
        },
        Some(field) => {
            return Err(ApiError::bad_request(format!(
                "callback field {field:?} is not indexed (store.index_callback_fields is [{}])",
                indexed.join(", ")
            )))
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {name:?}: {}",
                hint()
            )))
        }
    };
    let mut page = state
        .store
        .lookup(&lookup, paging.limit, paging.cursor.as_deref())
        .await?;
    // A number the phone metadata does not know (Meta's test numbers) is filed as `+` and its
    // digits when Meta addressed it: look there too, when the number as given finds nothing.
    if let (Lookup::Recipient(raw), true) = (&lookup, page.items.is_empty()) {
        if let Some(plus_digits) = crate::domain::recipient::unlisted(raw) {
            page = state
                .store
                .lookup(
                    &Lookup::Recipient(plus_digits),
                    paging.limit,
                    paging.cursor.as_deref(),
                )
                .await?;
        }
    }
    respond_page(&state, &page).await
}

async fn respond_page(
    state: &AppState,
    page: &crate::store::Page<MessageState>,
) -> Result<HttpResponse, ApiError> {
    let mut messages = Vec::with_capacity(page.items.len());
    for m in &page.items {
        let actions = state.store.message_actions(m.message_id.as_str()).await?;
        messages.push(MessageView::of(m, false, &actions));
    }
    Ok(HttpResponse::Ok().json(MessagePage {
        messages,
        next_cursor: page.next_cursor.clone(),
    }))
}

/// Quarantined events, oldest first, with the reason.
#[utoipa::path(
    get,
    path = "/v1/rejected",
    tag = "status",
    params(
        ("limit" = Option<usize>, Query, description = "1 to 500, default 50"),
        ("cursor" = Option<String>, Query),
    ),
    security(("api_token" = [])),
    responses((status = 200, body = RejectedPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub(super) async fn list_rejected(
    _: ApiCaller,
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut query = query.into_inner();
    let paging = Paging::take(&mut query)?;
    reject_unknown(&query, "limit and cursor")?;
    let page = state
        .store
        .rejected(paging.limit, paging.cursor.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(RejectedPage {
        rejected: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// Events a message's answer lists at most: the earliest and the latest half of that.
const SHOWN_EVENTS: usize = 200;

/// The events an answer lists: all of them, or for a long timeline its start and its end.
fn shown_events(events: &[TimelineEvent]) -> impl Iterator<Item = &TimelineEvent> {
    let (head, tail) = if events.len() > SHOWN_EVENTS {
        let half = SHOWN_EVENTS / 2;
        (&events[..half], &events[events.len() - half..])
    } else {
        (events, &events[..0])
    };
    head.iter().chain(tail)
}

impl MessageView {
    /// A message as the API shows it: the stored state, its timeline reduced to what clients
    /// need (or left out, for lists), and its follow-up actions.
    fn of(m: &MessageState, with_events: bool, actions: &[Action]) -> Self {
        Self {
            message_id: m.message_id.as_str().to_owned(),
            provider: m.provider,
            channel: m.channel.clone(),
            recipient: m.recipient.clone(),
            recipient_e164: m.recipient_e164.clone(),
            recipient_user_id: m.recipient_user_id.clone(),
            status: m.status.clone(),
            failure_code: m.failure_code.clone(),
            failure_reason: m.failure_reason.clone(),
            callback_data: m.callback_data.clone(),
            callback_data_raw: m.callback_data_raw.clone(),
            callback_data_error: m.callback_data_error.clone(),
            first_seen_at: m.first_seen_at,
            updated_at: m.updated_at,
            sent_at: m.sent_at,
            delivered_at: m.delivered_at,
            read_at: m.read_at,
            failed_at: m.failed_at,
            replied_at: m.replied_at,
            opted_out_at: m.opted_out_at,
            clicks: m.clicks.iter().map(ClickView::from).collect(),
            pricing: m.pricing.clone(),
            conversation_id: m.conversation_id.clone(),
            events_total: m.events_total(),
            events: with_events.then(|| shown_events(&m.events).map(EventView::from).collect()),
            actions: actions.iter().map(ActionView::from).collect(),
        }
    }
}

impl From<&TimelineEvent> for EventView {
    fn from(e: &TimelineEvent) -> Self {
        Self {
            kind: e.kind,
            status: e.status.clone(),
            url: e.url.clone(),
            at: e.at,
            received_at: e.received_at,
            event_id: e.event_id.clone(),
            failure_code: e.failure_code.clone(),
            failure_reason: e.failure_reason.clone(),
            participant: e.participant.clone(),
            reply: e.reply.as_deref().cloned(),
            opt_out: e.opt_out.as_deref().cloned(),
        }
    }
}

impl From<&Click> for ClickView {
    fn from(c: &Click) -> Self {
        Self {
            url: c.url.clone(),
            at: c.at,
        }
    }
}
