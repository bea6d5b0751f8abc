//! Running the real `flowhook` binary, for tests that kill it, signal it or read its logs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `flowhook serve`, killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start(config: &Path, address: &str, log_path: &Path) -> Process {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start flowhook");
    let process = Process(child);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = client.get(format!("{address}/healthz")).send().await {
            if resp.status().is_success() {
                return process;
            }
        }
        assert!(
            Instant::now() < deadline,
            "flowhook did not come up (test cwd {:?}); its log:\n{}",
            std::env::current_dir(),
            std::fs::read_to_string(log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs a BIK webhook body to a running process at `address` (`http://host:port`).
pub async fn post_bik_to(
    client: &reqwest::Client,
    address: &str,
    body: String,
) -> reqwest::Response {
    client
        .post(format!("{address}/webhooks/bik"))
        .header(
            "Authorization",
            format!("Basic {}", crate::helpers::BIK_KEY),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent")
}

/// The `/metrics` text of a running process at `address`.
pub async fn metrics_text(client: &reqwest::Client, address: &str) -> String {
    client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("request sent")
        .text()
        .await
        .expect("metrics text")
}

/// Whether a running process at `address` has message `id` (asked with the API token).
pub async fn has_message(client: &reqwest::Client, address: &str, id: &str) -> bool {
    client
        .get(format!("{address}/v1/messages/{id}"))
        .bearer_auth(crate::helpers::API_TOKEN)
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
        == 200
}
