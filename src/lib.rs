//! switchboard: classify prompts with a local sentence encoder and route them to LLM backends.
//! Flow: request → validate → embed (`embed`) → classify (`classify`) → rank (`policy`) →
//! response (`grpc`, `http`), with `engine` tying the steps together.
pub mod admin;
pub mod auth;
pub mod backends;
pub mod bench;
pub mod classify;
pub mod config;
pub mod display;
pub mod embed;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod mock;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod train;
