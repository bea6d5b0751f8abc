//! Per-campaign (per indexed callback value) counts, kept in the same transactions as the
//! messages and actions they count, bucketed by the UTC day the message was first seen, so a
//! stats query reads counters, never messages.
//!
//! Key: `<field>\0<value>\0<day: u32 BE, days since 1970-01-01><metric>`; value: i64 BE.
//! Metrics: `messages`, `status:<status>` (current status), `clicked`, for failed messages
//! `failure_code:<code>\0<reason>` (with the provider's code) or `failure:<reason>` (without
//! one), `action:<state>`, and for a billable message `billable:<category>\0<region>` (the
//! region of the recipient's number, empty when unknown): counted once per message, however
//! many statuses carried its pricing, and priced when asked with the rate card then in force.

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::domain::{day_date, day_of};

pub(super) fn stats_key(field: &str, value: &str, day: u32, metric: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(field.len() + value.len() + metric.len() + 6);
    k.extend_from_slice(field.as_bytes());
    k.push(0);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(metric.as_bytes());
    k
}

/// The counts of one callback value over a range of days.
#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Group {
    /// The callback value, e.g. the campaign name.
    pub value: String,
    pub messages: i64,
    /// Messages with a known outcome: current status sent, delivered, read or failed.
    pub sent: i64,
    /// Delivered, read or played.
    pub delivered: i64,
    /// Read or played (`played` implies read).
    pub read: i64,
    pub failed: i64,
    /// Messages with at least one click.
    pub clicked: i64,
    /// Messages the customer replied to.
    pub replied: i64,
    /// Messages an opt-out answered (contract section 8.2).
    pub opted_out: i64,
    pub actions_delivered: i64,
    pub actions_dead: i64,
    pub rates: Rates,
    pub top_failure_reasons: Vec<FailureReason>,
    /// Billable messages and what they cost at the `[pricing]` rate card.
    pub cost: Cost,
    /// Billable messages by (category, region), for [`Group::price`].
    #[serde(skip)]
    billable: BTreeMap<(String, String), i64>,
}

/// What a group's billable messages cost, estimated with the config's `[pricing]` rate card
/// (providers send no prices). A category the card does not price counts at 0.
#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Cost {
    #[schema(example = "USD")]
    pub currency: String,
    pub estimated: f64,
    /// Messages charged (each once, whatever the number of statuses).
    pub billable: i64,
    /// Per category as the provider names it.
    pub by_category: BTreeMap<String, CategoryCost>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CategoryCost {
    pub messages: i64,
    pub estimated: f64,
}

impl Group {
    /// Fills in `cost` from the rate card.
    pub fn price(&mut self, card: &crate::config::PricingSettings) {
        let mut cost = Cost {
            currency: card.currency.clone(),
            ..Cost::default()
        };
        for ((category, region), n) in &self.billable {
            let rate = card
                .rate(category, (!region.is_empty()).then_some(region.as_str()))
                .unwrap_or(0.0);
            let entry = cost.by_category.entry(category.clone()).or_default();
            entry.messages += n;
            entry.estimated += rate * *n as f64;
            cost.billable += n;
        }
        for c in cost.by_category.values_mut() {
            c.estimated = cents(c.estimated);
            cost.estimated += c.estimated;
        }
        cost.estimated = cents(cost.estimated);
        self.cost = cost;
    }
}

/// Rounded to 1/10,000 of the currency's unit, so that sums of small rates read cleanly
/// (Meta's rates have four decimals).
fn cents(amount: f64) -> f64 {
    (amount * 10_000.0).round() / 10_000.0
}

/// The billable metric a message is counted under, if its pricing says it is charged.
pub(super) fn billable_metric(state: &crate::domain::MessageState) -> Option<String> {
    let pricing = state.pricing.as_ref().filter(|p| p.billable())?;
    let category = pricing
        .category
        .as_deref()
        .unwrap_or("unknown")
        .replace('\0', "");
    let region = state
        .recipient_e164
        .as_deref()
        .and_then(crate::domain::recipient::region)
        .unwrap_or_default();
    Some(format!("billable:{category}\0{region}"))
}

