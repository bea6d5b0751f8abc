//! `/ui`: the dashboard, three static files compiled into the binary. It talks to the status
//! API with the token the user enters, so the page itself needs no token.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::guarded;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/ui").route(web::get().to(page)))
        .service(guarded("/ui/app.js").route(web::get().to(script)))
        .service(guarded("/ui/app.css").route(web::get().to(style)));
}

/// The dashboard: campaign funnels, recent messages, search, dead letters.
#[utoipa::path(get, path = "/ui", tag = "dashboard",
    responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
pub(super) async fn page() -> HttpResponse {
    asset(INDEX, "text/html; charset=utf-8")
}

/// The dashboard's script.
#[utoipa::path(get, path = "/ui/app.js", tag = "dashboard",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
pub(super) async fn script() -> HttpResponse {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/ui/app.css", tag = "dashboard",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
pub(super) async fn style() -> HttpResponse {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}
