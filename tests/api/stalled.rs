//! Slow and stalled clients against the real binary, started the way systemd and many shells
//! start services: with a soft open-file limit of 1,024.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::process::{free_port, metrics_text, post_bik_to, Process};

const STALLED: usize = 1_100;
const BODY_TIMEOUT_MS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_cannot_take_the_service_from_everyone_else() {
    // This test holds 1,100 connections itself.
    let fds = flowhook::fd_limit::raise().unwrap();
    assert!(
        fds.now > 1_400,
        "the test needs an open-file limit above 1,400: {fds:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"{address}\"\nworkers = 2\nbody_timeout_ms = {BODY_TIMEOUT_MS}\n\
             [store]\npath = \"{}\"\n[api]\ntoken = \"{API_TOKEN}\"\n\
             [providers.bik]\nbasic_auth = [\"{BIK_KEY}\"]\n[log]\nlevel = \"info\"\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("flowhook.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("bash")
        .args([
            "-c",
            "ulimit -Sn 1024 && exec \"$0\" --config \"$1\" serve",
            env!("CARGO_BIN_EXE_flowhook"),
            config.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let _process = Process(child);
    let base = format!("http://{address}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "flowhook did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1,100 authenticated webhooks whose bodies stop after one byte.
    let head = format!(
        "POST /webhooks/bik HTTP/1.1\r\nHost: {address}\r\nAuthorization: Basic {BIK_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    );
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    let opened = Instant::now();

    // Everyone else is still answered, at once.
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let body = bik_status(
        "wamid.STALLED==",
        "delivered",
        chrono::Utc::now(),
        &json!({}),
    );
    let webhook = post_bik_to(&client, &base, body).await;
    assert_eq!(webhook.status().as_u16(), 200);
    assert!(
        opened.elapsed() < Duration::from_millis(BODY_TIMEOUT_MS),
        "answered before any stalled body timed out"
    );

    // Every stalled one was taken in at once (none left waiting for a descriptor), so every
    // one gets its 408 when its own time is up, and is closed.
    let until = opened + Duration::from_millis(BODY_TIMEOUT_MS + 2_000);
    let replies = futures_util::future::join_all(stalled.iter_mut().map(|stream| async move {
        let mut reply = Vec::new();
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read_to_end(&mut reply)).await {
            Ok(Ok(_)) => String::from_utf8_lossy(&reply).into_owned(),
            Ok(Err(e)) => format!("read error: {e}"),
            Err(_) => "no answer in time".to_owned(),
        }
    }))
    .await;
    let timed_out = replies
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 408"))
        .count();
    assert_eq!(
        timed_out,
        STALLED,
        "first other answer: {:?}",
        replies.iter().find(|r| !r.starts_with("HTTP/1.1 408"))
    );
    assert!(opened.elapsed() >= Duration::from_millis(BODY_TIMEOUT_MS - 100));
    let metrics = metrics_text(&client, &base).await;
    assert!(
        metrics.contains("flowhook_body_timeouts_total"),
        "the timeouts are counted"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("open-file limit") && log.contains("soft_before=1024"),
        "the start logs the limit it raised:\n{log}"
    );
}
