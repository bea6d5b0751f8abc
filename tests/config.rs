//! Loading configuration, in a test binary of its own: `figment::Jail` changes the whole
//! process's working directory and environment while a test runs, and a process another test
//! started meanwhile would inherit them (a `flowhook serve` born in a jail's directory lost its
//! working directory when the jail ended, and fjall refuses to open without one).

// figment::Jail closures must return figment::Error, which is large; that is its API, not ours.
#![allow(clippy::result_large_err)]

use std::process::Command;

use figment::Jail;
use flowhook::config::{Durability, Settings};

fn load(jail: &mut Jail, toml: &str) -> Result<Settings, String> {
    jail.create_file("flowhook.toml", toml)
        .map_err(|e| e.to_string())?;
    Settings::load(Some(std::path::Path::new("flowhook.toml"))).map_err(|e| e.to_string())
}

#[test]
fn the_shipped_config_loads_and_is_loopback_only() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    Jail::expect_with(|jail| {
        let settings = load(jail, &shipped).expect("shipped config is valid");
        assert!(
            settings.check_safe_to_expose().is_ok(),
            "loopback is fine with placeholders"
        );
        assert_eq!(settings.placeholder_secrets().len(), 5);
        jail.set_env("FLOWHOOK__SERVER__BIND", "0.0.0.0:8080");
        let exposed = load(jail, &shipped).unwrap();
        let refusal = exposed.check_safe_to_expose().unwrap_err().to_string();
        assert!(
            refusal.contains("non-loopback") && refusal.contains("api.token"),
            "{refusal}"
        );
        Ok(())
    });
}

#[test]
fn environment_variables_override_the_file_including_lists() {
    Jail::expect_with(|jail| {
        jail.set_env("FLOWHOOK__API__TOKEN", "from-env");
        jail.set_env("FLOWHOOK__STORE__DURABILITY", "relaxed");
        jail.set_env(
            "FLOWHOOK__STORE__INDEX_CALLBACK_FIELDS",
            "[\"sku\", \"order.id\"]",
        );
        jail.set_env("FLOWHOOK__PROVIDERS__BIK__BASIC_AUTH", "single-key");
        jail.set_env("FLOWHOOK__PROVIDERS__META__VERIFY_TOKEN", "12345");
        jail.set_env("FLOWHOOK__PROVIDERS__META__APP_SECRETS", "[\"\", \"s1\"]");
        let s = load(jail, "[api]\ntoken = \"from-file\"\n").unwrap();
        assert_eq!(s.api.token.expose(), "from-env");
        assert_eq!(s.store.durability, Durability::Relaxed);
        assert_eq!(s.store.index_callback_fields, ["sku", "order.id"]);
        assert_eq!(s.providers.bik.basic_auth.len(), 1);
        assert_eq!(
            s.providers.meta.verify_token.expose(),
            "12345",
            "all-digit secrets stay text"
        );
        assert_eq!(
            s.providers.meta.app_secrets.len(),
            1,
            "empty entries never count as a key"
        );
        Ok(())
    });
}

#[test]
fn target_settings_take_numeric_ids_from_the_environment_and_name_a_bad_key() {
    Jail::expect_with(|jail| {
        jail.set_env("FLOWHOOK__TARGETS__ENGATI__CUSTOMER_ID", "12345");
        jail.set_env("FLOWHOOK__TARGETS__ENGATI__BOT_KEY", "678");
        jail.set_env("FLOWHOOK__TARGETS__BIK__TIMEOUT_MS", "2500");
        let s = load(jail, "").unwrap();
        assert_eq!(s.targets.engati.settings.customer_id, "12345");
        assert_eq!(s.targets.engati.settings.bot_key, "678");
        assert_eq!(s.targets.bik.limits.timeout_ms, 2500);
        Ok(())
    });
    Jail::expect_with(|jail| {
        let error = load(jail, "[targets.bik]\ntimeout_ms = \"soon\"\n").unwrap_err();
        assert!(error.contains("targets.bik: timeout_ms:"), "{error}");
        let error = load(jail, "[targets.botika]\napi_tokn = \"x\"\n").unwrap_err();
        assert!(error.contains("targets.botika: api_tokn:"), "{error}");
        Ok(())
    });
}

