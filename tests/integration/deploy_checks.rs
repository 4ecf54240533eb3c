//! The checks deployments run with the binary: `deeprecall health` against real servers, and
//! `deeprecall serve --check-config`.

use std::path::PathBuf;
use std::process::{Command, Output};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::common::*;

/// Runs the binary with `args` and no inherited environment, off the test's runtime (the
/// server under test runs on it).
async fn deeprecall(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_deeprecall"))
            .args(&args)
            .env_clear()
            .output()
            .expect("the binary starts")
    })
    .await
    .expect("the runner does not panic")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| arg.to_string()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn health_exits_zero_only_for_a_service_that_is_serving() {
    let server = TestServer::start().await;
    let endpoint = server.endpoint.as_str();

    let default = deeprecall(args(&["health", "--server", endpoint])).await;
    assert!(default.status.success(), "{}", text(&default.stderr));
    assert_eq!(
        text(&default.stdout).trim(),
        "deeprecall.v1.DeepRecall: SERVING"
    );

    let whole = deeprecall(args(&["health", "--server", endpoint, "--service", ""])).await;
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    assert_eq!(text(&whole.stdout).trim(), "server: SERVING");

    let unknown = deeprecall(args(&[
        "health",
        "--server",
        endpoint,
        "--service",
        "no.Such",
    ]))
    .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("no.Such: SERVICE_UNKNOWN"),
        "{}",
        text(&unknown.stderr)
    );
}

#[tokio::test]
async fn health_fails_for_a_service_that_is_not_serving() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(deeprecall::server::SERVICE_NAME, ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    let output = deeprecall(args(&["health", "--server", &endpoint])).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("deeprecall.v1.DeepRecall: NOT_SERVING"),
        "{}",
        text(&output.stderr)
    );

    let _ = stop.send(());
    serving
        .await
        .expect("the health server does not panic")
        .expect("the health server stops cleanly");
}

#[tokio::test]
async fn health_fails_with_a_reason_when_nothing_answers() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let refused = deeprecall(args(&["health", "--server", &closed])).await;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("cannot connect"),
        "{}",
        text(&refused.stderr)
    );

    // A listener that accepts connections and never speaks: the timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_endpoint = format!("http://{}", silent.local_addr().expect("address"));
    let hung = deeprecall(args(&[
        "health",
        "--server",
        &silent_endpoint,
        "--timeout",
        "0.5",
    ]))
    .await;
    assert!(!hung.status.success());
    assert!(
        text(&hung.stderr).contains("no health answer within 0.5 s"),
        "{}",
        text(&hung.stderr)
    );

    let zero = deeprecall(args(&["health", "--timeout", "0"])).await;
    assert!(!zero.status.success());
    assert!(
        text(&zero.stderr).contains("--timeout"),
        "{}",
        text(&zero.stderr)
    );
}

#[tokio::test]
async fn check_config_reports_the_settings_without_listening_or_opening_the_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // The configured port is taken: a server would fail to start, the check must not care.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("address").to_string();
    let data_dir = dir.path().join("never-created");
    let config = dir.path().join("deeprecall.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nshutdown_grace_seconds = 12.5\n\
             [store]\ndata_dir = \"{}\"\n[telemetry]\nmetrics_listen = \"0.0.0.0:9464\"\n",
            data_dir.display()
        ),
    )
    .expect("write the config");
    let config = config.display().to_string();

    let output = deeprecall(args(&["serve", "--check-config", "--config", &config])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for line in [
        "configuration is valid".to_string(),
        format!("listen: {listen}"),
        "metrics_listen: 0.0.0.0:9464".to_string(),
        "shutdown_grace_seconds: 12.5".to_string(),
    ] {
        assert!(
            stdout.lines().any(|printed| printed == line),
            "{line:?} in {stdout}"
        );
    }
    assert!(!data_dir.exists(), "the check opened the store");

    // Flags take part as they would when serving.
    let flagged = deeprecall(args(&[
        "serve",
        "--check-config",
        "--config",
        &config,
        "--shutdown-grace-seconds=-1",
    ]))
    .await;
    assert!(!flagged.status.success());
    assert!(
        text(&flagged.stderr).contains("server.shutdown_grace_seconds"),
        "{}",
        text(&flagged.stderr)
    );
}

#[tokio::test]
async fn check_config_names_the_setting_it_refuses() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (toml, named) in [
        ("[engine]\nmax_topk = 3\n", "max_topk"),
        (
            "[telemetry]\nmetrics_listen = \"0.0.0.0\"\n",
            "telemetry.metrics_listen",
        ),
        (
            "[limits]\nfallback_replicas = 0\n",
            "limits.fallback_replicas",
        ),
        (
            "[engine]\nmax_search_calls = 0\n",
            "engine.max_search_calls",
        ),
        (
            "[store]\nbackend = \"postgres\"\npool_size = 2\nvector_index_workers = 2\n",
            "store.vector_index_workers",
        ),
        ("[store]\nrrf_k = -1\n", "store.rrf_k"),
        ("[store]\nhnsw_ef_search = 0\n", "store.hnsw_ef_search"),
        ("[store]\nhnsw_ef_search = 1001\n", "store.hnsw_ef_search"),
    ] {
        let config = dir.path().join("deeprecall.toml");
        std::fs::write(&config, toml).expect("write the config");
        let output = deeprecall(args(&[
            "serve",
            "--check-config",
            "--config",
            &config.display().to_string(),
        ]))
        .await;
        assert!(!output.status.success(), "{toml} accepted");
        assert!(
            text(&output.stderr).contains(named),
            "{named} in {}",
            text(&output.stderr)
        );
        assert!(text(&output.stdout).is_empty(), "{}", text(&output.stdout));
    }
}

#[tokio::test]
async fn the_kubernetes_config_is_one_the_server_accepts() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/base/deeprecall.toml")
        .display()
        .to_string();
    let output = deeprecall(args(&["serve", "--check-config", "--config", &config])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("listen: 0.0.0.0:50051"),
        "{}",
        text(&output.stdout)
    );
}
