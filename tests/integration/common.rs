//! The test harness: a real server on 127.0.0.1:0 with its own data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deeprecall::api::{DeepRecallClient, pb};
use deeprecall::config::Config;
use deeprecall::server::{self, ServerError};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server and a client connected to it.
pub struct TestServer {
    pub endpoint: String,
    pub client: DeepRecallClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
    data_dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with default settings on a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with adjusted settings on a fresh data directory.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let path = data_dir.path().to_path_buf();
        let mut server = Self::start_in(&path, configure).await;
        server.data_dir = Some(data_dir);
        server
    }

    /// Starts a server on an existing data directory, which the caller keeps.
    pub async fn start_in(data_path: &Path, configure: impl FnOnce(&mut Config)) -> Self {
        match Self::try_start_in(data_path, configure).await {
            Ok(server) => server,
            Err(error) => panic!("the server did not start: {error}"),
        }
    }

    /// Starts a server with a Prometheus endpoint on a port of its own and returns the port.
    /// The port is free when picked but not held: should another process take it first, the
    /// server cannot listen there, and another port is tried.
    pub async fn start_with_metrics(configure: impl Fn(&mut Config)) -> (Self, u16) {
        for _ in 0..10 {
            let port = free_port();
            let data_dir = tempfile::tempdir().expect("temporary directory");
            let started = Self::try_start_in(data_dir.path(), |config| {
                configure(config);
                config.telemetry.metrics_listen = format!("127.0.0.1:{port}");
            })
            .await;
            match started {
                Ok(mut server) => {
                    server.data_dir = Some(data_dir);
                    return (server, port);
                }
                Err(error) if error.to_string().contains("metrics_listen") => continue,
                Err(error) => panic!("the server did not start: {error}"),
            }
        }
        panic!("the metrics endpoint could not listen on any of 10 free ports");
    }

    /// Starts a server on `data_path`; returns the error of a server that stopped before it
    /// was serving.
    async fn try_start_in(
        data_path: &Path,
        configure: impl FnOnce(&mut Config),
    ) -> Result<Self, ServerError> {
        let mut config = Config::default();
        config.store.data_dir = data_path.to_path_buf();
        config.server.shutdown_grace_seconds = 2.0;
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let mut handle = tokio::spawn(server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        tokio::select! {
            () = wait_until_serving(&endpoint) => {}
            ended = &mut handle => {
                ended.expect("serve task does not panic")?;
                panic!("serve returned before it was serving");
            }
        }
        let client = DeepRecallClient::connect(endpoint.clone())
            .await
            .expect("client connects");
        Ok(TestServer {
            endpoint,
            client,
            stop: Some(stop),
            handle: Some(handle),
            data_dir: None,
        })
    }

    /// Sends the shutdown signal and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), handle)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task does not panic")
    }

    /// Stops the server but keeps its data directory for a restart.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        let data_dir = self.data_dir.take().expect("own data directory");
        self.stop().await.expect("clean stop");
        data_dir
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Waits, without polling, until health reports the service SERVING.
pub async fn wait_until_serving(endpoint: &str) {
    deeprecall::cli::wait_until_serving(endpoint, Duration::from_secs(20))
        .await
        .expect("server becomes ready");
}

/// Converts a JSON object to a protobuf Struct.
pub fn structure(value: Value) -> prost_types::Struct {
    deeprecall::api::convert::json_to_struct(value.as_object().cloned().expect("object"))
}

/// Builds a document.
pub fn document(id: &str, content: &str, metadata: Value) -> pb::Document {
    pb::Document {
        id: id.to_string(),
        content: content.to_string(),
        metadata: Some(structure(metadata)),
    }
}

/// Adds documents to a collection and returns the response.
pub async fn add(
    client: &mut DeepRecallClient<Channel>,
    collection: &str,
    documents: Vec<pb::Document>,
) -> pb::AddDocumentsResponse {
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: collection.to_string(),
            documents,
        })
        .await
        .expect("documents added")
        .into_inner()
}

/// Builds a query request.
pub fn question(query: &str) -> pb::QueryRequest {
    pb::QueryRequest {
        query: query.to_string(),
        ..pb::QueryRequest::default()
    }
}

/// Runs a query and returns every event; the stream must end cleanly.
pub async fn query_events(
    client: &mut DeepRecallClient<Channel>,
    request: pb::QueryRequest,
) -> Vec<pb::QueryEvent> {
    let stream = client
        .query(request)
        .await
        .expect("query accepted")
        .into_inner();
    events_of(stream).await
}

/// Reads a Query stream to its end and returns every event; it must end cleanly.
pub async fn events_of(mut stream: tonic::Streaming<pb::QueryEvent>) -> Vec<pb::QueryEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("stream ends cleanly") {
        events.push(event);
    }
    events
}

