//! Integration tests: the real server on an ephemeral port, spoken to over gRPC. One test
//! binary with modules keeps link time low.

#![expect(
    clippy::expect_used,
    reason = "a failed step should fail the test at once, with its message"
)]

mod common;
/// The test PostgreSQL, shared with the library's own tests.
#[path = "../../src/store/postgres/testing.rs"]
mod pg_harness;

mod access;
mod binary;
mod cache;
mod clients;
mod collections;
mod crash;
mod deadlines;
mod deploy_checks;
mod documents;
mod errors;
mod eval;
mod hostile;
mod http;
mod lifecycle;
#[cfg(feature = "local-models")]
mod local_models;
mod models;
mod query;
mod readme;
mod replicas;
mod retrieval;
mod soak;
mod telemetry;
mod tls;
mod tls_harness;
mod transfer;
