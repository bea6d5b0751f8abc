//! One integration-test binary: every area of the public contract, against the real app.

mod bik;
mod config;
mod durability;
mod generic;
mod helpers;
mod messages;
mod meta;