#[test]
fn mistakes_fail_at_startup_naming_the_key() {
    let cases = [
        ("[server]\nbindd = \"x\"\n", "bindd"),
        ("[servr]\n", "servr"),
        ("[server]\nbind = \"localhost\"\n", "server.bind"),
        (
            "[server]\nmax_body_bytes = \"big\"\n",
            "server.max_body_bytes",
        ),
        ("[store]\ndedupe_days = 7\n", "store.dedupe_days"),
        ("[store]\ndurability = \"eventually\"\n", "store.durability"),
        (
            "[store]\nindex_callback_fields = [\"a b\"]\n",
            "store.index_callback_fields",
        ),
        (
            "[providers.generic]\nsecrets = [\"nope\"]\n",
            "providers.generic.secrets[0]",
        ),
        (
            "[providers.generic]\nsecrets = [\"whsec_!!\"]\n",
            "providers.generic.secrets[0]",
        ),
        ("[log]\nlevel = \"[[\"\n", "log.level"),
    ];
    for (toml, key) in cases {
        Jail::expect_with(|jail| {
            let error = load(jail, toml).expect_err(toml);
            assert!(error.contains(key), "{toml:?} -> {error}");
            Ok(())
        });
    }
}

#[test]
fn check_config_reports_a_missing_file_with_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", "/nonexistent/flowhook.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

/// The three example rules the shipped `config.toml` documents, with their targets configured.
const CONTRACT_RULES: &str = r#"
[targets.bik]
auth_token = "k"
[targets.engati]
customer_id = "1"
bot_key = "b"
api_key = "k"

[[rules]]
name = "cart-read-followup"
on = "status"
statuses = ["read"]
when = { "callback.campaign" = "abandoned_cart", "channel" = ["whatsapp", "rcs"] }
action = "bik.initiate_flow"
[rules.params]
flow_id = "cart_followup"
medium = "whatsapp"
phone_number = "{{recipient}}"
carry_payload = { order_id = ["{{callback.order_id}}"] }

[[rules]]
name = "checkout-click"
on = "click"
url_prefix = "https://shop.example.com/checkout"
action = "bik.send_event"
[rules.params]
event_name = "checkoutLinkClicked"
phone_number = "{{recipient}}"
event_properties = { orderId = "{{callback.order_id}}", url = "{{click.url}}" }

[[rules]]
name = "unread-after-a-day"
on = "missing_status"
statuses = ["read"]
since = "delivered"
after_seconds = 86400
action = "engati.trigger_flow"
[rules.params]
flow_key = "reengage"
channel = "whatsapp"
phone_no = "{{recipient}}"
attributes = { order_id = "{{callback.order_id}}" }
"#;

#[test]
fn the_contract_rules_are_valid() {
    let settings = Settings::from_toml_str(CONTRACT_RULES).expect("contract rules load");
    assert_eq!(settings.rules.len(), 3);
    flowhook::startup::check(&settings).expect("contract rules compile");
}

