//! The in-process integration tests, in one test binary (one link instead of one each): the
//! REST API, authentication and authorization, the monitor against the in-memory platform, and
//! both stores against the store conformance suite.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod auth;
mod hooked_store;
mod monitor;
mod pools;
mod store_postgres;
mod store_sqlite;
