//! `deeprecall bench soak` run for a few seconds: the report has its shape, and mixed traffic
//! fails no call.

use std::process::Command;

#[test]
fn a_short_soak_prints_a_row_per_interval_and_a_verdict_on_every_target() {
    let output = Command::new(env!("CARGO_BIN_EXE_deeprecall"))
        .args([
            "bench",
            "soak",
            "--minutes",
            "0.1",
            "--interval-seconds",
            "1",
            "--concurrency",
            "4",
            "--documents",
            "50",
            "--seed",
            "7",
        ])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stdout.lines().collect();

    assert!(lines.iter().any(|line| line.contains("seed 7")), "{stdout}");
    let header = lines
        .iter()
        .position(|line| line.starts_with("| ") && line.contains("RSS MiB"))
        .unwrap_or_else(|| panic!("no table header in {stdout}"));
    for column in [
        "fds",
        "tasks",
        "threads",
        "query",
        "hit",
        "ingest",
        "delete",
        "clear",
        "disconnect",
        "errors",
    ] {
        assert!(
            lines[header].contains(column),
            "{column} in {}",
            lines[header]
        );
    }
    let rows: Vec<&str> = lines[header + 1..]
        .iter()
        .take_while(|line| line.starts_with("| "))
        .copied()
        .collect();
    assert!(
        rows.len() >= 6,
        "one row a second for six seconds: {stdout}"
    );
    let cells = lines[header].matches('|').count();
    for row in &rows {
        assert_eq!(row.matches('|').count(), cells, "{row}");
        // Memory, descriptors, tasks and threads are read, not left at zero.
        let numbers: Vec<f64> = row
            .split('|')
            .skip(2)
            .take(4)
            .map(|cell| cell.trim().parse().expect("a number"))
            .collect();
        assert!(numbers.iter().all(|number| *number > 0.0), "{row}");
    }
    assert!(
        lines.iter().any(|line| line.starts_with("peak RSS ")),
        "{stdout}"
    );
    for check in [
        "RSS flat after warm-up",
        "open file descriptors not growing",
        "tasks not growing",
    ] {
        assert!(
            lines.iter().any(|line| line.contains(check)),
            "{check} in {stdout}"
        );
    }
    // Growth over six seconds of a debug build on a busy machine may go either way; failed
    // calls may not.
    assert!(
        lines
            .iter()
            .any(|line| line.trim() == "ok: no unexpected errors: 0 failed calls"),
        "{stdout}"
    );
    if output.status.success() {
        assert!(stdout.contains("soak: every target met"), "{stdout}");
    } else {
        assert!(stderr.contains("soak: targets missed"), "{stderr}");
    }
}
