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