#[test]
fn rule_mistakes_name_the_rule_and_the_key() {
    let cases = [
        (
            CONTRACT_RULES.replace("bik.initiate_flow", "bik.start_flow"),
            r#"rules[0] (cart-read-followup).action: unknown action "bik.start_flow""#,
        ),
        (
            CONTRACT_RULES.replace("flow_id = ", "flow = "),
            "rules[0] (cart-read-followup).params.flow: unknown key for bik.initiate_flow",
        ),
        (
            CONTRACT_RULES.replace("flow_id = ", "flow = "),
            "rules[0] (cart-read-followup).params.flow_id: required by bik.initiate_flow",
        ),
        (
            CONTRACT_RULES.replace("{{recipient}}", "{{recipent}}"),
            r#"rules[0] (cart-read-followup).params.phone_number: unknown variable "recipent""#,
        ),
        (
            CONTRACT_RULES.replace("{{callback.order_id}}\"]", "{{callback.order_id\"]"),
            "rules[0] (cart-read-followup).params.carry_payload: unclosed placeholder",
        ),
        (
            CONTRACT_RULES.replace("name = \"checkout-click\"", "name = \"cart-read-followup\""),
            r#"rules[1] (cart-read-followup).name: duplicate rule name"#,
        ),
        (
            CONTRACT_RULES.replace("api_key = \"k\"", ""),
            "rules[2] (unread-after-a-day).action: engati.trigger_flow needs [targets.engati] with api_key set",
        ),
        (
            CONTRACT_RULES.replace("after_seconds = 86400", ""),
            "rules[2] (unread-after-a-day).after_seconds: required",
        ),
        (
            CONTRACT_RULES.replace("on = \"click\"", "on = \"status\"\nstatuses = [\"read\"]"),
            "rules[1] (checkout-click).url_prefix: only used with on = \"click\"",
        ),
        (
            CONTRACT_RULES.replace("on = \"click\"", "on = \"tap\""),
            "rules[1] (checkout-click).on: unknown variant: found `tap`",
        ),
        (
            CONTRACT_RULES.replace("since = \"delivered\"", "since = \"delivered\"\ncolour = 1"),
            "rules[2] (unread-after-a-day).colour: unknown field",
        ),
        (
            CONTRACT_RULES.replace(
                "since = \"delivered\"",
                "since = \"delivered\"\ncancel_on = [\"unsubscribe\"]",
            ),
            "rules[2] (unread-after-a-day).cancel_on.0: unknown variant: found `unsubscribe`",
        ),
        (
            CONTRACT_RULES.replace("on = \"click\"", "on = \"click\"\nskip_opted_out = \"yes\""),
            "rules[1] (checkout-click).skip_opted_out: invalid type",
        ),
        (
            CONTRACT_RULES.replace(
                "on = \"click\"",
                "on = \"click\"\ncancel_on = [\"reply\"]",
            ),
            "rules[1] (checkout-click).cancel_on: only used with on = \"missing_status\"",
        ),
        (
            CONTRACT_RULES.replace("on = \"click\"", "on = \"click\"\nreply_payloads = [\"X\"]"),
            "rules[1] (checkout-click).reply_payloads: only used with on = \"reply\"",
        ),
        (
            CONTRACT_RULES.replace("{{recipient}}", "{{reply.text}}"),
            "rules[0] (cart-read-followup).params.phone_number: {{reply.*}} is only known with on = \"reply\"",
        ),
    ];
    assert_refused(&cases);
}

#[test]
fn check_config_rejects_bad_rules_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        CONTRACT_RULES.replace("engati.trigger_flow", "engati.nope"),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rules[2] (unread-after-a-day).action: unknown action \"engati.nope\""),
        "{stderr}"
    );
}

#[test]
fn a_rate_card_with_a_bad_currency_region_or_price_is_refused_naming_each_key() {
    let error = Settings::from_toml_str(
        r#"
[pricing]
currency = "usd"
[pricing.rates.marketing]
default = 0.025
India = 0.01
US = -1.0
[pricing.rates.Marketing]
default = 0.1
"#,
    )
    .and_then(|s| s.validate().map(|_| s))
    .unwrap_err()
    .to_string();
    for key in [
        "pricing.currency",
        "pricing.rates.marketing.India",
        "pricing.rates.marketing.US",
        "pricing.rates.Marketing",
    ] {
        assert!(error.contains(key), "{key} in {error}");
    }
    let fine = Settings::from_toml_str(
        "[pricing]\ncurrency = \"EUR\"\n[pricing.rates.utility]\ndefault = 0.004\nIN = 0.0014\n",
    )
    .unwrap();
    fine.validate().unwrap();
    assert_eq!(fine.pricing.rate("utility", Some("IN")), Some(0.0014));
    assert_eq!(fine.pricing.rate("utility", Some("BR")), Some(0.004));
    assert_eq!(fine.pricing.rate("utility", None), Some(0.004));
    assert_eq!(fine.pricing.rate("marketing", Some("IN")), None);
}

