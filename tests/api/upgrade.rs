//! A store and an export written by the release before versioned records (format 0: JSON
//! states, a dedupe key per event, recipients filed as sent) still serve everything.
//!
//! `tests/fixtures/stores/format0.tar.gz` and `format0-export.jsonl` were made with the
//! binary of commit 903aca2: BIK sent, delivered, read, a click and a failure, Meta's three
//! failed statuses, one quarantined event, and one follow-up action (rule `on-read`).
//!
//! `format1.tar.gz` (compact records, an index entry per action and message) was made with
//! the binary of commit 85ca821 by `tests/fixtures/stores/make-store.sh`: the same events, and
//! three follow-ups, `on-read` delivered and two `on-failed` dead.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::*;

/// Unpacks a fixture store (`format0`, `format1`) into a fresh directory; returns it and the
/// store's path.
fn old_store(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/stores/{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success());
    let path = dir.path().join("oldstore");
    (dir, path)
}

async fn check_old_data(app: &TestApp) {
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["status"], "read");
    assert_eq!(m["recipient_e164"], "+919090909090", "derived on read");
    assert_eq!(m["failure_code"], Value::Null);
    assert_eq!(m["events"].as_array().unwrap().len(), 4);
    assert_eq!(m["actions"][0]["rule"], "on-read");
    // Meta's recipients were filed as `919090909090`; any form finds them now.
    let page = app
        .get_json("/v1/messages?recipient=%2B91%2090909%2009090")
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);
    let rejected = app.get_json("/v1/rejected").await;
    assert_eq!(rejected["rejected"].as_array().unwrap().len(), 1);
    // Old events are still recognized when a provider retries them.
    let again = app.post_bik(fixture("bik/status-read.json")).await;
    assert_eq!(counts(again).await, (0, 1, 0, 0));
    // And new ones fold into the old timelines.
    let click_later = fixture("bik/link-click.json")
        .replace("10:06:00", "10:07:00")
        .replace("000000000005", "000000000099");
    assert_eq!(counts(app.post_bik(click_later).await).await.0, 1);
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["clicks"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_store_written_by_the_previous_release_opens_and_serves_its_data() {
    let (dir, path) = old_store("format0");
    let app = start(test_settings(&path), dir).await;
    check_old_data(&app).await;
    // Reopened after the upgrade: the same answers, nothing converted twice.
    let app = app.restart().await;
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["clicks"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_export_of_the_previous_release_imports() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "[store]\npath = \"{}\"", store.display()).unwrap();
    let export = fixture("stores/format0-export.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", config.path().to_str().unwrap(), "import"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let app = start(test_settings(&store), dir).await;
    check_old_data(&app).await;
}

fn rules_of(page: &Value) -> Vec<(String, String)> {
    page["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_owned(),
                a["message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn check_format1_actions(app: &TestApp) {
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    let actions = m["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["rule"], "on-read");
    assert_eq!(actions[0]["state"], "delivered");
    let failed = app
        .message("wamid.METAFAILED000000000000000000000000000000001")
        .await
        .unwrap();
    assert_eq!(failed["actions"][0]["state"], "dead");
    // Every listing still works, in creation order, without the per-rule and all-actions
    // entries the upgrade removed.
    let all = app.get_json("/v1/actions").await;
    let all = rules_of(&all);
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].0, "on-read");
    let dead = app.get_json("/v1/actions?rule=on-failed").await;
    assert_eq!(rules_of(&dead), all[1..].to_vec());
    let dead = app.get_json("/v1/actions?state=dead").await;
    assert_eq!(rules_of(&dead), all[1..].to_vec());
    let both = app
        .get_json("/v1/actions?rule=on-read&state=delivered")
        .await;
    assert_eq!(rules_of(&both), all[..1].to_vec());
    // One at a time, the cursors walk the same list.
    let mut walked = Vec::new();
    let mut url = "/v1/actions?limit=1".to_owned();
    loop {
        let page = app.get_json(&url).await;
        walked.extend(rules_of(&page));
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/v1/actions?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(walked, all);
}

#[tokio::test]
async fn a_store_of_format_1_opens_with_its_actions_in_their_records() {
    let (dir, path) = old_store("format1");
    let app = start(test_settings(&path), dir).await;
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["status"], "read");
    assert_eq!(m["clicks"].as_array().unwrap().len(), 1);
    check_format1_actions(&app).await;
    let rejected = app.get_json("/v1/rejected").await;
    assert_eq!(rejected["rejected"].as_array().unwrap().len(), 1);
    // A dead action requeued by hand is found by its state entries; its rule is no longer
    // configured, so the dispatcher gives it up again (a second attempt, dead).
    let dead = app.get_json("/v1/actions?state=dead").await;
    let id = dead["actions"][0]["id"].as_str().unwrap().to_owned();
    let resp = app
        .post_api(&format!("/v1/actions/{id}/retry"), serde_json::json!({}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let requeued: Value = resp.json().await.unwrap();
    assert_eq!(requeued["state"], "pending");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let dead = app.get_json("/v1/actions?state=dead&rule=on-failed").await;
        let attempts: Vec<i64> = dead["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["attempts"].as_i64().unwrap())
            .collect();
        if attempts.iter().sum::<i64>() == 3 {
            assert_eq!(attempts.len(), 2);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{attempts:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Reopened: nothing upgraded twice, the same answers.
    let app = app.restart().await;
    let all = app.get_json("/v1/actions").await;
    assert_eq!(all["actions"].as_array().unwrap().len(), 3);
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["actions"].as_array().unwrap().len(), 1);
}
