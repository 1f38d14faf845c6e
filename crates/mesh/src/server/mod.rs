//! The serving side: listeners and their limits, the request queue and admission, deadlines, gRPC
//! health and reflection, the forwarder, and shutdown.

pub mod accept;
pub mod admit;
pub mod deadline;
pub mod forward;
pub mod grpc;
pub mod idle;
pub mod limits;
pub mod queue;
pub mod serve;
pub mod shutdown;
pub mod timer;
