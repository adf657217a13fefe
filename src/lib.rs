//! switchboard: classify prompts with a local sentence encoder and route them to LLM backends.
//! Flow: request → validate → embed (`embed`) → classify → rank → (proxy) → response.
pub mod bench;
pub mod classify;
pub mod embed;
pub mod grpc;
pub mod proto;
pub mod train;
