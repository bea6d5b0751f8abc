//! `GET /v1/stats`: per-campaign funnels from the counters kept at ingest.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::auth::ApiCaller;
use super::errors::ApiError;
use super::errors::ErrorBody;
use super::{guarded, AppState};
use crate::store::{day_date, day_of, Group};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/v1/stats").route(web::get().to(stats)));
}

/// Per value of an indexed callback field.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Stats {
    #[schema(example = "callback.campaign")]
    group_by: String,
    /// First day counted (UTC, by when flowhook first saw each message), if limited.
    #[schema(value_type = Option<String>, format = Date)]
    from: Option<NaiveDate>,
    /// Last day counted, inclusive, if limited.
    #[schema(value_type = Option<String>, format = Date)]
    to: Option<NaiveDate>,
    /// The callback fields `group_by` can name (`store.stats_callback_fields`).
    fields: Vec<String>,
    groups: Vec<Group>,
}

/// Funnels per value of an indexed callback field: sent, delivered, read, failed, clicked,
/// follow-ups delivered and dead, rates, top failure reasons, and the estimated cost of its
/// billable messages at the `[pricing]` rate card.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "status",
    params(
        ("group_by" = String, Query, description = "callback.<field>, a field in store.stats_callback_fields"),
        ("from" = Option<String>, Query, description = "first day, YYYY-MM-DD or RFC 3339 (UTC; by first_seen_at)"),
        ("to" = Option<String>, Query, description = "last day, inclusive"),
    ),
    security(("api_token" = [])),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub(super) async fn stats(
    _: ApiCaller,
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut query = query.into_inner();
    let fields = state.store.stats_fields().to_vec();
    let group_by = query.remove("group_by").unwrap_or_default();
    let field = group_by
        .strip_prefix("callback.")
        .filter(|f| fields.iter().any(|x| x == f))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "group_by must be callback.<field> for a field in store.stats_callback_fields ([{}])",
                fields.join(", ")
            ))
        })?
        .to_owned();
    let from = query
        .remove("from")
        .map(|t| parse_day(&t, "from"))
        .transpose()?;
    let to = query
        .remove("to")
        .map(|t| parse_day(&t, "to"))
        .transpose()?;
    super::messages::reject_unknown(&query, "group_by, from and to")?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::bad_request("from is after to"));
        }
    }
    let mut groups = state.store.stats(&field, from, to).await?;
    for group in &mut groups {
        group.price(&state.settings.pricing);
    }
    Ok(HttpResponse::Ok().json(Stats {
        group_by,
        from: from.map(day_date),
        to: to.map(day_date),
        fields,
        groups,
    }))
}

/// A day as `YYYY-MM-DD`, or the day of an RFC 3339 time.
fn parse_day(text: &str, name: &str) -> Result<u32, ApiError> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let at = date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        return Ok(day_of(at));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| day_of(t.with_timezone(&Utc)))
        .map_err(|_| ApiError::bad_request(format!("{name} must be YYYY-MM-DD or RFC 3339")))
}
