//! The calling side: which replicas stand behind a name, and how calls are spread over them.

pub mod balance;
pub mod discovery;
pub mod outlier;
