//! The `deeprecall` binary as a user runs it: installed away from the source tree, its logs
//! written to files and pipes.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// Runs `binary` with `args` in `dir`, bounded by a generous timeout that only catches a hang.
async fn run(binary: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(binary);
    command
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output());
    tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .expect("the command ends")
        .expect("joined")
        .expect("the command runs")
}

#[tokio::test]
async fn the_demo_runs_from_a_binary_moved_away_from_the_source_tree() {
    let installed = tempfile::tempdir().expect("temporary directory");
    let binary = installed.path().join("deeprecall");
    std::fs::copy(env!("CARGO_BIN_EXE_deeprecall"), &binary).expect("binary copied");
    let output = run(
        &binary,
        installed.path(),
        &["demo", "--questions", "2"],
        &[],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("of the handbook built into the binary"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 of 2 answers contain the expected fact"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(env!("CARGO_MANIFEST_DIR")),
        "nothing is read from the source tree: {stdout}"
    );
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the server starts");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut logged = Vec::new();
    // Up to the line saying the store is open: several lines, with their levels and fields.
    while !logged
        .iter()
        .any(|line: &String| line.contains("serving queries"))
    {
        match received.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => logged.push(line),
            Err(error) => {
                let _ = child.kill();
                panic!("the server stopped logging ({error}): {logged:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        logged.iter().all(|line| !line.contains('\u{1b}')),
        "ANSI escape codes in a pipe: {logged:?}"
    );
    assert!(
        logged.iter().any(|line| line.contains("INFO")),
        "{logged:?}"
    );
}

/// The binary serving with `args`, its JSON log lines collected as they come.
struct LoggingServer {
    child: std::process::Child,
    endpoint: String,
    lines: std::sync::Arc<parking_lot::Mutex<Vec<serde_json::Value>>>,
}

impl LoggingServer {
    fn start(data_dir: &Path, args: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (address_sender, address) = std::sync::mpsc::channel();
        let collected = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(address) = entry["fields"]["address"].as_str() {
                    let _ = address_sender.send(address.to_string());
                }
                collected.lock().push(entry);
            }
        });
        let address = address
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs its address");
        LoggingServer {
            child,
            endpoint: format!("http://{address}"),
            lines,
        }
    }

    fn warnings_from(&self, target: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .iter()
            .filter(|entry| entry["level"] == "WARN" && entry["target"] == target)
            .cloned()
            .collect()
    }
}

impl Drop for LoggingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_redis_cache_that_is_down_logs_one_line_and_counts_failed_lookups_as_misses() {
    use deeprecall::api::pb;

    let data_dir = tempfile::tempdir().expect("temporary directory");
    // Nothing listens on port 1 (a privileged port no test binds).
    let nowhere = "redis://127.0.0.1:1";
    let server = LoggingServer::start(
        data_dir.path(),
        &["--cache", "redis", "--redis-url", nowhere],
    );
    crate::common::wait_until_serving(&server.endpoint).await;
    let mut client = deeprecall::api::DeepRecallClient::connect(server.endpoint.clone())
        .await
        .expect("client connects");
    crate::common::add(
        &mut client,
        "",
        vec![crate::common::document(
            "k",
            "Kestrel Fabrication is headquartered in Tampere.",
            serde_json::json!({}),
        )],
    )
    .await;
    for n in 0..5 {
        let request = crate::common::question(&format!("Where is Kestrel, take {n}?"));
        let result = crate::common::query_result(&mut client, request).await;
        assert!(!result.cached);
    }
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let results = stats.cache.expect("result cache");
    assert_eq!(
        (results.hits, results.misses),
        (0, 5),
        "failed lookups are misses"
    );
    assert!(results.health.expect("health").failures >= 5);
    let searches = stats.search_cache.expect("search cache");
    assert!(searches.misses >= 5, "{searches:?}");

    // One line for every failure of both levels, lookups and stores alike.
    let warnings = server.warnings_from("deeprecall::cache");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
}
