//! The DockerCoins gRPC API, generated at build time from `proto/`.
//!
//! Services and tests import the messages, clients and servers from here, so the wire contract
//! lives in one place. Each API's `FILE_DESCRIPTOR_SET` is what its server hands to reflection,
//! which is how `grpcurl` works against rng and hasher with no `.proto` file at hand; each holds
//! only its own API, so a server describes nothing it does not serve.

pub mod codec;

/// `dockercoins.rng.v1`: random bytes.
pub mod rng {
    pub mod v1 {
        tonic::include_proto!("dockercoins.rng.v1");

        /// Encoded `FileDescriptorSet` of this API, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/dockercoins.rng.v1.bin"));
    }
}

/// `dockercoins.hasher.v1`: SHA-256 digests.
pub mod hasher {
    pub mod v1 {
        tonic::include_proto!("dockercoins.hasher.v1");

        /// Encoded `FileDescriptorSet` of this API, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/dockercoins.hasher.v1.bin"));
    }
}
