//! Builds the application: opens the store, binds the listener, wires the routes.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::config::Settings;
use crate::http::{self, AppState};
use crate::store::Store;

pub struct Application {
    port: u16,
    server: Server,
    store: Store,
}

impl Application {
    /// Opens the store and binds `server.bind` (port 0 picks a free port, as tests do).
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::open(&settings.store)?;
        let listener = TcpListener::bind(&settings.server.bind)?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            settings: Arc::new(settings),
            store: store.clone(),
        });
        let workers = match state.settings.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(http::routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        .shutdown_timeout(30)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            store,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT or a stop through [`Application::handle`], lets in-flight
    /// requests finish, then flushes and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.store.close();
        result
    }
}
