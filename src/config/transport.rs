//! `[transport]`: what a connection may cost the server before it has sent a whole request.
//! A client that opens connections and never finishes its headers (slowloris), trickles a
//! body, or holds thousands of idle sockets must run into a limit, not into our memory.
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// HTTP/1: a request's headers must arrive within this long of the connection becoming
    /// ready for one (a fresh connection, or an idle keep-alive one).
    pub http_header_read_timeout_ms: u64,
    /// HTTP: a request body must be read in full within this long.
    pub http_body_read_timeout_ms: u64,
    /// HTTP: connections served at once; past it, new ones wait in the listen backlog.
    pub http_max_connections: usize,
    /// HTTP/1 keep-alive (connection reuse).
    pub http_keep_alive: bool,
    /// gRPC: concurrent streams one HTTP/2 connection may open.
    pub grpc_max_concurrent_streams: u32,
    /// gRPC: HTTP/2 PING interval on idle connections, and how long to wait for the answer
    /// before closing the connection (a peer that vanished without a FIN).
    pub grpc_keepalive_interval_ms: u64,
    pub grpc_keepalive_timeout_ms: u64,
    /// gRPC: deadline for a call whose client sent none (a shorter `grpc-timeout` wins).
    /// Bounds the time to the response's headers; a `Complete` stream is bounded by the
    /// backend's timeouts instead. The Admin service is exempt (a retrain takes minutes).
    pub grpc_default_timeout_ms: u64,
    /// gRPC: a connection is told to go away after this age (so clients rebalance across
    /// replicas), and calls on it get this grace to finish.
    pub grpc_max_connection_age_ms: u64,
    pub grpc_max_connection_age_grace_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            http_header_read_timeout_ms: 10_000,
            http_body_read_timeout_ms: 30_000,
            http_max_connections: 4_096,
            http_keep_alive: true,
            grpc_max_concurrent_streams: 1_024,
            grpc_keepalive_interval_ms: 30_000,
            grpc_keepalive_timeout_ms: 10_000,
            grpc_default_timeout_ms: 30_000,
            grpc_max_connection_age_ms: 1_800_000,
            grpc_max_connection_age_grace_ms: 30_000,
        }
    }
}

/// Milliseconds as a `Duration` (the fields are range-checked at load).
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}
