//! flowhook: a verified webhook receiver and callback router for WhatsApp/RCS messaging.
//!
//! The module list is the data flow: `http` receives, `providers` verify and parse into
//! `domain` events, `store` commits them atomically and durably, and answers queries.

pub mod background;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod fd_limit;
pub mod http;
pub mod observe;
pub mod providers;
pub mod rules;
pub mod secret;
pub mod startup;
pub mod store;
pub mod targets;
pub mod telemetry;
