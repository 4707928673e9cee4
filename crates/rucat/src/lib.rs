//! Rucat: a gateway that creates, connects to and manages Spark Connect engines.
//!
//! The folders follow the architecture: [`engine`] (what an engine is, its state machine and
//! configuration policy), [`store`] (engine records), [`platform`] (where engines run),
//! [`monitor`] (the reconciler), [`server`] (the REST API) and [`app`] (wiring). The
//! client of the REST API is the `rucat-client` crate.
//!
//! The `testing` feature adds test support for this crate's tests and the benchmarks: the store
//! conformance suite (`store::conformance`), an in-memory platform (`platform::memory`) and
//! scratch PostgreSQL databases (`store::postgres::ScratchDatabase`).

pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod monitor;
pub mod platform;
pub mod proxy;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod spark_connect;
pub mod store;
pub mod text;
