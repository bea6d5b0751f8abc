//! One integration-test binary: every area of the public contract, against the real app.

mod actions;
mod bik;
mod browser;
mod cli;
mod cost;
mod crash;
mod damage;
mod disk_full;
mod durability;
mod fidelity;
mod generic;
mod helpers;
mod hostile;
mod logs;
mod loss;
mod messages;
mod meta;
mod openapi;
mod opt_outs;
mod postgres;
mod process;
mod replies;
mod retention;
mod stalled;
mod stats;
mod upgrade;
