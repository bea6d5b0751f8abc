//! The cost of one more event on a message that already has many: fills one message with N
//! click events (default 1,000, in batches of 100), then times single new events, each in its
//! own durable commit, and prints the median and p99 in milliseconds, the stored record's size
//! and the GET answer's size. For the benchmark (`bench/run.sh`).
//!
//! `cargo run --release --example long_message -- <store path> [events, default 1000]`

use std::time::Instant;

use flowhook::config::{Durability, StoreSettings};
use flowhook::domain::{CallbackData, Event, EventKind, MessageId, Provider};
use flowhook::store::{IngestItem, Store};

/// The allocator the service uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ID: &str = "wamid.LONGMESSAGE==";

/// Click number `n`, at `secs` seconds after a fixed instant.
fn click_at(n: u64, secs: u64) -> IngestItem {
    let at = chrono::DateTime::from_timestamp(1_795_255_200 + secs as i64, 0).expect("in range");
    IngestItem::Event(Box::new(Event {
        message_id: MessageId::parse(ID).expect("valid id"),
        provider: Provider::Generic,
        kind: EventKind::Click,
        status: None,
        url: Some(format!("https://shop.example.com/p/{n}")),
        at,
        received_at: flowhook::domain::now(),
        event_id: Some(format!("click-{n}")),
        recipient: Some("+919090909090".into()),
        recipient_e164: Some("+919090909090".into()),
        recipient_user_id: None,
        participant: None,
        channel: Some("whatsapp".into()),
        failure_code: None,
        failure_reason: None,
        callback: CallbackData::decode(
            &serde_json::json!({"order_id": "ORD1", "campaign": "long"}),
            4096,
        ),
        billing: None,
        reply: None,
        opt_out: None,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: long_message <store path> [events]"))?;
    let total: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let settings = StoreSettings {
        path: path.into(),
        // `LONG_MESSAGE_DURABILITY=relaxed` leaves the flush out of the figure.
        durability: match std::env::var("LONG_MESSAGE_DURABILITY").as_deref() {
            Ok("relaxed") => Durability::Relaxed,
            _ => Durability::Sync,
        },
        ..StoreSettings::default()
    };
    let store = Store::open(&settings, Default::default()).await?;
    let mut n = 0;
    while n < total {
        let batch: Vec<IngestItem> = (n..(n + 100).min(total)).map(|i| click_at(i, i)).collect();
        n += batch.len() as u64;
        store
            .ingest(Provider::Generic, batch, flowhook::domain::now())
            .await?;
    }
    let mut times = Vec::new();
    for k in 0..200 {
        // Alternately at the end and in the middle of the timeline.
        let n = total + k;
        let item = if k % 2 == 0 {
            click_at(n, n)
        } else {
            click_at(n, total / 2)
        };
        let started = Instant::now();
        store
            .ingest(Provider::Generic, vec![item], flowhook::domain::now())
            .await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let message = store.message(ID).await?.expect("the message exists");
    println!(
        "one more event on a message with {total} events: p50 {:.2} ms, p99 {:.2} ms; \
         events listed {}, total {}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        message.events.len(),
        message.events_total(),
    );
    store.close().await?;
    Ok(())
}
