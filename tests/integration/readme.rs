//! The README's command blocks, run as written against servers the test starts, so that the
//! docs and the binary cannot drift apart.
//!
//! Every `sh` block runs, line by line, except those that need a service or a tool no package
//! registry of the project provides (each named in [`skipped_because`]). The runner stands in
//! for the reader's machine in four ways only: `deeprecall` is the binary under test (the
//! README's `cargo build` and `alias` lines are what a reader does to get it), `cargo run
//! --release --` runs that binary too, a server started in the background listens on a free
//! port that the client commands then use (`DEEPRECALL_SERVER`), and `localhost:50051` in the
//! `buf curl` lines is the address of a server started with the README's own key file and
//! gRPC-Web on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use deeprecall::config::{Config, ConfigSources};

use crate::common::*;

/// A fenced block of the README.
struct Block {
    language: String,
    text: String,
    /// Line of the opening fence, for messages.
    line: usize,
}

fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (number, line) in readme.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(language)) => {
                open = Some(Block {
                    language: language.trim().to_string(),
                    text: String::new(),
                    line: number + 1,
                });
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Why a block is not run here, or `None` to run it.
fn skipped_because(text: &str) -> Option<&'static str> {
    if text.contains("grpcurl") {
        Some("grpcurl is in none of the package registries the project builds from")
    } else if text.contains("docker ") {
        Some("needs Docker and a Jaeger image")
    } else if text.contains("redis://") {
        Some("needs a Redis server")
    } else if text.contains("http://replica:") {
        Some("moves a collection to another deployment's server")
    } else if text.contains("--backend openai") || text.contains("--backend anthropic") {
        Some("needs a model provider and its key")
    } else if text.contains("--embedder openai") {
        Some("needs an embeddings provider; tests/integration/retrieval.rs runs these flags")
    } else if text.contains("--tls-") {
        Some("needs certificates from the reader's CA; tests/integration/tls.rs runs these flags")
    } else if text.lines().any(|line| line.trim() == "cargo test") {
        Some("is the test suite itself")
    } else {
        None
    }
}

