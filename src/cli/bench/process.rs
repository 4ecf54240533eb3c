//! A server in a process of its own (`deeprecall serve`, this same binary), for the suites that
//! judge what the server holds — memory, descriptors, threads, tasks — apart from the clients
//! and the scripted model that drive it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

use super::super::{CliError, READY_TIMEOUT, wait_until_serving};

/// Log filter of the child: its warnings, and the lines that give its addresses.
const CHILD_LOG_FILTER: &str = "warn,deeprecall::server=info";

/// `deeprecall serve` on ephemeral ports over a fresh data directory, killed on drop.
pub(super) struct ServerProcess {
    child: Child,
    pub(super) endpoint: String,
    metrics_url: String,
    scraper: reqwest::Client,
    _data_dir: tempfile::TempDir,
}

/// What the server process holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ProcessSample {
    pub(super) rss_bytes: u64,
    /// The most resident memory the process has held since it started (`VmHWM`).
    pub(super) peak_rss_bytes: u64,
    pub(super) fds: u64,
    pub(super) threads: u64,
    /// Live tasks of its async runtime, from its metrics endpoint.
    pub(super) tasks: u64,
}

impl ServerProcess {
    /// Starts the server with `serve_args` (beyond the listen, data and metrics settings this
    /// sets) and waits until it reports SERVING.
    pub(super) async fn spawn(serve_args: &[&str]) -> Result<ServerProcess, CliError> {
        let io = |error: std::io::Error| CliError::Io(error.to_string());
        let data_dir = tempfile::tempdir().map_err(io)?;
        let mut child = Command::new(std::env::current_exe().map_err(io)?)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(serve_args)
            .env("DEEPRECALL_LOG_FORMAT", "json")
            .env("DEEPRECALL_LOG", CHILD_LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| CliError::Io(format!("cannot start the server process: {error}")))?;
        let addresses = child.stderr.take().map(read_addresses);
        let mut process = ServerProcess {
            child,
            endpoint: String::new(),
            metrics_url: String::new(),
            scraper: reqwest::Client::new(),
            _data_dir: data_dir,
        };
        let Some(mut addresses) = addresses else {
            return Err(CliError::Io("the server process has no stderr".into()));
        };
        let (mut grpc, mut metrics) = (None, None);
        while grpc.is_none() || metrics.is_none() {
            match tokio::time::timeout(READY_TIMEOUT, addresses.recv()).await {
                Ok(Some(Address::Grpc(address))) => grpc = Some(address),
                Ok(Some(Address::Metrics(address))) => metrics = Some(address),
                Ok(None) => {
                    return Err(CliError::Io(format!(
                        "the server process exited before listening: {}",
                        process.exit_status()
                    )));
                }
                Err(_) => {
                    return Err(CliError::Io(format!(
                        "the server process logged no address in {} s",
                        READY_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        process.endpoint = format!("http://{}", grpc.unwrap_or_default());
        process.metrics_url = format!("http://{}/metrics", metrics.unwrap_or_default());
        wait_until_serving(&process.endpoint, READY_TIMEOUT).await?;
        Ok(process)
    }

    /// Reads the process's memory, descriptors and threads from `/proc`, and its tasks from
    /// its metrics endpoint; a figure that cannot be read is 0.
    pub(super) async fn sample(&self) -> ProcessSample {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map_or(0, |entries| entries.count() as u64);
        ProcessSample {
            rss_bytes: status_value(&status, "VmRSS:").unwrap_or(0) * 1024,
            peak_rss_bytes: status_value(&status, "VmHWM:").unwrap_or(0) * 1024,
            fds,
            threads: status_value(&status, "Threads:").unwrap_or(0),
            tasks: self.tasks().await.unwrap_or(0),
        }
    }

    async fn tasks(&self) -> Option<u64> {
        let scrape = self
            .scraper
            .get(&self.metrics_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_value(&scrape, crate::telemetry::RUNTIME_TASKS_METRIC)
    }

    fn exit_status(&mut self) -> String {
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Address {
    Grpc(String),
    Metrics(String),
}

/// Reads the child's JSON log on a thread of its own: passes on the addresses it gives, and
/// echoes every other line to this process's stderr, so a warning of the server is seen.
fn read_addresses(stderr: std::process::ChildStderr) -> mpsc::UnboundedReceiver<Address> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let fields = &entry["fields"];
            if let Some(address) = fields["address"].as_str() {
                let _ = sender.send(Address::Grpc(address.to_string()));
            } else if let Some(address) = fields["metrics_address"].as_str() {
                let _ = sender.send(Address::Metrics(address.to_string()));
            } else if entry["level"] != "INFO" {
                eprintln!("server: {line}");
            }
        }
    });
    receiver
}

/// The first number of a `/proc/PID/status` field, e.g. `VmRSS:` (in kB).
pub(super) fn status_value(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of an unlabelled series in a Prometheus text exposition.
fn metric_value(scrape: &str, name: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|value| value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_are_read_in_kib() {
        let status = "Name:\tdeeprecall\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n";
        assert_eq!(status_value(status, "VmRSS:"), Some(102_400));
        assert_eq!(status_value(status, "VmHWM:"), Some(204_800));
        assert_eq!(status_value(status, "Threads:"), Some(9));
        assert_eq!(status_value(status, "VmSwap:"), None);
    }

    #[test]
    fn a_series_is_read_by_its_whole_name() {
        let scrape = "# HELP deeprecall_runtime_alive_tasks_total x\n\
                      deeprecall_runtime_alive_tasks_total 3\n\
                      deeprecall_runtime_alive_tasks 42\n";
        assert_eq!(
            metric_value(scrape, "deeprecall_runtime_alive_tasks"),
            Some(42)
        );
        assert_eq!(metric_value(scrape, "deeprecall_missing"), None);
    }
}
