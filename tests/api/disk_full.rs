//! A full disk, on a small tmpfs mounted for the test (so it needs root; `.ci/run` runs as
//! root and includes ignored tests): webhooks get 503 with Retry-After, never 200 for what is
//! not on disk; /readyz says why; the log says it once; a stop whose final flush fails exits
//! non-zero; and everything acknowledged is there once there is room again.

use std::process::Command;

use serde_json::json;

use crate::helpers::*;
use crate::process::{free_port, has_message, post_bik_to, start};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(dir)
    }

    /// Leaves about `left` bytes free, in a file that `free` removes.
    fn fill(&self, left: u64) {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.0.path())
            .output()
            .unwrap();
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let status = Command::new("fallocate")
            .args(["-l", &(avail - left).to_string()])
            .arg(self.0.path().join("filler"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn free(&self) {
        std::fs::remove_file(self.0.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs, so it needs root: `cargo test -- --include-ignored` (.ci/run does)"]
async fn a_full_disk_answers_503_loses_nothing_acknowledged_and_a_failed_stop_says_so() {
    let disk = SmallDisk::mount("24m");
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\n\
             min_free_disk_bytes = 0\n[api]\ntoken = \"{API_TOKEN}\"\n\
             [providers.bik]\nbasic_auth = [\"{BIK_KEY}\"]\n[log]\nlevel = \"info\"\n",
            disk.0.path().join("store").display()
        ),
    )
    .unwrap();
    let log = work.path().join("flowhook.log");
    let mut process = start(&config, &address, &log).await;
    disk.fill(300_000);

    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    post_until_refused(&client, &address, "A", &mut acknowledged).await;
    assert!(!acknowledged.is_empty());
    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let reason = ready.text().await.unwrap();
    assert!(reason.contains("No space left"), "{reason}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("the store stopped accepting writes").count(),
        1,
        "logged once, not per request:\n{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains("ERROR")).count() < 5,
        "no error line per request:\n{text}"
    );

    // With room again, writes resume by themselves: no restart.
    disk.free();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let body = bik_status("wamid.FULLHEALED==", "read", chrono::Utc::now(), &json!({}));
        if post_bik_to(&client, &address, body).await.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for id in &acknowledged {
        assert!(
            has_message(&client, &address, id).await,
            "{id} was acknowledged"
        );
    }
    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the store was opened again"), "{text}");

    // Full again, and stopped while full.
    disk.fill(300_000);
    post_until_refused(&client, &address, "B", &mut acknowledged).await;

    // A stop whose final flush fails says so and exits non-zero.
    let pid = process.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = process.0.wait().unwrap();
        (status, process)
    })
    .await
    .unwrap()
    .0;
    assert!(!status.success(), "exit status {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the final flush failed"), "{text}");

    // With room again, every acknowledged webhook is there.
    disk.free();
    let _process = start(&config, &address, &log).await;
    for id in &acknowledged {
        assert!(
            has_message(&client, &address, id).await,
            "{id} was acknowledged"
        );
    }
}

/// Posts webhooks until 50 are refused; each must be 200 or 503 with `Retry-After: 30`. The
/// acknowledged ids go to `acknowledged`.
async fn post_until_refused(
    client: &reqwest::Client,
    address: &str,
    round: &str,
    acknowledged: &mut Vec<String>,
) {
    let now = chrono::Utc::now();
    let mut refused = 0;
    for i in 0..3_000 {
        let id = format!("wamid.FULL{round}{i:05}==");
        let body = bik_status(&id, "delivered", now, &json!({"order_id": "x".repeat(200)}));
        let resp = post_bik_to(client, address, body).await;
        match resp.status().as_u16() {
            200 => acknowledged.push(id),
            503 => {
                assert_eq!(
                    resp.headers().get("retry-after").unwrap(),
                    "30",
                    "503 says when to come back"
                );
                refused += 1;
                if refused == 50 {
                    return;
                }
            }
            other => panic!(
                "a full disk answered {other}: {}",
                resp.text().await.unwrap()
            ),
        }
    }
    panic!("the disk never filled up");
}