#[test]
fn the_reply_window_must_be_positive() {
    let error = Settings::from_toml_str("[store]\nreply_window_hours = 0\n")
        .and_then(|s| s.validate().map(|_| s))
        .unwrap_err()
        .to_string();
    assert!(error.contains("store.reply_window_hours"), "{error}");
    let fine = Settings::from_toml_str("[store]\nreply_window_hours = 0.5\n").unwrap();
    fine.validate().unwrap();
}

#[test]
fn opt_out_keywords_default_to_stop_and_unsubscribe_and_may_not_be_empty() {
    let defaults = Settings::from_toml_str("").unwrap();
    assert_eq!(defaults.store.opt_out_keywords, ["STOP", "UNSUBSCRIBE"]);
    let error = Settings::from_toml_str("[store]\nopt_out_keywords = [\"STOP\", \" \"]\n")
        .and_then(|s| s.validate().map(|_| s))
        .unwrap_err()
        .to_string();
    assert!(error.contains("store.opt_out_keywords"), "{error}");
    let none = Settings::from_toml_str("[store]\nopt_out_keywords = []\n").unwrap();
    none.validate().unwrap();
}

#[test]
fn forward_mistakes_name_the_forward_and_the_key() {
    let base = r#"
[[rules]]
name = "crm"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "https://example.com/x", body = { id = "{{message_id}}" } }

[[forwards]]
name = "warehouse"
url = "https://warehouse.example.com/hooks"
secret = "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ=="
"#;
    let fine = Settings::from_toml_str(base).unwrap();
    flowhook::startup::check(&fine).unwrap();
    let cases = [
        (
            base.replace(
                "url = \"https://warehouse",
                "colour = 1\nurl = \"https://warehouse",
            ),
            "forwards[0] (warehouse).colour: unknown field",
        ),
        (
            base.replace(
                "secret = \"whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ==\"",
                "",
            ),
            "forwards[0] (warehouse).secret: required",
        ),
        (
            base.replace(
                "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ==",
                "whsec_Y2hhbmdlLW1lLWdlbmVyaWMtc2VjcmV0",
            ),
            "forwards[0] (warehouse).secret: empty or a placeholder",
        ),
        (
            base.replace("whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ==", "not-a-key"),
            "forwards[0] (warehouse).secret:",
        ),
        (
            base.to_owned() + &base[base.find("[[forwards]]").unwrap()..],
            "forwards[1] (warehouse).name: duplicate forward name",
        ),
        (
            base.replace("name = \"warehouse\"", "name = \"crm\""),
            "forwards[0] (crm).name: \"crm\" is a rule's name too",
        ),
        (
            base.replace("https://warehouse.example.com/hooks", "ftp://x"),
            "forwards[0] (warehouse).url: \"ftp://x\" is not an http(s) URL",
        ),
        (
            base.replace(
                "url = \"https://warehouse",
                "events = [\"sent\"]\nurl = \"https://warehouse",
            ),
            "forwards[0] (warehouse).events",
        ),
        (
            base.replace(
                "url = \"https://warehouse",
                "max_in_flight = 0\nurl = \"https://warehouse",
            ),
            "forwards[0] (warehouse).max_in_flight: must be at least 1",
        ),
        (
            base.replace(
                "url = \"https://warehouse",
                "when = { \"callback\" = \"x\" }\nurl = \"https://warehouse",
            ),
            "forwards[0] (warehouse).when.callback",
        ),
    ];
    assert_refused(&cases);
}

#[test]
fn check_config_warns_about_a_forward_over_plain_http_to_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        r#"
[[forwards]]
name = "crm"
url = "http://crm.internal:8080/hooks"
secret = "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ=="
"#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: forwards (crm).url") && stderr.contains("plain http"),
        "{stderr}"
    );
}

/// Each config is refused (when read, or by `startup::check`) with the expected text.
fn assert_refused(cases: &[(String, &str)]) {
    for (toml, expected) in cases {
        let error = match Settings::from_toml_str(toml) {
            Err(e) => e.to_string(),
            Ok(settings) => flowhook::startup::check(&settings).unwrap_err().to_string(),
        };
        assert!(
            error.contains(expected),
            "expected {expected:?} in:\n{error}"
        );
    }
}
