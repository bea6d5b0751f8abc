//! What a provider says a message costs: Meta puts `pricing` (and, for conversation-based
//! pricing, `conversation`) on its statuses. flowhook keeps them on each status event and gives
//! the message the latest, in timeline order; a rate card in the config prices them
//! (`crate::config::PricingSettings`).

use serde::{Deserialize, Serialize};

/// Meta's `pricing` object, as sent. Since July 2025 (per-message pricing, `pricing_model`
/// `PMP`) `type` says whether the message is charged (`regular`) or free
/// (`free_customer_service`, `free_entry_point`); `billable` is deprecated but still sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pricing {
    /// `marketing`, `utility`, `authentication`, `service`, ... as Meta names it.
    #[schema(example = "marketing")]
    pub category: Option<String>,
    /// `regular` (charged), `free_customer_service`, `free_entry_point`; Meta's older
    /// `pricing_type` is read where `type` is absent.
    #[serde(rename = "type")]
    #[schema(example = "regular")]
    pub kind: Option<String>,
    pub billable: Option<bool>,
    /// `PMP` (per message) or `CBP` (per conversation, before July 2025).
    #[schema(example = "PMP")]
    pub pricing_model: Option<String>,
}

impl Pricing {
    /// Whether the message is charged: `billable` when Meta sends it, else a `type` of
    /// `regular`.
    pub fn billable(&self) -> bool {
        self.billable
            .unwrap_or_else(|| self.kind.as_deref() == Some("regular"))
    }
}

/// The billing facts one status carries: its `pricing` and its `conversation.id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Billing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

impl Billing {
    /// `None` when there is nothing to keep.
    pub fn some(self) -> Option<Box<Self>> {
        (self.pricing.is_some() || self.conversation_id.is_some()).then(|| Box::new(self))
    }
}

#[cfg(test)]
mod tests {
    use super::Pricing;

    #[test]
    fn billable_follows_the_flag_else_the_type() {
        let p = |billable, kind: Option<&str>| Pricing {
            billable,
            kind: kind.map(str::to_owned),
            ..Pricing::default()
        };
        assert!(p(Some(true), Some("free_entry_point")).billable());
        assert!(!p(Some(false), Some("regular")).billable());
        assert!(p(None, Some("regular")).billable());
        assert!(!p(None, Some("free_customer_service")).billable());
        assert!(!p(None, None).billable());
    }
}
