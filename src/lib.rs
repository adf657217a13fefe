//! switchboard: classify prompts with a local sentence encoder and route them to LLM backends.
//!
//! A request flows one way: a transport (`grpc`, `http`) translates it and calls the `gateway`
//! (caller check, backend health, errors metric) → `engine` (validate → `embed` → `classify` →
//! `policy` ranks) → optionally `proxy` (call `backends` with failover, stream back). `server`
//! builds all of it from `config` once. The live classifier and its swaps are in `live`; the
//! decision and feedback logs in `records`; training and retraining in `train`.
pub mod assets;
pub mod auth;
pub mod backends;
pub mod classify;
pub mod config;
pub mod convert;
pub mod dataset;
pub mod embed;
pub mod engine;
pub mod error;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod quota;
pub mod records;
pub mod reload;
pub mod savings;
pub mod server;
pub mod telemetry;
pub mod train;