/// Runs a query and returns its result.
pub async fn query_result(
    client: &mut DeepRecallClient<Channel>,
    request: pb::QueryRequest,
) -> pb::QueryResult {
    result_among(&query_events(client, request).await)
}

/// Reads a Query stream to its end and returns its result.
pub async fn stream_result(stream: tonic::Streaming<pb::QueryEvent>) -> pb::QueryResult {
    result_among(&events_of(stream).await)
}

/// The result that ends a stream's events.
fn result_among(events: &[pb::QueryEvent]) -> pb::QueryResult {
    match events.last().and_then(|event| event.event.clone()) {
        Some(pb::query_event::Event::Result(result)) => result,
        other => panic!("the stream did not end with a result: {other:?}"),
    }
}

/// Returns the folder of the bundled sample corpus.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Ingests the bundled handbook into the default collection.
pub async fn ingest_handbook(client: &mut DeepRecallClient<Channel>) -> usize {
    let summary = deeprecall::cli::ingest::ingest_paths(
        client,
        &[examples().join("handbook")],
        "",
        1200,
        256,
        false,
    )
    .await
    .expect("handbook ingested");
    summary.chunks
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING. `.ci/run` installs
    /// it. The port is free when picked but not held: should another process take it first,
    /// redis-server exits and another port is tried.
    pub fn start() -> Self {
        for _ in 0..10 {
            if let Some(server) = Self::try_start_on(free_port()) {
                return server;
            }
        }
        panic!("redis-server could not listen on any of 10 free ports");
    }

    /// Starts redis-server on `port`; `None` when it exits before answering, as it does when
    /// the port is taken.
    fn try_start_on(port: u16) -> Option<Self> {
        use std::io::{Read, Write};
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server; .ci/run does it)");
        // An external process gives no readiness signal but its port: ask until it answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            let answered =
                std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                    stream.write_all(b"PING\r\n")?;
                    let mut reply = [0u8; 7];
                    stream.read_exact(&mut reply)?;
                    Ok(&reply == b"+PONG\r\n")
                });
            if matches!(answered, Ok(true)) {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer {
            child: Some(child),
            url: format!("redis://127.0.0.1:{port}"),
        })
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the real binary with extra `serve` flags and returns it with the address it listens
/// on, read from its JSON log.
pub fn spawn_binary(data_dir: &Path, extra_args: &[&str]) -> (std::process::Child, String) {
    spawn_binary_with_env(data_dir, extra_args, &[])
}

/// Like [`spawn_binary`], with extra environment variables.
pub fn spawn_binary_with_env(
    data_dir: &Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    let (child, endpoint, _log) = spawn_binary_logging(data_dir, extra_args, env);
    (child, endpoint)
}

/// The JSON log lines of a spawned binary, as it writes them.
pub struct LogLines(tokio::sync::mpsc::UnboundedReceiver<String>);

impl LogLines {
    /// Waits for the next line containing `needle` and returns it. A generous bound only
    /// catches a line that never comes.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = self.0.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the log ended without a line containing {needle:?}"),
            Err(_) => panic!("no log line containing {needle:?} came"),
        }
    }
}

/// Like [`spawn_binary_with_env`], also handing over the log lines written after the address.
pub fn spawn_binary_logging(
    data_dir: &Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String, LogLines) {
    let binary = std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"));
    spawn_serving_command(binary, data_dir, extra_args, env)
}

/// Runs `command` (the binary, or a wrapper whose last argument is the binary) with `serve` on
/// an ephemeral port over `data_dir`, then `extra_args`, and returns it once it logged its
/// address, with its endpoint and the log lines that follow.
pub fn spawn_serving_command(
    mut command: std::process::Command,
    data_dir: &Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String, LogLines) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra_args)
        .envs(env.iter().copied())
        .env("DEEPRECALL_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the server process starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the server logs its address before exiting")
            .expect("readable log");
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(address) = entry["fields"]["address"].as_str() {
            break address.to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe, whether or not anyone
    // still reads the lines.
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    (child, format!("http://{address}"), LogLines(receiver))
}

/// A child process killed and reaped when dropped, so that a failing test leaves no server
/// behind.
pub struct KilledOnDrop(pub std::process::Child);

impl std::ops::Deref for KilledOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGHUP to `child`.
pub fn hang_up(child: &std::process::Child) {
    let signalled = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
}

/// A port free now but not held, for a listener configured by number: whoever uses it must
/// try another when it turns out to be taken.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The value of `series` (name and labels, exactly) in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Scrapes the metrics endpoint on `port`.
pub async fn scrape_metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}