/// The block's commands, continuation lines joined.
fn commands(text: &str) -> Vec<String> {
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs commands the way a reader's shell would, one after another, keeping what they export.
struct Shell {
    dir: PathBuf,
    env: BTreeMap<String, String>,
    buf: Option<PathBuf>,
    /// The address of the keyed gRPC-Web server, standing for `localhost:50051`.
    keyed_address: String,
    background: Vec<std::process::Child>,
}

impl Shell {
    fn command(&self, line: &str) -> Command {
        let prelude = r#"deeprecall() { "$DEEPRECALL_TEST_BIN" "$@"; }; buf() { "$DEEPRECALL_TEST_BUF" "$@"; }"#;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!("set -euo pipefail; {prelude}; {line}"))
            .current_dir(&self.dir)
            .envs(&self.env)
            .env("DEEPRECALL_TEST_BIN", env!("CARGO_BIN_EXE_deeprecall"))
            .env(
                "DEEPRECALL_TEST_BUF",
                self.buf.clone().unwrap_or_else(|| PathBuf::from("buf")),
            )
            .stdin(Stdio::null());
        command
    }

    /// Runs one README line; returns its output, or `None` for a line the runner stands in for.
    async fn run(&mut self, line: &str) -> Option<Output> {
        if line.starts_with("cargo build") || line.starts_with("alias deeprecall=") {
            return None;
        }
        let line = line
            .replace("cargo run --release --", "deeprecall")
            .replace("localhost:50051", &self.keyed_address);
        let code = line.split(" # ").next().unwrap_or_default().trim();
        if let Some(assignment) = code.strip_prefix("export ") {
            let name = assignment.split('=').next().unwrap_or_default().to_string();
            let mut command = self.command(&format!("{code}; printf %s \"${name}\""));
            let output = output_of(&mut command).await;
            assert!(output.status.success(), "{line}: {output:?}");
            self.env
                .insert(name, String::from_utf8_lossy(&output.stdout).into_owned());
            return None;
        }
        if let Some(server) = code.strip_suffix('&') {
            self.serve_in_background(server).await;
            return None;
        }
        let output = output_of(&mut self.command(code)).await;
        assert!(
            output.status.success(),
            "README line failed: {line}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(output)
    }

    /// Starts a `deeprecall serve` line on a free port, and points the client commands at it.
    async fn serve_in_background(&mut self, line: &str) {
        use std::io::{BufRead, BufReader};
        // `exec`, so that the child killed at the end is the server itself.
        let line = line.replacen("deeprecall", "exec \"$DEEPRECALL_TEST_BIN\"", 1);
        let mut command = self.command(&line);
        let mut child = command
            .env("DEEPRECALL_LISTEN", "127.0.0.1:0")
            .env("DEEPRECALL_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stderr = child.stderr.take().expect("stderr");
        self.background.push(child);
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(address) = entry["fields"]["address"].as_str() {
                    let _ = found.send(address.to_string());
                }
            }
        });
        let address =
            tokio::task::spawn_blocking(move || address.recv_timeout(Duration::from_secs(60)))
                .await
                .expect("joined")
                .unwrap_or_else(|_| panic!("{line}: the server did not log its address"));
        let endpoint = format!("http://{address}");
        wait_until_serving(&endpoint).await;
        self.env.insert("DEEPRECALL_SERVER".into(), endpoint);
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` to its end, off the runtime the test servers run on.
async fn output_of(command: &mut Command) -> Output {
    let program = format!("{command:?}");
    let mut command = std::mem::replace(command, Command::new("true"));
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .unwrap_or_else(|error| panic!("{program} cannot start: {error}"))
}

/// Digits stand for timings and counts, which change from run to run and release to release.
fn shape(line: &str) -> String {
    let mut shaped = String::new();
    for character in line.trim_end().chars() {
        if character.is_ascii_digit() {
            if !shaped.ends_with('0') {
                shaped.push('0');
            }
        } else {
            shaped.push(character);
        }
    }
    shaped
}

/// Checks that every line of the README's sample output, `...` left out and `…` matching the
/// rest of a line, appears in the real output, in order.
fn assert_sample_matches(sample: &str, output: &str) {
    let real: Vec<String> = output.lines().map(shape).collect();
    let mut next = 0;
    for wanted in sample.lines().filter(|line| line.trim() != "...") {
        let wanted = shape(wanted);
        let matches = |line: &String| match wanted.split_once('…') {
            // An ellipsis at the end of a preview is the output's own.
            Some((_, "")) if line.ends_with('…') => *line == wanted,
            Some((prefix, _)) => line.starts_with(prefix),
            None => *line == wanted,
        };
        let found = real[next..].iter().position(matches).unwrap_or_else(|| {
            panic!("README sample line {wanted:?} is not in the output (in order):\n{output}")
        });
        next += found + 1;
    }
}

#[tokio::test]
async fn the_readmes_commands_run_as_written() {
    let blocks = readme_blocks();
    let dir = tempfile::tempdir().expect("temporary directory");
    std::os::unix::fs::symlink(examples(), dir.path().join("examples")).expect("examples linked");

    // The server of the `buf curl` lines: the README's own key file, gRPC-Web on.
    let keys = blocks
        .iter()
        .find(|block| block.language == "toml" && block.text.starts_with("# keys.toml"))
        .expect("the README's keys.toml");
    let keys_file = dir.path().join("keys.toml");
    std::fs::write(&keys_file, &keys.text).expect("keys.toml written");
    let keyed = TestServer::start_with(|config| {
        config.auth.keys_file = Some(keys_file.clone());
        config.server.grpc_web = true;
    })
    .await;

    let buf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript/node_modules/.bin/buf");
    let runnable: Vec<&Block> = blocks
        .iter()
        .filter(|block| block.language == "sh" && skipped_because(&block.text).is_none())
        .collect();
    if runnable.iter().any(|block| block.text.contains("buf curl")) {
        let mut install = Command::new("bash");
        install
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/tools.sh"))
            .arg("node");
        let installed = output_of(&mut install).await;
        assert!(
            installed.status.success(),
            "clients/tools.sh node: {installed:?}"
        );
    }
    let mut shell = Shell {
        dir: dir.path().to_path_buf(),
        env: BTreeMap::new(),
        buf: Some(buf),
        keyed_address: keyed.endpoint.trim_start_matches("http://").to_string(),
        background: Vec::new(),
    };

    let mut outputs: Vec<(String, String)> = Vec::new();
    for block in &runnable {
        for line in commands(&block.text) {
            if let Some(output) = shell.run(&line).await {
                outputs.push((line, String::from_utf8_lossy(&output.stdout).into_owned()));
            }
        }
    }
    let ran: Vec<&str> = outputs.iter().map(|(line, _)| line.as_str()).collect();
    for expected in [
        "cargo run --release -- demo",
        "deeprecall ingest",
        "deeprecall query",
        "buf curl",
    ] {
        assert!(
            ran.iter().any(|line| line.starts_with(expected)),
            "no README line starting with {expected:?} ran: {ran:#?}"
        );
    }

    // What the README shows of `query` is what it prints.
    let output_of_line = |prefix: &str| {
        outputs
            .iter()
            .find(|(line, _)| line.starts_with(prefix))
            .map(|(_, output)| output.clone())
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} ran"))
    };
    let sample_index = blocks
        .iter()
        .position(|block| block.text.contains("deeprecall query \""))
        .expect("the Using it block")
        + 1;
    let sample = &blocks[sample_index];
    assert!(
        sample.language.is_empty(),
        "the sample output follows, at line {}",
        sample.line
    );
    assert_sample_matches(&sample.text, &output_of_line("deeprecall query \""));

    // `query --json`: every event a JSON line, the result last.
    let json_lines = output_of_line("deeprecall query --json");
    let events: Vec<serde_json::Value> = json_lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(events.len() > 2, "{json_lines}");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|event| event.get("result").is_none())
    );
    let result = &events[events.len() - 1]["result"];
    assert!(result["budgetStatus"]["limits"].is_object(), "{result}");

    // `init` wrote a file the server reads.
    let written = dir.path().join("deeprecall.toml");
    Config::load(&ConfigSources {
        file: Some(written),
        ..ConfigSources::default()
    })
    .expect("the file init writes loads");
    drop(shell);
    keyed.stop().await.expect("clean stop");
}
