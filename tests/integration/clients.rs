//! The generated clients against the real server. Each language's `clients/<lang>/run-tests.sh`
//! installs what it needs (through `clients/tools.sh`, cached under `target/client-tools`), then
//! runs that client's tests and example against the endpoint it is given. The server requires
//! an API key, so the clients' bearer metadata is exercised too.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

use deeprecall::access::{KeyEntry, Scope};
use deeprecall::config::Config;
use deeprecall::llm::http::Secret;

use crate::common::TestServer;

/// The key the scripts send (`DEEPRECALL_API_KEY`).
const CLIENT_KEY: &str = "client-tests-key-000001";

/// Longest a language's script may take, installs on a fresh machine included.
const SCRIPT_TIMEOUT_SECONDS: &str = "1200";

/// Requires `CLIENT_KEY`, with every scope, on every call.
fn with_client_key(config: &mut Config) {
    config.auth.keys = vec![KeyEntry {
        name: "client-tests".into(),
        key: Secret::new(CLIENT_KEY),
        sha256: None,
        scopes: vec![Scope::Admin],
        collections: None,
        requests_per_minute: None,
        burst: None,
    }];
}

/// Runs `clients/<language>/run-tests.sh <endpoint>` and fails with its output unless it passes.
async fn run_client_tests(language: &'static str, server: &TestServer) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(language)
        .join("run-tests.sh");
    let endpoint = server.endpoint.clone();
    let started = Instant::now();
    // The server runs on this test's runtime: wait for the script off that runtime.
    let output: Output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["--kill-after=10", SCRIPT_TIMEOUT_SECONDS, "bash"])
            .arg(&script)
            .arg(&endpoint)
            .env("DEEPRECALL_API_KEY", CLIENT_KEY)
            .output()
    })
    .await
    .expect("the script's runner does not panic")
    .expect("bash and timeout (coreutils) run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {language} client tests failed ({}; 124 means they timed out after \
         {SCRIPT_TIMEOUT_SECONDS} s)\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
    );
    println!(
        "{language} client tests passed in {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn python_client_adds_queries_batches_and_raises_status_codes() {
    let server = TestServer::start_with(with_client_key).await;
    run_client_tests("python", &server).await;
}

#[tokio::test]
async fn typescript_client_works_over_grpc_and_grpc_web() {
    let server = TestServer::start_with(|config| {
        with_client_key(config);
        config.server.grpc_web = true;
    })
    .await;
    run_client_tests("typescript", &server).await;
}

#[tokio::test]
async fn go_example_runs_against_the_server() {
    let server = TestServer::start_with(with_client_key).await;
    run_client_tests("go", &server).await;
}
