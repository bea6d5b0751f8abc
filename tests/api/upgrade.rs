//! A store and an export written by the release before versioned records (format 0: JSON
//! states, a dedupe key per event, recipients filed as sent) still serve everything.
//!
//! `tests/fixtures/stores/format0.tar.gz` and `format0-export.jsonl` were made with the
//! binary of commit 903aca2: BIK sent, delivered, read, a click and a failure, Meta's three
//! failed statuses, one quarantined event, and one follow-up action (rule `on-read`).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::*;

/// Unpacks the format-0 store into a fresh directory; returns it and the store's path.
fn format0_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stores/format0.tar.gz");
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
    let (dir, path) = format0_store();
    let app = start(test_settings(&path), dir);
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
    let app = start(test_settings(&store), dir);
    check_old_data(&app).await;
}
