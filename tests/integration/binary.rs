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
