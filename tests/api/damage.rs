//! A damaged store: a record that cannot be read fails only its own message; the rest is
//! served, listed and exported; `flowhook check-store` names it; and a store sled cannot open
//! is refused with the directory and the way out.

use serde_json::{json, Value};

use crate::helpers::*;

const GOOD: [&str; 2] = ["wamid.DMG-A==", "wamid.DMG-C=="];
const BAD: &str = "wamid.DMG-B==";

#[tokio::test]
async fn an_unreadable_record_fails_only_its_own_message() {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    for id in GOOD.iter().chain([&BAD]) {
        let resp = app.post_bik(bik_status(id, "read", now, &json!({}))).await;
        assert_eq!(counts(resp).await.0, 1);
    }
    let (settings, dir) = app.stop().await;
    let store = settings.store.path.clone();
    // Damage one message's record, as a flipped byte on disk would.
    write_raw(
        &store,
        "messages",
        BAD.as_bytes(),
        &[0xF1, 2, 0xFF, 0xFF, 0xFF],
    );
    let app = start(settings, dir).await;

    // Its neighbours are served, listed and counted; it alone answers an error that says why.
    for id in GOOD {
        assert_eq!(app.message(id).await.unwrap()["status"], "read");
    }
    let resp = app
        .client
        .get(format!("{}/v1/messages/{}", app.address, urlencoding(BAD)))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    let error: Value = resp.json().await.unwrap();
    let message = error["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("cannot be read"), "{message}");
    let listed = app.get_json("/v1/messages?recipient=%2B919090909090").await;
    let ids: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&BAD));
    let metrics = crate::process::metrics_text(&app.client, &app.address).await;
    assert!(
        parse_metrics(&metrics)
            .get("flowhook_unreadable_records_total{kind=\"message\"}")
            .is_some_and(|n| *n >= 2.0),
        "{metrics}"
    );
    let (settings, _dir) = app.stop().await;
    let config = cli_config(&settings.store.path);

    // check-store names it and fails.
    let checked = run_cli(&config, &["check-store"]);
    assert_eq!(checked.status.code(), Some(1));
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(report.contains("1 unreadable records"), "{report}");
    assert!(report.contains(&format!("message {BAD}")), "{report}");

    // export writes everything else, says what it skipped, and fails.
    let exported = run_cli(&config, &["export"]);
    assert_eq!(exported.status.code(), Some(1));
    let lines = String::from_utf8_lossy(&exported.stdout);
    let written: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 2);
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(stderr.contains("skipped 1 records"), "{stderr}");
    assert!(stderr.contains(BAD), "the log names it: {stderr}");
}

#[test]
fn a_store_that_cannot_be_opened_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    // Where the store's directory should be, a file: sled cannot open it.
    let store = dir.path().join("store");
    std::fs::write(&store, b"not a directory").unwrap();
    let config = cli_config(&store);
    for command in ["check-store", "export"] {
        let out = run_cli(&config, &[command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "the store at {} cannot be opened",
                store.display()
            )) && stderr.contains("flowhook import")
                && !stderr.contains("panicked"),
            "{command}: {stderr}"
        );
    }
}

fn urlencoding(id: &str) -> String {
    id.replace('=', "%3D")
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_with_its_fix_and_removing_it_recovers_everything() {
    let flipped = |bytes: &mut Vec<u8>| {
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 8] {
            *b ^= 0xFF;
        }
    };
    let truncated = |bytes: &mut Vec<u8>| bytes.truncate(bytes.len() / 2);
    damaged_snapshot(flipped).await;
    damaged_snapshot(truncated).await;
}

async fn damaged_snapshot(damage: impl Fn(&mut Vec<u8>)) {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    for id in GOOD {
        assert_eq!(
            counts(app.post_bik(bik_status(id, "read", now, &json!({}))).await)
                .await
                .0,
            1
        );
    }
    let (settings, _dir) = app.stop().await;
    let store = settings.store.path.clone();
    {
        // sled writes a snapshot of its page table (`snap.<lsn>`) when it is reopened and
        // written to; a few writes to a scratch tree are enough.
        let db = sled::open(&store).unwrap();
        let scratch = db.open_tree("scratch").unwrap();
        for i in 0..100u32 {
            scratch.insert(i.to_be_bytes(), &[1]).unwrap();
        }
        db.drop_tree("scratch").unwrap();
        db.flush().unwrap();
    }
    let snapshot = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|f| f.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .expect("sled left a snapshot");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    damage(&mut bytes);
    std::fs::write(&snapshot, &bytes).unwrap();

    let config = cli_config(&store);
    let refused = run_cli(&config, &["check-store"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cannot be opened")
            && stderr.contains("snap.")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    // The way out it names: move the snapshot out, and everything is there.
    std::fs::rename(&snapshot, store.with_extension("snap-damaged")).unwrap();
    let checked = run_cli(&config, &["check-store"]);
    let report = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{report}");
    assert!(report.contains("store is readable: 2 messages"), "{report}");
}
