//! What a process lets you see: logs, Prometheus metrics, and traces (exported over OTLP when
//! asked).

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod trace;

pub use logs::init;
