use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::io::Read;

use flowhook::config::{Secret, Settings};
use flowhook::startup::Application;
use flowhook::store::Store;

/// sled allocates and frees a node copy on most writes; glibc's malloc spent about 20% of the
/// writer thread's time on that (see bench/results.md), mimalloc a fraction of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// flowhook: verified webhooks in, durable message state, follow-ups out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file [default: config.toml, if present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve {
        /// Serve an embedded store that opened with fewer acknowledged writes than it had
        /// (a damaged or truncated file), and record it as it is now. Without it such a
        /// store is refused; see README, "No silent loss".
        #[arg(long)]
        accept_loss: bool,
    },
    /// Load and validate the configuration, then exit.
    CheckConfig,
    /// Print the signature headers for the body on stdin, to send signed requests by hand.
    Sign {
        #[arg(value_enum)]
        scheme: Scheme,
        /// generic: a `whsec_...` secret; meta: the app secret.
        #[arg(long)]
        secret: String,
        /// generic: the `webhook-id` [default: msg_<random>]
        #[arg(long)]
        id: Option<String>,
        /// generic: the `webhook-timestamp` in unix seconds [default: now]
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// Write every message (state, events, actions) and quarantined event to stdout as JSON
    /// lines. With sled or fjall, stop the service first: the store allows one process at a
    /// time. A damaged store is exported as far as it can be read.
    Export,
    /// Restore an export (from either backend) from stdin into an empty store.
    Import,
    /// Create or upgrade the Postgres schema (`store.backend = "postgres"`), then exit.
    Migrate,
    /// Read every stored record and report those that cannot be read, and acknowledged writes
    /// a damaged store lost (exit 1 if any). Stop the service first.
    CheckStore,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scheme {
    /// Standard Webhooks (`POST /webhooks/generic`).
    Generic,
    /// X-Hub-Signature-256 (`POST /webhooks/meta`).
    Meta,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Sign {
        scheme,
        secret,
        id,
        timestamp,
    }) = &cli.command
    {
        return sign(*scheme, secret, id.as_deref(), *timestamp);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowhook: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve { accept_loss: false }) {
        Command::CheckConfig => check_config(&settings),
        Command::Serve { accept_loss } => {
            let mut settings = settings;
            settings.store.accept_loss |= accept_loss;
            serve(settings)
        }
        Command::Export => backup(&settings, Direction::Export),
        Command::Import => backup(&settings, Direction::Import),
        Command::CheckStore => check_store(&settings),
        Command::Migrate => migrate(&settings),
        Command::Sign { .. } => unreachable!("handled before the config is loaded"),
    }
}

fn sign(scheme: Scheme, secret: &str, id: Option<&str>, timestamp: Option<i64>) -> ExitCode {
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("flowhook: could not read the body from stdin: {e}");
        return ExitCode::from(2);
    }
    match scheme {
        Scheme::Meta => {
            println!(
                "X-Hub-Signature-256: {}",
                flowhook::providers::meta::sign(&body, secret)
            );
        }
        Scheme::Generic => {
            let key = match flowhook::config::decode_whsec(&Secret::new(secret)) {
                Ok(key) => key,
                Err(e) => {
                    eprintln!("flowhook: --secret {e}");
                    return ExitCode::from(2);
                }
            };
            let now = chrono::Utc::now();
            let id = id.map_or_else(
                || format!("msg_{:x}", now.timestamp_nanos_opt().unwrap_or_default()),
                str::to_owned,
            );
            let timestamp = timestamp.unwrap_or(now.timestamp());
            let signature = flowhook::providers::generic::sign(&key, &id, timestamp, &body);
            println!("webhook-id: {id}");
            println!("webhook-timestamp: {timestamp}");
            println!("webhook-signature: {signature}");
        }
    }
    ExitCode::SUCCESS
}

/// A runtime for the commands that use the store.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the command")
}

/// Opens the store for a command; a damaged embedded store opens too, to read what it holds.
async fn open_store(settings: &Settings) -> Option<Store> {
    match Store::open_to_inspect(&settings.store).await {
        Ok(store) => Some(store),
        Err(e) => {
            eprintln!("flowhook: {e}");
            None
        }
    }
}

