//! Rucat: a gateway that creates, connects to and manages Spark Connect engines.

pub mod engine;
pub mod platform;
pub mod store;
