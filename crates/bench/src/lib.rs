//! The DockerCoins benchmark: one command that measures the stack flat out.
//!
//! `scripts/bench` builds the release binaries and runs [`run::run`]: redis-server and the four
//! services on loopback with every delay `0s` and no request queue, then the turbo pipeline's
//! hashes/s in Redis for a sweep of worker concurrency, the HTTP shims and `/json` under wrk, the
//! gRPC unary calls under this crate's own load generator ([`grpc_load`], tonic with an HDR
//! histogram), memory, sizes and SIGTERM times. Beside rng it loads the floor, [`bare`] tonic and
//! axum servers answering the same calls, with [`h2load`] and [`wrk`], so that the ratio between
//! the two says what the mesh's layers cost. [`report`] writes the results as JSON and
//! markdown. The load generator also runs alone (`bench grpc`), which is handy under a profiler.
//! [`compare`] puts the runs of two builds side by side (`scripts/bench-compare`).
//! [`soak`] keeps one turbo worker going for minutes and watches Redis's memory and the rate.

pub mod bare;
pub mod compare;
pub mod grpc_load;
pub mod h2load;
pub mod machine;
pub mod process;
pub mod report;
pub mod run;
pub mod soak;
pub mod turbo;
pub mod wrk;
