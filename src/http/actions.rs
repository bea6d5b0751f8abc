//! The actions API: queued follow-up calls, and requeueing the ones that died.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::ApiCaller;
use super::errors::{ApiError, ErrorBody};
use super::messages::{reject_unknown, Paging};
use super::{body, guarded, AppState};
use crate::domain::time_format;
use crate::store::{Action, ActionFilter, ActionState, RetryOutcome};
use crate::targets::ActionKind;

/// A follow-up call queued by a rule.
#[derive(Serialize, ToSchema)]
pub struct ActionView {
    #[schema(example = "act_3da38bdeca64101e42459d74")]
    id: String,
    message_id: String,
    rule: String,
    #[schema(value_type = String, example = "bik.initiate_flow")]
    action: ActionKind,
    /// `pending`, `retrying`, `delivered`, `dead`, `skipped` or `cancelled`.
    #[schema(value_type = String)]
    state: ActionState,
    attempts: u32,
    last_error: Option<String>,
    last_status: Option<u16>,
    /// The start of the last failed answer's body.
    last_response: Option<String>,
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    next_attempt_at: Option<DateTime<Utc>>,
    #[serde(with = "time_format")]
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    #[serde(with = "time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    completed_at: Option<DateTime<Utc>>,
}

impl From<&Action> for ActionView {
    fn from(a: &Action) -> Self {
        Self {
            id: a.id.to_string(),
            message_id: a.message_id.clone(),
            rule: a.rule.to_string(),
            action: a.action,
            state: a.state,
            attempts: a.attempts,
            last_error: a.last_error.clone(),
            last_status: a.last_status,
            last_response: a.last_response.clone(),
            next_attempt_at: a.next_attempt_at,
            created_at: a.created_at,
            completed_at: a.completed_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ActionPage {
    actions: Vec<ActionView>,
    next_cursor: Option<String>,
}

/// Which actions to requeue.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryAll {
    /// `dead` (default) or `retrying`.
    #[serde(default = "dead")]
    #[schema(default = "dead")]
    state: String,
    rule: Option<String>,
}

fn dead() -> String {
    "dead".into()
}

#[derive(Serialize, ToSchema)]
pub struct Requeued {
    requeued: u64,
}

/// Actions requeued per transaction by the bulk retry.
const RETRY_BATCH: usize = 500;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/v1/actions").route(web::get().to(list_actions)))
        .service(guarded("/v1/actions/retry").route(web::post().to(retry_all)))
        .service(guarded("/v1/actions/{id}/retry").route(web::post().to(retry_one)));
}

fn parse_state(text: &str) -> Result<ActionState, ApiError> {
    ActionState::parse(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown state {text:?} (one of {})",
            ActionState::ALL.map(|s| s.as_str()).join(", ")
        ))
    })
}

/// Queued follow-up calls, oldest first.
#[utoipa::path(
    get,
    path = "/v1/actions",
    tag = "actions",
    params(
        ("state" = Option<String>, Query, description = "pending, retrying, delivered, dead, skipped or cancelled"),
        ("rule" = Option<String>, Query),
        ("limit" = Option<usize>, Query, description = "1 to 500, default 50"),
        ("cursor" = Option<String>, Query),
    ),
    security(("api_token" = [])),
    responses((status = 200, body = ActionPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub(super) async fn list_actions(
    _: ApiCaller,
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut query = query.into_inner();
    let paging = Paging::take(&mut query)?;
    let filter = ActionFilter {
        state: query
            .remove("state")
            .filter(|s| !s.is_empty())
            .map(|s| parse_state(&s))
            .transpose()?,
        rule: query.remove("rule").filter(|r| !r.is_empty()),
    };
    reject_unknown(&query, "state, rule, limit and cursor")?;
    let page = state
        .store
        .actions(&filter, paging.limit, paging.cursor.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(ActionPage {
        actions: page.items.iter().map(ActionView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Requeues one dead (or retrying) action now, with a fresh retry schedule.
#[utoipa::path(
    post,
    path = "/v1/actions/{id}/retry",
    tag = "actions",
    params(("id" = String, Path, description = "the action id")),
    security(("api_token" = [])),
    responses(
        (status = 200, body = ActionView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not dead or retrying, or in flight", body = ErrorBody),
    )
)]
pub(super) async fn retry_one(
    _: ApiCaller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match state.store.retry_action(&id).await? {
        RetryOutcome::Requeued(action) => Ok(HttpResponse::Ok().json(ActionView::from(&action))),
        RetryOutcome::NotFound => Err(ApiError::not_found(format!("no action with id {id:?}"))),
        RetryOutcome::NotRetryable(action) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "action {} is {}{}; only dead or retrying actions can be retried",
                action.id,
                action.state,
                if action.in_flight {
                    " and in flight"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// Requeues every matching action, in bounded batches.
#[utoipa::path(
    post,
    path = "/v1/actions/retry",
    tag = "actions",
    request_body(content = RetryAll, content_type = "application/json"),
    security(("api_token" = [])),
    responses((status = 200, body = Requeued), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub(super) async fn retry_all(
    _: ApiCaller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let bytes = body::read(&req, payload, &state).await?;
    // An empty body means all the defaults.
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let request: RetryAll = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"state\", \"rule\"}}: {e}")))?;
    let wanted = parse_state(&request.state)?;
    if !matches!(wanted, ActionState::Dead | ActionState::Retrying) {
        return Err(ApiError::bad_request(
            "state must be dead or retrying: only those can be requeued",
        ));
    }
    let filter = ActionFilter {
        state: Some(wanted),
        rule: request.rule.filter(|r| !r.is_empty()),
    };
    let requeued = state.store.retry_actions(&filter, RETRY_BATCH).await?;
    Ok(HttpResponse::Ok().json(Requeued { requeued }))
}