fn migrate(settings: &Settings) -> ExitCode {
    flowhook::telemetry::init(&settings.log);
    if settings.store.backend != flowhook::config::StoreBackend::Postgres {
        eprintln!(
            "flowhook: store.backend is an embedded engine, which has no schema to \
             migrate (set store.backend = \"postgres\" and store.postgres.url)"
        );
        return ExitCode::from(2);
    }
    match runtime().block_on(Store::migrate(&settings.store)) {
        Ok(version) => {
            println!("the database's schema is at version {version}, this flowhook's newest");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowhook: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_store(settings: &Settings) -> ExitCode {
    flowhook::telemetry::init(&settings.log);
    let runtime = runtime();
    let Some(store) = runtime.block_on(open_store(settings)) else {
        return ExitCode::FAILURE;
    };
    let checked = runtime.block_on(store.check());
    let loss = store.loss();
    if let Err(e) = runtime.block_on(store.close()) {
        eprintln!("flowhook: {e}");
    }
    if let Some(loss) = &loss {
        println!(
            "{} acknowledged commits are missing (the engine recovered up to commit {} of {}): \
             {loss}",
            loss.missing(),
            loss.recovered,
            loss.acknowledged
        );
    }
    match checked {
        Ok(_) if loss.is_some() => ExitCode::FAILURE,
        Ok(c) if c.unreadable.is_empty() => {
            println!(
                "store is readable: {} messages, {} actions, {} quarantined events",
                c.messages, c.actions, c.rejected
            );
            ExitCode::SUCCESS
        }
        Ok(c) => {
            println!(
                "{} unreadable records (of {} messages, {} actions, {} quarantined events):",
                c.unreadable.len(),
                c.messages,
                c.actions,
                c.rejected
            );
            for (kind, key, why) in &c.unreadable {
                println!("  {kind} {key}: {why}");
            }
            println!(
                "everything else is served; `flowhook export` writes all readable records \
                 (and exits 1), to `flowhook import` into a fresh store"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("flowhook: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Direction {
    Export,
    Import,
}

fn backup(settings: &Settings, direction: Direction) -> ExitCode {
    // Logs (an unreadable record's key, say) go to stderr; the export goes to stdout.
    flowhook::telemetry::init(&settings.log);
    let runtime = runtime();
    let Some(store) = runtime.block_on(open_store(settings)) else {
        return ExitCode::FAILURE;
    };
    if let Some(loss) = store.loss() {
        eprintln!("flowhook: {loss}");
        if matches!(direction, Direction::Import) {
            return ExitCode::FAILURE;
        }
        eprintln!("flowhook: exporting what can be read");
    }
    let result = runtime.block_on(async {
        match direction {
            Direction::Export => {
                let mut out = std::io::BufWriter::new(std::io::stdout());
                store.export(&mut out).await
            }
            Direction::Import => {
                let mut input = std::io::BufReader::new(std::io::stdin());
                store.import(&mut input).await
            }
        }
    });
    if let Err(e) = runtime.block_on(store.close()) {
        eprintln!("flowhook: closing the store failed: {e}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(moved) => {
            let verb = match direction {
                Direction::Export => "exported",
                Direction::Import => "imported",
            };
            eprintln!(
                "{verb} {} messages, {} actions, {} quarantined events, {} recipients' \
                 opt-outs",
                moved.messages, moved.actions, moved.rejected, moved.recipients
            );
            if moved.skipped > 0 {
                eprintln!(
                    "flowhook: skipped {} records that cannot be read (each is named in the \
                     log above; `flowhook check-store` lists them); everything else was {verb}",
                    moved.skipped
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowhook: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(settings: &Settings) -> ExitCode {
    let rules = match flowhook::startup::check(settings) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("flowhook: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in rules.warnings() {
        eprintln!("flowhook: warning: {warning}");
    }
    if let Err(e) = settings.check_safe_to_expose() {
        eprintln!("flowhook: {e}");
        return ExitCode::from(2);
    }
    let weak = settings.placeholder_secrets();
    let store = match settings.store.backend {
        flowhook::config::StoreBackend::Sled | flowhook::config::StoreBackend::Fjall => {
            settings.store.path.display().to_string()
        }
        flowhook::config::StoreBackend::Postgres => "postgres".into(),
    };
    println!(
        "configuration is valid (bind {}, store {store})",
        settings.server.bind
    );
    if !weak.is_empty() {
        println!(
            "note: placeholder secrets, fine on loopback only: {}",
            weak.join(", ")
        );
    }
    ExitCode::SUCCESS
}

fn serve(settings: Settings) -> ExitCode {
    flowhook::telemetry::init(&settings.log);
    match flowhook::fd_limit::raise() {
        Ok(fds) => tracing::info!(
            soft_before = fds.before,
            soft = fds.now,
            hard = fds.hard,
            "open-file limit"
        ),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    if let Err(e) = settings.check_safe_to_expose() {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    let rules = match flowhook::startup::check(&settings) {
        Ok(rules) => rules,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let bind = settings.server.bind.clone();
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::start(settings, rules).await?;
        tracing::info!(%bind, port = app.port(), "flowhook listening");
        app.run_until_stopped().await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
