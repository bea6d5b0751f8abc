//! Fills a store with N messages straight through the library, for the benchmark's "after 1M
//! stored messages" run: each message gets BIK `sent`, `delivered` and `read` statuses with
//! callbackData (indexed `order_id` and `campaign`), and a rule fires on a quarter of them
//! (its follow-ups stay queued: nothing dispatches here). 1,000 events per commit.
//!
//! `cargo run --release --example preload -- <store path> [messages, default 1000000]`
//! The engine is `FLOWHOOK__STORE__BACKEND` (`sled`, the default, or `fjall`), as for the service.

use std::time::Instant;

use flowhook::config::{BikSettings, Durability, StoreBackend, StoreSettings};
use flowhook::domain::Provider;
use flowhook::providers::{bik, ParseContext};
use flowhook::rules::Target;
use flowhook::store::{clock_ms, Attempt, ClaimToken, RetryPolicy, Store};

struct NoRetry;

impl RetryPolicy for NoRetry {
    fn delay(&self, _: &str, _: u32, _: Option<chrono::Duration>) -> Option<chrono::Duration> {
        None
    }
}

/// Records every queued follow-up as delivered, through the same claim and completion a
/// dispatcher makes, so that the store is in the steady state of a running service (actions
/// done, outbox empty) rather than holding a backlog that the benchmarked process would
/// start sending.
async fn deliver_all(store: &Store) -> anyhow::Result<usize> {
    let mut delivered = 0;
    loop {
        let due = store
            .due_actions(Target::parse("http").expect("registered"), clock_ms(), 1000)
            .await?;
        if due.is_empty() {
            return Ok(delivered);
        }
        let done: Vec<(ClaimToken, Attempt)> = store
            .claim_many(&due, std::time::Duration::from_secs(60))
            .await?
            .into_iter()
            .flatten()
            .map(|a| (a.claim_token(), Attempt::Delivered { status: 200 }))
            .collect();
        delivered += done.len();
        store
            .complete_many(&done, &NoRetry, chrono::Utc::now())
            .await?;
    }
}

/// The allocator the service uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: preload <store path> [n]"))?;
    let total: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let backend = match std::env::var("FLOWHOOK__STORE__BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sled") => StoreBackend::Sled,
        Ok("fjall") => StoreBackend::Fjall,
        Ok(other) => anyhow::bail!("FLOWHOOK__STORE__BACKEND={other}: preload takes sled or fjall"),
    };
    let settings = StoreSettings {
        backend,
        path: path.into(),
        durability: Durability::Relaxed,
        ..StoreSettings::default()
    };
    // A rule on the `read` of every fourth message (campaign `abandoned_cart`).
    let config = flowhook::config::Settings::from_toml_str(
        r#"
[[rules]]
name = "quarter"
on = "status"
statuses = ["read"]
when = { "callback.campaign" = "abandoned_cart" }
action = "http.post"
params = { url = "http://127.0.0.1:9/hook", body = { order = "{{callback.order_id}}" } }
"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rules = flowhook::rules::Rules::compile(&config)
        .map_err(|problems| anyhow::anyhow!("{problems:?}"))?;
    let store = Store::open(&settings, std::sync::Arc::new(rules)).await?;
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let n = (BATCH / 3).min(total - done);
        let events: Vec<String> = (done..done + n)
            .flat_map(|i| {
                let campaign = if i % 4 == 0 { "abandoned_cart" } else { "newsletter" };
                ["sent", "delivered", "read"]
                    .into_iter()
                    .enumerate()
                    .map(move |(k, status)| {
                        format!(
                            r#"{{"eventName":"message-status-update","id":"pre-{i}-{k}","eventInfo":{{"messageId":"wamid.PRELOAD{i:09}","createdAt":"2026-11-21T10:00:0{k}.000Z","channelId":"whatsapp","status":"{status}","assetValue":"+919090909090","callbackData":"{{\"order_id\":\"PRE{i}\",\"campaign\":\"{campaign}\"}}"}}}}"#
                        )
                    })
            })
            .collect();
        let body = format!("[{}]", events.join(","));
        let ctx = ParseContext {
            received_at: flowhook::domain::now(),
            max_callback_bytes: 4096,
        };
        let items = bik::parse(body.as_bytes(), &BikSettings::default(), ctx)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store.ingest(Provider::Bik, items, ctx.received_at).await?;
        // Batches are 333 messages: report on crossing each 100,000.
        let crossed = (done + n) / 100_000 > done / 100_000;
        done += n;
        if crossed {
            eprintln!(
                "{done} messages, {:.0}/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let delivered = deliver_all(&store).await?;
    store.close().await?;
    println!(
        "preloaded {total} messages and delivered {delivered} follow-ups in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
