//! Generated gRPC types for `switchboard.v1`.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod v1 {
    tonic::include_proto!("switchboard.v1");
}

/// Encoded file descriptor set, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("switchboard_descriptor");
