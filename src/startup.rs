//! Builds the application: opens the store, binds the listener, wires the routes.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::config::{ConfigError, Settings};
use crate::dispatch::Dispatcher;
use crate::http::{self, AppState};
use crate::rules::Rules;
use crate::store::{Healer, Janitor, Store};

pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    dispatcher: Dispatcher,
    janitor: Janitor,
    /// The embedded engines only (sled, fjall).
    healer: Option<Healer>,
}

/// What a configuration must pass besides its per-key checks (done when it is loaded): its
/// rules, compiled here and nowhere else. `serve` (through [`Application::build`]) and
/// `check-config` both call it; each error names the rule and the key.
pub fn check(settings: &Settings) -> Result<Arc<Rules>, ConfigError> {
    Rules::compile(settings)
        .map(Arc::new)
        .map_err(|errors| ConfigError::Invalid(errors.iter().map(|e| e.to_string()).collect()))
}

impl Application {
    /// [`check`]s the settings, then [`Application::start`]s.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let rules = check(&settings)?;
        Self::start(settings, rules).await
    }

    /// Opens the store, starts the dispatcher and binds `server.bind` (port 0 picks a free
    /// port, as tests do), with rules [`check`] compiled.
    pub async fn start(mut settings: Settings, rules: Arc<Rules>) -> anyhow::Result<Self> {
        if settings.store.postgres.instance_id.is_empty() {
            settings.store.postgres.instance_id = instance_id(&settings.server.bind);
        }
        // Before anything records a metric.
        crate::observe::handle();
        crate::domain::recipient::warm_up();
        for warning in rules.warnings() {
            tracing::warn!("{warning}");
        }
        let store = Store::open(&settings.store, Arc::clone(&rules)).await?;
        let listener = TcpListener::bind(&settings.server.bind)?;
        let port = listener.local_addr()?.port();
        let dispatcher = Dispatcher::start(store.clone(), &settings, rules)?;
        let janitor = Janitor::start(store.clone(), &settings.store)?;
        // Reopening in place is for the embedded engines' files; a database reconnects by itself.
        let healer = match store.is_shared() {
            false => Some(Healer::start(store.clone(), &settings.store)?),
            true => None,
        };
        let state = web::Data::new(AppState {
            settings: Arc::new(settings),
            store: store.clone(),
            dispatcher: dispatcher.health(),
        });
        let workers = match state.settings.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let max_connections = match state.settings.server.max_connections {
            0 => crate::fd_limit::connection_cap(
                crate::fd_limit::current().map_or(u64::MAX, |(soft, _)| soft),
            ),
            n => n,
        };
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(http::request_id::middleware))
                .app_data(state.clone())
                .configure(http::routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        // actix counts per worker.
        .max_connections(max_connections.div_ceil(workers).max(1))
        .shutdown_timeout(30)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            store,
            dispatcher,
            janitor,
            healer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT or a stop through [`Application::handle`]: lets in-flight
    /// requests finish, then calls in flight (bounded by `dispatch.shutdown_grace_seconds`),
    /// then flushes and closes the store. `Err` when serving failed or the final flush did.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let Self {
            store,
            dispatcher,
            janitor,
            healer,
            ..
        } = self;
        // Joining threads blocks; keep it off this runtime's thread.
        let stopped = tokio::task::spawn_blocking(move || {
            if let Some(healer) = healer {
                healer.stop();
            }
            janitor.stop();
            dispatcher.stop();
        })
        .await;
        if stopped.is_err() {
            return Err(std::io::Error::other(
                "stopping the background work panicked",
            ));
        }
        match store.close().await {
            Ok(()) => result,
            Err(error) => Err(std::io::Error::other(format!(
                "the final flush failed: {error}; writes not yet acknowledged may be lost"
            ))),
        }
    }
}

/// This instance's id for its Postgres leases (`store.postgres.instance_id` unset): the host
/// name and the bind address, the same at every restart of one deployment; with port 0 (a
/// new port each start) a fresh one, as nothing could be taken back anyway.
fn instance_id(bind: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "flowhook".to_owned()
    } else {
        host
    };
    if bind.ends_with(":0") {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        return format!("{host}/{bind}/{}-{nanos}", std::process::id());
    }
    format!("{host}/{bind}")
}