/// Ratios, `null` when the denominator is 0.
#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rates {
    /// delivered / sent
    pub delivered: Option<f64>,
    /// read / delivered
    pub read: Option<f64>,
    /// clicked / read
    pub clicked: Option<f64>,
}

/// Failed messages grouped by the provider's error code, or by reason where there is none.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FailureReason {
    /// The provider's error code (Meta's `errors[0].code`), or null.
    #[schema(example = "131047")]
    pub code: Option<String>,
    /// The reason given most often with this code (the reason itself, without a code).
    pub reason: String,
    pub count: i64,
}

/// The failure metric a failed message is counted under, if it is failed.
pub(super) fn failure_metric(state: &crate::domain::MessageState) -> Option<String> {
    if state.status != Some(crate::domain::Status::Failed) {
        return None;
    }
    let clean = |text: &str, max: usize| -> String {
        let mut chars = text.chars().filter(|c| *c != '\0');
        let mut out: String = chars.by_ref().take(max).collect();
        if chars.next().is_some() {
            out.push('…');
        }
        out
    };
    let reason = state.failure_reason.as_deref().map(|r| clean(r, 160));
    match (state.failure_code.as_deref(), reason) {
        (Some(code), reason) => Some(format!(
            "failure_code:{}\0{}",
            clean(code, 32),
            reason.unwrap_or_default()
        )),
        (None, Some(reason)) => Some(format!("failure:{reason}")),
        (None, None) => None,
    }
}

/// Failure reasons listed per group.
const TOP_REASONS: usize = 5;

pub(super) fn group(value: String, m: &BTreeMap<String, i64>) -> Group {
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    let (sent_now, delivered_now) = (get("status:sent"), get("status:delivered"));
    // `played` implies read, so a played message counts as read (and delivered).
    let (read, failed) = (
        get("status:read") + get("status:played"),
        get("status:failed"),
    );
    let delivered = delivered_now + read;
    let sent = sent_now + delivered + failed;
    let clicked = get("clicked");
    let ratio = |a: i64, b: i64| (b > 0).then(|| a as f64 / b as f64);
    Group {
        value,
        messages: get("messages"),
        sent,
        delivered,
        read,
        failed,
        clicked,
        replied: get("replied"),
        opted_out: get("opted_out"),
        actions_delivered: get("action:delivered"),
        actions_dead: get("action:dead"),
        rates: Rates {
            delivered: ratio(delivered, sent),
            read: ratio(read, delivered),
            clicked: ratio(clicked, read),
        },
        top_failure_reasons: top_failure_reasons(m),
        cost: Cost::default(),
        billable: m
            .iter()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(metric, n)| {
                let (category, region) = metric.strip_prefix("billable:")?.split_once('\0')?;
                Some(((category.to_owned(), region.to_owned()), *n))
            })
            .collect(),
    }
}

/// Failure counts by code (with the reason most often given for it), then by reason for
/// failures without a code; the largest [`TOP_REASONS`].
fn top_failure_reasons(m: &BTreeMap<String, i64>) -> Vec<FailureReason> {
    // code -> (total, reason -> count)
    let mut by_code: BTreeMap<&str, (i64, BTreeMap<&str, i64>)> = BTreeMap::new();
    let mut reasons: Vec<FailureReason> = Vec::new();
    for (metric, n) in m.iter().filter(|(_, n)| **n > 0) {
        if let Some(coded) = metric.strip_prefix("failure_code:") {
            let (code, reason) = coded.split_once('\0').unwrap_or((coded, ""));
            let entry = by_code.entry(code).or_default();
            entry.0 += n;
            *entry.1.entry(reason).or_default() += n;
        } else if let Some(reason) = metric.strip_prefix("failure:") {
            reasons.push(FailureReason {
                code: None,
                reason: reason.to_owned(),
                count: *n,
            });
        }
    }
    for (code, (count, texts)) in by_code {
        let reason = texts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(text, _)| (*text).to_owned())
            .unwrap_or_default();
        reasons.push(FailureReason {
            code: Some(code.to_owned()),
            reason,
            count,
        });
    }
    reasons.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.code.cmp(&b.code))
            .then_with(|| a.reason.cmp(&b.reason))
    });
    reasons.truncate(TOP_REASONS);
    reasons
}
