//! The benchmark's ceiling: a bare actix-web server that reads each POST body and answers 200,
//! with the same worker count flowhook gets. Also the follow-up target in `bench/run.sh`.
//!
//! `cargo run --release --example ceiling -- [port, default 18099] [workers, default 1]`

use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(18099);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
            .default_service(web::to(|body: web::Bytes| async move {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(format!(r#"{{"received":{}}}"#, body.len()))
            }))
    })
    .workers(workers)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
