//! The actions API: queued follow-up calls, and requeueing the ones that died.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::ApiCaller;
use super::errors::ApiError;
use super::messages::{reject_unknown, Paging};
use super::openapi::{ActionPage, ActionView, ErrorBody, Requeued, RetryAll as RetryAllDoc};
use super::{body, guarded, AppState};
use crate::store::{ActionFilter, ActionState, RetryOutcome};

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
        .actions(&filter, paging.limit, paging.cursor.as_deref())?;
    let actions: Vec<Value> = page.items.iter().map(|a| a.view()).collect();
    Ok(HttpResponse::Ok().json(json!({ "actions": actions, "next_cursor": page.next_cursor })))
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
    match state.store.retry_action(&id)? {
        RetryOutcome::Requeued(action) => Ok(HttpResponse::Ok().json(action.view())),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryAll {
    #[serde(default = "dead")]
    state: String,
    rule: Option<String>,
}

fn dead() -> String {
    "dead".into()
}

/// Requeues every matching action, in bounded batches.
#[utoipa::path(
    post,
    path = "/v1/actions/retry",
    tag = "actions",
    request_body(content = RetryAllDoc, content_type = "application/json"),
    security(("api_token" = [])),
    responses((status = 200, body = Requeued), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub(super) async fn retry_all(
    _: ApiCaller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let bytes = body::read(&req, payload, state.settings.server.max_body_bytes).await?;
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
    let store = state.store.clone();
    let requeued = web::block(move || store.retry_actions(&filter, RETRY_BATCH))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok(HttpResponse::Ok().json(json!({ "requeued": requeued })))
}
