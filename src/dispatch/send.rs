//! One attempt: build the request from a stored action and today's `[targets.*]`, send it,
//! and classify the answer: 2xx is delivered unless its JSON body says otherwise; 408, 429,
//! 5xx and network errors are retried; anything else is final.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use crate::rules::Rules;
use crate::store::{Action, Attempt};
use crate::targets::{Limits, Target, TargetSettings};

/// The most of an answer's body flowhook reads (to look for `status`/`success`).
const READ_LIMIT: usize = 64 * 1024;

pub struct Sender {
    client: reqwest::Client,
    targets: TargetSettings,
    rules: Arc<Rules>,
    keep_bytes: usize,
    max_retry_after: chrono::Duration,
}

impl Sender {
    pub fn new(
        targets: TargetSettings,
        rules: Arc<Rules>,
        keep_bytes: usize,
        max_retry_after: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("flowhook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            targets,
            rules,
            keep_bytes,
            max_retry_after: chrono::Duration::from_std(max_retry_after)
                .unwrap_or(chrono::Duration::days(1)),
        })
    }

    pub fn limits(&self, target: Target) -> Limits {
        match self.rules.forward_of(target) {
            Some(forward) => forward.limits,
            None => self.targets.limits(target),
        }
    }

    pub async fn send(&self, action: &Action) -> Attempt {
        let request = match self.request(action) {
            Ok(r) => r,
            Err(error) => {
                return Attempt::Failed {
                    error,
                    status: None,
                    body: None,
                }
            }
        };
        let timeout_ms = request.timeout().map_or(0, |t| t.as_millis());
        match self.client.execute(request).await {
            Err(e) if e.is_timeout() => Attempt::Retry {
                error: format!("timed out after {timeout_ms} ms"),
                status: None,
                body: None,
                retry_after: None,
            },
            Err(e) if e.is_builder() => Attempt::Failed {
                error: format!("could not build the request: {e}"),
                status: None,
                body: None,
            },
            Err(e) => Attempt::Retry {
                error: format!("could not reach the target: {}", error_chain(&e)),
                status: None,
                body: None,
                retry_after: None,
            },
            Ok(response) => self.classify(response).await,
        }
    }

    fn request(&self, action: &Action) -> Result<reqwest::Request, String> {
        let out = action
            .request
            .as_ref()
            .ok_or_else(|| "the action has no request".to_owned())?;
        let mut endpoint = self.targets.endpoint(out);
        let forward = match out.target.forward_name() {
            Some(name) => {
                let forward = self.rules.forward_of(out.target).ok_or_else(|| {
                    format!(
                        "forward {name:?} is no longer configured, so its URL and key are unknown"
                    )
                })?;
                endpoint.url = forward.url.clone();
                Some(forward)
            }
            None => None,
        };
        let body = serde_json::to_vec(&out.body).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        for (name, value) in &out.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("header name {name:?} is not valid"))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("header {name} has a value that is not valid"))?;
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            "idempotency-key",
            HeaderValue::try_from(action.id.as_str()).map_err(|e| e.to_string())?,
        );
        if let Some(auth) = endpoint.authorization {
            let mut value = HeaderValue::try_from(auth).map_err(|_| {
                format!(
                    "the {} credential is not a valid header",
                    out.target.as_str()
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if action.action.signed() {
            let key = match forward {
                Some(forward) => Some(forward.key().to_vec()),
                None => self.signing_key(action)?,
            };
            if let Some(key) = key {
                let timestamp = chrono::Utc::now().timestamp();
                let signature = crate::providers::generic::sign(&key, &action.id, timestamp, &body);
                let set = |h: &mut HeaderMap, name: &'static str, value: String| {
                    h.insert(name, HeaderValue::try_from(value).expect("ASCII header"));
                };
                set(&mut headers, "webhook-id", action.id.to_string());
                set(&mut headers, "webhook-timestamp", timestamp.to_string());
                set(&mut headers, "webhook-signature", signature);
            }
        }
        let timeout = Duration::from_millis(self.limits(out.target).timeout_ms);
        self.client
            .post(&endpoint.url)
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("could not build the request to {:?}: {e}", endpoint.url))
    }

    /// The key an `http.post` action is signed with; its rule must still be configured.
    fn signing_key(&self, action: &Action) -> Result<Option<Vec<u8>>, String> {
        match self.rules.get(&action.rule) {
            Some(rule) => Ok(rule.signing_key().map(<[u8]>::to_vec)),
            None => Err(format!(
                "rule {:?} is no longer configured, so its signing secret is unknown",
                action.rule
            )),
        }
    }

    async fn classify(&self, mut response: reqwest::Response) -> Attempt {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .map(|d| d.min(self.max_retry_after));
        let mut bytes = Vec::new();
        let mut read_error = None;
        while bytes.len() < READ_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        let code = status.as_u16();
        let kept = || Some(truncate(&bytes, self.keep_bytes));
        if let Some(e) = read_error {
            // A 2xx whose body was cut off may or may not have been acted on: retry with the
            // same Idempotency-Key.
            return Attempt::Retry {
                error: format!("HTTP {code}, then the answer was cut off: {e}"),
                status: Some(code),
                body: kept(),
                retry_after,
            };
        }
        let (error, retry) = if status.is_success() {
            match body_failure(&bytes) {
                None => return Attempt::Delivered { status: code },
                Some((reported, error)) => (
                    format!("HTTP {code}, but the body says it failed: {error}"),
                    reported.is_none_or(retryable),
                ),
            }
        } else {
            (format!("HTTP {code}"), retryable(code))
        };
        if retry {
            Attempt::Retry {
                error,
                status: Some(code),
                body: kept(),
                retry_after,
            }
        } else {
            Attempt::Failed {
                error,
                status: Some(code),
                body: kept(),
            }
        }
    }
}

