//! Integration tests: the real server on an ephemeral port, spoken to over gRPC. One test
//! binary with modules keeps link time low.

#![expect(
    clippy::expect_used,
    reason = "a failed step should fail the test at once, with its message"
)]

mod common;

mod access;
mod cache;
mod clients;
mod deadlines;
mod deploy_checks;
mod documents;
mod errors;
mod eval;
mod http;
mod lifecycle;
mod models;
mod query;
mod telemetry;
