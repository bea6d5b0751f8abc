//! The CLI's `sign`, `export` and `import`, run as the real binary.

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::Utc;
use serde_json::{json, Value};

use flowhook::config::{Settings, StoreBackend};

use crate::helpers::*;

/// Runs the binary with `stdin` (and `FLOWHOOK__STORE__BACKEND` when `engine` is given).
fn run(args: &[&str], engine: Option<&str>, stdin: &[u8]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowhook"));
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(engine) = engine {
        command.env("FLOWHOOK__STORE__BACKEND", engine);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `flowhook args...` with `stdin`; returns stdout, asserting success.
fn flowhook(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let output = run(args, None, stdin);
    assert!(
        output.status.success(),
        "flowhook {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn headers(output: &[u8]) -> Vec<(String, String)> {
    String::from_utf8(output.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            let (name, value) = l.split_once(": ").expect("Name: value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn sign_prints_headers_the_server_accepts() {
    let app = spawn_app().await;
    let body = generic_status("wamid.SIGNED==", "sent", Utc::now().timestamp(), json!({}));
    let signed = headers(&flowhook(
        &["sign", "generic", "--secret", GENERIC_SECRET],
        body.as_bytes(),
    ));
    assert_eq!(
        signed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
    let pairs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let resp = app.post_generic_with_headers(body, &pairs).await;
    assert_eq!(counts(resp).await, (1, 0, 0, 0));

    let body = fixture("meta/statuses-sent.json");
    let signed = headers(&flowhook(
        &["sign", "meta", "--secret", META_SECRET],
        body.as_bytes(),
    ));
    assert_eq!(signed[0].0, "X-Hub-Signature-256");
    let resp = app.post_meta_with_signature(body, Some(&signed[0].1)).await;
    assert_eq!(counts(resp).await.0, 1);

    let fixed = headers(&flowhook(
        &[
            "sign",
            "generic",
            "--secret",
            GENERIC_SECRET,
            "--id",
            "msg_1",
            "--timestamp",
            "1700000000",
        ],
        b"{}",
    ));
    assert_eq!(
        fixed[2].1,
        sign_generic(GENERIC_SECRET, "msg_1", 1_700_000_000, "{}")
    );
}

/// A config for the CLI on the store `settings` name: a sled directory, or, on the Postgres
/// pass, its database.
fn config_for(settings: &Settings) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let store = &settings.store;
    writeln!(file, "[store]\npath = \"{}\"", store.path.display()).unwrap();
    if store.backend == StoreBackend::Postgres {
        let url = store.postgres.url.expose();
        writeln!(
            file,
            "backend = \"postgres\"\n[store.postgres]\nurl = \"{url}\""
        )
        .unwrap();
    }
    file
}

#[tokio::test]
async fn export_then_import_restores_messages_actions_and_quarantine() {
    let mock = ok_and_dead_target().await;
    let m = mock.uri();
    let timer = format!(
        r#"
[[rules]]
name = "later"
on = "missing_status"
statuses = ["read"]
since = "sent"
after_seconds = 86400
action = "http.post"
params = {{ url = "{m}/later", body = {{ id = "{{{{message_id}}}}" }} }}
"#
    );
    let rules = post_rule("ok", "read", &format!("{m}/ok"), "message_id")
        + &post_rule("dead", "read", &format!("{m}/dead"), "callback.order_id")
        + &timer;
    let app = spawn_app_with_rules(&rules).await;
    let now = Utc::now();
    let with_order = json!({"order_id": "O-1", "campaign": "spring"});
    app.post_bik_status("wamid.A==", "read", now, &with_order)
        .await;
    app.post_bik_status("wamid.B==", "sent", now, &json!({}))
        .await;
    app.post_bik_status("wamid.C==", "read", now, &json!({}))
        .await;
    let no_id = json!({"type": "message.status", "status": "read", "timestamp": 1});
    counts(app.post_generic("wh_q", no_id.to_string()).await).await;
    // Opt-outs: one on a message (BIK), one for a recipient with no message (Meta).
    let opted_out = fixture("bik/opted-out.json").replace(
        "wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==",
        "wamid.B==",
    );
    assert_eq!(counts(app.post_bik(opted_out).await).await, (1, 0, 0, 0));
    let stranger = fixture("meta/user-preferences.json").replace("919090909090", "15551340563");
    assert_eq!(counts(app.post_meta(stranger).await).await, (1, 0, 0, 0));
    let recipients = ["+919090909090", "+15551340563"];
    let mut recipients_before = Vec::new();
    for r in recipients {
        recipients_before.push(app.get_json(&format!("/v1/recipients/{r}")).await);
    }
    for id in ["wamid.A==", "wamid.C=="] {
        app.wait_for_actions(id, |a| {
            a.len() == 2 && a.iter().all(|x| x["state"] != "pending")
        })
        .await;
    }
    let ids = ["wamid.A==", "wamid.B==", "wamid.C=="];
    let mut before = Vec::new();
    for id in ids {
        before.push(app.message(id).await.unwrap());
    }
    let listed_before: Value = app.get_json("/v1/actions").await;
    let (settings, dir) = app.stop().await;

    let original = config_for(&settings);
    let exported = flowhook(
        &["--config", original.path().to_str().unwrap(), "export"],
        b"",
    );
    let lines: Vec<Value> = String::from_utf8(exported.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        6,
        "three messages, one quarantined event and two recipients' opt-outs"
    );

    let restored_dir = tempfile::tempdir().unwrap();
    let mut settings = settings;
    settings.store.path = restored_dir.path().join("store");
    if let Some(url) = postgres_database().await {
        settings.store.postgres.url = flowhook::config::Secret::new(url);
    }
    let restored = config_for(&settings);
    let restored_path = restored.path().to_str().unwrap();
    flowhook(&["--config", restored_path, "import"], &exported);
    assert_eq!(
        flowhook(&["--config", restored_path, "export"], b""),
        exported
    );
    // A second import into the now full store is refused.
    let output = Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", restored_path, "import"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("empty store"), "{stderr}");

    // The restored store answers the API as the original did, indexes included.
    let app = start(settings, dir).await;
    for (id, expected) in ids.iter().zip(&before) {
        assert_eq!(&app.message(id).await.unwrap(), expected, "{id}");
    }
    let listed: Value = app.get_json("/v1/actions").await;
    assert_eq!(listed, listed_before);
    let by_order: Value = app.get_json("/v1/messages?callback.order_id=O-1").await;
    assert_eq!(by_order["messages"][0]["message_id"], "wamid.A==");
    let rejected: Value = app.get_json("/v1/rejected").await;
    assert_eq!(rejected["rejected"].as_array().unwrap().len(), 1);
    for (r, expected) in recipients.iter().zip(&recipients_before) {
        let answer = app.get_json(&format!("/v1/recipients/{r}")).await;
        assert_eq!(&answer, expected, "{r}");
        assert_eq!(answer["opted_out"], true, "{r}");
    }
    // Restored dedupe keys: the same webhook again is a duplicate.
    let again = app
        .post_bik(bik_status("wamid.A==", "read", now, &with_order))
        .await;
    assert_eq!(counts(again).await, (0, 1, 0, 0));
}

/// Runs `flowhook --config <config> args...` on the embedded engine `engine` with `stdin`.
fn on_engine(
    engine: &str,
    config: &tempfile::NamedTempFile,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    let path = config.path().to_str().unwrap();
    let args: Vec<&str> = ["--config", path].iter().chain(args).copied().collect();
    run(&args, Some(engine), stdin)
}

/// sled to fjall and back through export and import: byte-identical; and a directory of one
/// engine is refused by the other, naming both.
#[tokio::test]
async fn an_export_moves_between_sled_and_fjall_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&dir.path().join("sled"));
    settings.store.backend = StoreBackend::Sled;
    let app = start(settings, tempfile::tempdir().unwrap()).await;
    let now = Utc::now();
    for n in 0..20 {
        let data = json!({"order_id": format!("O-{n}"), "campaign": "move"});
        app.post_bik_status(&format!("wamid.MOVE-{n}=="), "read", now, &data)
            .await;
    }
    let no_id = json!({"type": "message.status", "status": "read", "timestamp": 1});
    counts(app.post_generic("wh_move", no_id.to_string()).await).await;
    counts(app.post_meta(fixture("meta/user-preferences.json")).await).await;
    app.stop().await;

    let sled = cli_config(&dir.path().join("sled"));
    let fjall = cli_config(&dir.path().join("fjall"));
    let back = cli_config(&dir.path().join("sled-again"));
    let exported = on_engine("sled", &sled, &["export"], b"");
    assert!(exported.status.success());
    assert_eq!(
        String::from_utf8_lossy(&exported.stdout).lines().count(),
        22
    );
    assert!(on_engine("fjall", &fjall, &["import"], &exported.stdout)
        .status
        .success());
    let from_fjall = on_engine("fjall", &fjall, &["export"], b"");
    assert_eq!(from_fjall.stdout, exported.stdout, "sled -> fjall");
    assert!(on_engine("sled", &back, &["import"], &from_fjall.stdout)
        .status
        .success());
    assert_eq!(
        on_engine("sled", &back, &["export"], b"").stdout,
        exported.stdout,
        "fjall -> sled"
    );

    for (engine, config) in [("sled", &fjall), ("fjall", &sled)] {
        let refused = on_engine(engine, config, &["check-store"], b"");
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("was written by")
                && stderr.contains("sled")
                && stderr.contains("fjall"),
            "{engine}: {stderr}"
        );
    }
}

/// A process whose working directory was deleted under it: sled opens the store as ever, and
/// fjall (whose open resolves a default relative path) refuses with a message saying why
/// instead of panicking.
#[test]
fn a_deleted_working_directory_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = cli_config(&store);
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && rmdir "$1" && exec "$2" --config "$3" check-store"#)
        .args([
            "sh",
            gone.to_str().unwrap(),
            env!("CARGO_BIN_EXE_flowhook"),
            config.path().to_str().unwrap(),
        ])
        .env(
            "FLOWHOOK__STORE__BACKEND",
            match embedded_engine() {
                StoreBackend::Fjall => "fjall",
                _ => "sled",
            },
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    match embedded_engine() {
        StoreBackend::Fjall => {
            assert!(!output.status.success());
            assert!(stderr.contains("needs a working directory"), "{stderr}");
        }
        _ => assert!(output.status.success(), "{stderr}"),
    }
}
