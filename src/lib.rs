//! The DockerCoins gRPC API, generated at build time from `proto/`.
//!
//! Services and tests import the messages, clients and servers from here, so the wire contract
//! lives in one place. [`FILE_DESCRIPTOR_SET`] feeds server reflection, which is how `grpcurl`
//! works against rng and hasher with no `.proto` file at hand.

pub mod codec;

/// `dockercoins.rng.v1`: random bytes.
pub mod rng {
    pub mod v1 {
        tonic::include_proto!("dockercoins.rng.v1");
    }
}

/// `dockercoins.hasher.v1`: SHA-256 digests.
pub mod hasher {
    pub mod v1 {
        tonic::include_proto!("dockercoins.hasher.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dockercoins.bin"));
