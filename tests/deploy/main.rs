//! Deployment and operations: the relocatable binary, catalog hot reload, the dashboard's and
//! alerts' metric names against a live server, and the savings report. Real processes, real
//! sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod observe;
mod otlp;
mod reload;
mod relocate;
mod savings;
