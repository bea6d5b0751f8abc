//! No silent loss (contract section 7), on the engine of this pass (sled, or fjall with
//! `FLOWHOOK__STORE__BACKEND=fjall`): a SIGKILL is not damage, but a store whose log was then
//! cut short is not served as if it were whole. `serve` refuses it naming the damage and the ways out,
//! `check-store` exits 1 saying how much is missing, `export` writes what can be read, and
//! `serve --accept-loss` serves what is left.

use serde_json::json;

use crate::helpers::*;

/// The store's largest file (sled's log; fjall's journal, as nothing was flushed to a table
/// before the kill): where the acknowledged writes of a small store are.
fn largest_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.ends_with("flowhook.mark") {
                files.push((entry.metadata().unwrap().len(), path));
            }
        }
    }
    files.sort();
    files.pop().expect("the store has files").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_cut_short_is_refused_until_exported_or_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let port = crate::process::free_port();
    let address = format!("http://127.0.0.1:{port}");
    let serve_config = dir.path().join("serve.toml");
    std::fs::write(
        &serve_config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\n\
             [api]\ntoken = \"{API_TOKEN}\"\n[providers.bik]\nbasic_auth = [\"{BIK_KEY}\"]\n",
            store.display()
        ),
    )
    .unwrap();
    let mut process = crate::process::start(&serve_config, &address, &dir.path().join("log")).await;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now();
    for n in 0..200 {
        let body = bik_status(&format!("wamid.LOSS-{n}=="), "read", now, &json!({}));
        let resp = crate::process::post_bik_to(&client, &address, body).await;
        assert_eq!(counts(resp).await.0, 1);
    }
    // The mark follows the flushes about once a second: wait until it covers the last
    // acknowledged webhook (each of the 200, posted one after another, was a commit of its
    // own), then kill the process, with what it acknowledged only in the engine's log.
    let mark = store.join("flowhook.mark");
    let marked = || -> u64 {
        std::fs::read_to_string(&mark)
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("seq=")?.parse().ok()))
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while marked() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mark did not follow the flushes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    process.0.kill().unwrap();
    process.0.wait().unwrap();
    let config = cli_config(&store);
    // (A SIGKILL alone is not damage: the crash tests restart after one, on both engines,
    // and are served. Opening the store here would write fjall's memtables out to tables,
    // leaving nothing in the journal to cut.)

    // Cut the engine's log in the middle of what it holds, as a torn copy or a damaged disk
    // would (fjall preallocates its journal: what follows the data is zeros).
    let log = largest_file(&store);
    let bytes = std::fs::read(&log).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |at| at + 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(used as u64 / 2)
        .unwrap();

    let mut settings = test_settings(&store);
    settings.store.path = store.clone();
    let refused = flowhook::store::Store::open(&settings.store, Default::default()).await;
    let Err(error) = refused else {
        panic!(
            "a store cut short was opened for serving ({})",
            log.display()
        );
    };
    let text = error.to_string();
    eprintln!("refused: {text}");
    assert!(
        text.contains("flowhook export") || text.contains("flowhook import"),
        "the ways out: {text}"
    );
    if let flowhook::store::StoreError::Damaged(loss) = &error {
        assert!(loss.missing() > 0);
        assert!(text.contains("acknowledged commits are missing"), "{text}");
        assert!(text.contains("--accept-loss"), "{text}");

        let checked = run_cli(&config, &["check-store"]);
        assert_eq!(checked.status.code(), Some(1));
        let report = String::from_utf8_lossy(&checked.stdout);
        assert!(
            report.contains("acknowledged commits are missing"),
            "{report}"
        );

        let exported = run_cli(&config, &["export"]);
        let stderr = String::from_utf8_lossy(&exported.stderr);
        assert!(stderr.contains("exporting what can be read"), "{stderr}");
        let lines = String::from_utf8_lossy(&exported.stdout).lines().count();
        assert!(lines < 200, "what was cut off is not there: {lines}");

        // Accepting the loss serves what is left, and records it: the next start is clean.
        let accepted = flowhook::store::Store::open(
            &flowhook::config::StoreSettings {
                accept_loss: true,
                ..settings.store.clone()
            },
            Default::default(),
        )
        .await
        .unwrap();
        accepted.close().await.unwrap();
        drop(accepted);
        let checked = run_cli(&config, &["check-store"]);
        assert_eq!(
            checked.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&checked.stdout)
        );
    } else {
        // The engine itself could not read what is left: refused too, with the way out.
        let checked = run_cli(&config, &["check-store"]);
        assert_eq!(checked.status.code(), Some(1));
    }
}
