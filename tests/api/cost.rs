//! What messages cost (contract section 8.3): Meta's `pricing` and `conversation` kept on the
//! message, each billable message charged once at the `[pricing]` rate card, per campaign.

use serde_json::{json, Value};

use crate::helpers::*;

const PMP: &str = "meta/statuses-pricing-pmp.json";
const MARKETING_IN: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSUE1QMTIzREVGNDU2R0hJNzg5AA==";
const UTILITY_TEST_NUMBER: &str = "wamid.HBgLMTU1NTEzNDA1NjMVAgARGBJQTVAxMjNERUY0NTZHSEk3ODkA";
const FREE_SERVICE: &str = "wamid.HBgMOTE5MDkwOTA5MDkxFQIAERgSUE1QMTIzREVGNDU2R0hJNzg5AA==";

/// The rate card of the README's example, plus utility.
pub(crate) const RATE_CARD: &str = r#"
[pricing]
currency = "USD"
[pricing.rates.marketing]
default = 0.025
IN = 0.0107
[pricing.rates.utility]
default = 0.004
"#;

fn summer_sale(stats: &Value) -> &Value {
    group(stats, "summer_sale")
}

#[tokio::test]
async fn pricing_is_kept_and_each_billable_message_is_charged_once_at_the_rate_card() {
    let app = spawn_app_with_rules(RATE_CARD).await;
    let first: Value = app.post_meta(fixture(PMP)).await.json().await.unwrap();
    assert_eq!(first["accepted"], 4, "{first}");
    // Meta retries whole batches: nothing is charged twice.
    let again: Value = app.post_meta(fixture(PMP)).await.json().await.unwrap();
    assert_eq!(again["duplicates"], 4, "{again}");

    let marketing = app.message(MARKETING_IN).await.unwrap();
    assert_eq!(
        marketing["pricing"],
        json!({"category": "marketing", "type": "regular", "billable": true, "pricing_model": "PMP"})
    );
    assert_eq!(marketing["conversation_id"], Value::Null);
    // Meta's older key `pricing_type` stands in for `type`; `billable` absent, `regular` bills.
    let utility = app.message(UTILITY_TEST_NUMBER).await.unwrap();
    assert_eq!(
        utility["pricing"],
        json!({"category": "utility", "type": "regular", "billable": null, "pricing_model": "PMP"})
    );
    let free = app.message(FREE_SERVICE).await.unwrap();
    assert_eq!(free["pricing"]["type"], "free_customer_service");

    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    assert_eq!(
        summer_sale(&stats)["cost"],
        json!({
            "currency": "USD",
            // marketing to an Indian number at IN's rate, utility to a number the metadata
            // does not place at the default; the free service message is not billable.
            "estimated": 0.0147,
            "billable": 2,
            "by_category": {
                "marketing": {"messages": 1, "estimated": 0.0107},
                "utility": {"messages": 1, "estimated": 0.004},
            },
        }),
        "{stats}"
    );
    assert_eq!(summer_sale(&stats)["messages"], 3);
}

#[tokio::test]
async fn a_category_the_card_does_not_price_is_counted_at_zero() {
    let app = spawn_app().await;
    app.post_meta(fixture(PMP)).await;
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    let cost = &summer_sale(&stats)["cost"];
    assert_eq!(cost["currency"], "USD");
    assert_eq!(cost["billable"], 2);
    assert_eq!(cost["estimated"], 0.0);
    assert_eq!(cost["by_category"]["marketing"]["messages"], 1);
}

#[tokio::test]
async fn conversation_based_pricing_keeps_the_conversation_id() {
    let app = spawn_app().await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    let message = app
        .message("wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==")
        .await
        .unwrap();
    assert_eq!(message["conversation_id"], "a34a0f5c2d6e4b1f9d2c");
    assert_eq!(message["pricing"]["pricing_model"], "CBP");
    assert_eq!(message["pricing"]["billable"], true);
}

#[tokio::test]
async fn metas_test_numbers_are_found_in_every_form() {
    let app = spawn_app().await;
    app.post_meta(fixture(PMP)).await;
    let utility = app.message(UTILITY_TEST_NUMBER).await.unwrap();
    assert_eq!(utility["recipient"], "15551340563");
    assert_eq!(utility["recipient_e164"], "+15551340563");
    for form in ["15551340563", "%2B15551340563", "%2B1%20555%20134%200563"] {
        let found = app
            .get_json(&format!("/v1/messages?recipient={form}"))
            .await;
        let ids: Vec<&str> = found["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [UTILITY_TEST_NUMBER], "{form}");
    }
}
