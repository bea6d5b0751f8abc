//! Logging with `tracing`: human text for a terminal, JSON lines for production.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // sled logs an error for every write it cannot make (a full disk: thousands); the store
        // logs the change of state once instead. `log.level` can still ask for sled.
        if settings.level.contains("sled") {
            EnvFilter::new(&settings.level)
        } else {
            EnvFilter::new(format!("{},sled=off", settings.level))
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        // Each line carries its span's fields, so every line of a request has its request_id.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
