//! A request id on every request: taken from `X-Request-Id` when the caller sent a sane one,
//! made up otherwise, put on the tracing span every log line of the request carries, and
//! returned as `X-Request-Id`. One access line per request, without the query string (it may
//! hold callback values); for a stored webhook it also says what was stored, so that a
//! webhook writes one line at `info`, not two (logging was about 7% of a webhook's CPU,
//! `bench/profile.sh`).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

use super::webhooks::Stored;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane(v))
        .map_or_else(generate, str::to_owned);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    let stored = response.response().extensions().get::<Stored>().copied();
    let counts = stored.map(|s| s.outcome);
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            provider = stored.map(|s| s.provider.as_str()),
            accepted = counts.map(|c| c.accepted),
            duplicates = counts.map(|c| c.duplicates),
            ignored = counts.map(|c| c.ignored),
            rejected = counts.map(|c| c.rejected),
            "request done"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    Ok(response)
}

fn is_sane(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// 16 hex digits: a per-process random key over a counter, so ids do not repeat or reveal
/// the request count.
fn generate() -> String {
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = SEED.get_or_init(Default::default).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_callers_ids_are_checked() {
        assert_ne!(generate(), generate());
        assert_eq!(generate().len(), 16);
        assert!(is_sane("req-42_a.b"));
        assert!(!is_sane(""));
        assert!(!is_sane("has space"));
        assert!(!is_sane(&"x".repeat(65)));
    }
}