/// 408, 429 and 5xx are worth another try; other codes are final.
fn retryable(code: u16) -> bool {
    code == 408 || code == 429 || (500..=599).contains(&code)
}

/// A JSON body that reports failure despite a 2xx: `status >= 400` (BIK answers errors this
/// way) or `success: false`. Returns the reported status, if any, and a description.
fn body_failure(bytes: &[u8]) -> Option<(Option<u16>, String)> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    let status = body.get("status").and_then(|s| match s {
        Value::Number(n) => n.as_u64(),
        Value::String(t) => t.trim().parse().ok(),
        _ => None,
    });
    if let Some(code) = status.filter(|c| *c >= 400) {
        let code = u16::try_from(code).unwrap_or(599);
        return Some((Some(code), format!("status {code}")));
    }
    if body.get("success") == Some(&Value::Bool(false)) {
        return Some((None, "success: false".into()));
    }
    None
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(text: &str) -> Option<chrono::Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return chrono::Duration::try_seconds(secs.min(i64::MAX as u64) as i64);
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).max(chrono::Duration::zero()))
}

fn truncate(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= max {
        return text.into_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::rules::{ActionId, RuleName};
    use crate::secret::Secret;
    use crate::store::ActionState;
    use crate::targets::{ActionKind, Origin};

    /// Every target pointed at the mock, with its credential; calls time out after 300 ms.
    fn targets(mock: &str) -> TargetSettings {
        let mut t = TargetSettings::default();
        t.bik.settings.base_url = mock.into();
        t.bik.settings.auth_token = Secret::new("bik-key");
        t.engati.settings.base_url = mock.into();
        t.engati.settings.customer_id = "c1".into();
        t.engati.settings.bot_key = "b1".into();
        t.engati.settings.api_key = Secret::new("engati-key");
        t.botika.settings.base_url = mock.into();
        t.botika.settings.api_token = Secret::new("botika-token");
        for limits in [
            &mut t.bik.limits,
            &mut t.engati.limits,
            &mut t.botika.limits,
            &mut t.http.limits,
        ] {
            limits.timeout_ms = 300;
        }
        t
    }

    fn sender(mock: &str) -> Sender {
        let rules = crate::rules::tests::rules_for(
            r#"
[[rules]]
name = "r1"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "http://127.0.0.1:9/x", body = {} }
"#,
        );
        Sender::new(
            targets(mock),
            Arc::new(rules),
            64,
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    fn action(kind: &str, params: Value) -> Action {
        let request = ActionKind::parse(kind)
            .unwrap()
            .build(
                params.as_object().unwrap().clone(),
                &Origin {
                    message_id: "wamid.S==".into(),
                    rule: "r1".into(),
                },
            )
            .unwrap();
        Action {
            id: ActionId::new("act_0123456789abcdef01234567"),
            message_id: "wamid.S==".into(),
            rule: RuleName::new("r1"),
            action: ActionKind::parse(kind).unwrap(),
            state: ActionState::Pending,
            attempts: 1,
            last_error: None,
            last_status: None,
            last_response: None,
            next_attempt_at: None,
            created_at: chrono::Utc::now(),
            completed_at: None,
            request: Some(request),
            until: Vec::new(),
            facets: Vec::new(),
            schedule_from: 0,
            bucket: 0,
            in_flight: true,
            skip_opted_out: true,
            direct: None,
        }
    }

    #[tokio::test]
    async fn each_target_sends_its_request_to_its_endpoint_with_its_credential() {
        let mock = MockServer::start().await;
        let uri = mock.uri();
        let cases = [
            (
                action(
                    "bik.send_event",
                    json!({"event_name": "e", "event_properties": {"a": 1}, "email": "x@y.z"}),
                ),
                "/integrations/bikPlatformFunctions-events/sendEvent",
                Some("Basic bik-key"),
                json!({"event": {"eventName": "e", "eventProperties": {"a": 1}, "email": "x@y.z"}}),
            ),
            (
                action(
                    "engati.trigger_flow",
                    json!({"flow_key": "f1", "channel": "whatsapp", "phone_no": "+91"}),
                ),
                "/bot-api/v2.0/customer/c1/bot/b1/flow/f1",
                Some("Basic engati-key"),
                json!({"user.channel": "whatsapp", "user.phone_no": "+91"}),
            ),
            (
                action(
                    "botika.send_flow",
                    json!({"to": "+91", "flow": {"id": "f"}}),
                ),
                "/api/whatsapp/v1/messages",
                Some("Bearer botika-token"),
                json!({"to": "+91", "type": "flow", "flow": {"id": "f"}}),
            ),
            (
                action(
                    "http.post",
                    json!({"url": format!("{uri}/hook"), "body": {"m": "wamid.S=="},
                        "headers": {"x-tenant": "t1"}}),
                ),
                "/hook",
                None,
                json!({"m": "wamid.S=="}),
            ),
        ];
        let sender = sender(&uri);
        for (action, at, authorization, body) in cases {
            mock.reset().await;
            let mut expected = Mock::given(method("POST"))
                .and(path(at))
                .and(header("content-type", "application/json"))
                .and(header("idempotency-key", action.id.as_str()))
                .and(body_json(&body));
            if let Some(auth) = authorization {
                expected = expected.and(header("authorization", auth));
            }
            expected
                .respond_with(ResponseTemplate::new(200))
                .expect(1)
                .mount(&mock)
                .await;
            let attempt = sender.send(&action).await;
            assert!(
                matches!(attempt, Attempt::Delivered { status: 200 }),
                "{}: {attempt:?}",
                action.action
            );
            let seen = mock.received_requests().await.unwrap();
            if authorization.is_none() {
                assert!(seen[0].headers.get("authorization").is_none());
                assert_eq!(seen[0].headers.get("x-tenant").unwrap(), "t1");
            }
            mock.verify().await;
        }
    }

    #[tokio::test]
    async fn answers_are_classified_as_delivered_retried_or_final() {
        let mock = MockServer::start().await;
        let sender = sender(&mock.uri());
        let bik = action(
            "bik.send_event",
            json!({"event_name": "e", "event_properties": {}, "email": "x@y.z"}),
        );
        let answer = |template: ResponseTemplate| {
            let mock = &mock;
            async move {
                mock.reset().await;
                Mock::given(method("POST"))
                    .respond_with(template)
                    .mount(mock)
                    .await;
            }
        };

        answer(ResponseTemplate::new(200).set_body_json(json!({"status": 400, "message": "bad"})))
            .await;
        match sender.send(&bik).await {
            Attempt::Failed { error, status, .. } => {
                assert_eq!(status, Some(200));
                assert!(error.contains("body says it failed: status 400"), "{error}");
            }
            other => panic!("a 2xx whose body says 400 is final: {other:?}"),
        }

        answer(ResponseTemplate::new(200).set_body_json(json!({"status": 503}))).await;
        let attempt = sender.send(&bik).await;
        assert!(
            matches!(&attempt, Attempt::Retry { error, .. } if error.contains("status 503")),
            "a 2xx whose body says 503 is retried: {attempt:?}"
        );

        answer(ResponseTemplate::new(429).insert_header("Retry-After", "7")).await;
        match sender.send(&bik).await {
            Attempt::Retry {
                status: Some(429),
                retry_after,
                ..
            } => assert_eq!(retry_after, Some(chrono::Duration::seconds(7))),
            other => panic!("429 is retried after what it says: {other:?}"),
        }

        answer(ResponseTemplate::new(422).set_body_string("no such flow")).await;
        match sender.send(&bik).await {
            Attempt::Failed { status, body, .. } => {
                assert_eq!((status, body.as_deref()), (Some(422), Some("no such flow")))
            }
            other => panic!("422 is final: {other:?}"),
        }

        answer(ResponseTemplate::new(200).set_delay(Duration::from_secs(2))).await;
        match sender.send(&bik).await {
            Attempt::Retry { error, status, .. } => {
                assert!(error.contains("timed out after 300 ms"), "{error}");
                assert_eq!(status, None);
            }
            other => panic!("a timeout is retried: {other:?}"),
        }
    }

    #[test]
    fn bodies_that_report_failure_are_failures() {
        assert_eq!(body_failure(br#"{"status": 200, "success": true}"#), None);
        assert_eq!(body_failure(b"not json"), None);
        assert_eq!(
            body_failure(br#"{"status": 400, "errors": []}"#).map(|f| f.0),
            Some(Some(400))
        );
        assert_eq!(
            body_failure(br#"{"status": "503"}"#).map(|f| f.0),
            Some(Some(503))
        );
        assert_eq!(
            body_failure(br#"{"success": false}"#).map(|f| f.0),
            Some(None)
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(chrono::Duration::seconds(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(chrono::Duration::zero())
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo".as_bytes(), 2), "h…");
        assert_eq!(truncate(b"ok", 10), "ok");
    }
}
