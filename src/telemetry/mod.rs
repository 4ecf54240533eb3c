//! Logs, traces, metrics and the trace log.
//!
//! - [`otel`]: the global `tracing` subscriber (text or JSON logs on standard error, plus an
//!   optional OpenTelemetry layer exporting spans over OTLP) and W3C trace-context propagation.
//! - [`spans`]: constructors for the spans of a query, so that every call site uses the same
//!   names and fields.
//! - [`metrics`]: the Prometheus registry and its HTTP endpoint.
//! - [`trace_log`]: the optional JSONL file of every trace event.
//! - [`otlp_receiver`]: an in-process OTLP collector for tests.

pub mod metrics;
pub mod otel;
pub mod otlp_receiver;
pub mod spans;
pub mod trace_log;

pub use metrics::{InFlightGuard, Metrics, QueryOutcome, RUNTIME_TASKS_METRIC, serve_metrics};
pub use otel::{
    LogSettings, OtelSettings, OtlpProtocol, TelemetryError, TelemetryGuard, extract_parent,
    init_tracing, inject_current, set_parent, set_remote_parent,
};
pub use trace_log::TraceLog;

use std::io::IsTerminal;

use crate::config::TelemetryConfig;

/// Whether text logs on standard error get ANSI colours: only on a terminal, and not when the
/// user asked for none (`NO_COLOR`, <https://no-color.org>). A file or a pipe gets plain text.
pub fn colour_logs(stderr_is_terminal: bool, no_color_requested: bool) -> bool {
    stderr_is_terminal && !no_color_requested
}

/// Installs the global log subscriber, without OpenTelemetry export. Logs go to standard error
/// so that client commands can print their output on standard output. Calling it twice is
/// harmless: the first subscriber stays.
pub fn init(config: &TelemetryConfig) {
    let settings = LogSettings {
        filter: config.log_filter.clone(),
        format: config.log_format,
        ansi: colour_logs(
            std::io::stderr().is_terminal(),
            crate::config::no_color_requested(),
        ),
    };
    // The only failure without an exporter is a subscriber already installed (tests, embedded
    // use), which keeps the first one.
    drop(init_tracing(&settings, None));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, false));
        assert!(!colour_logs(false, false), "a file or a pipe");
        assert!(!colour_logs(true, true), "NO_COLOR");
    }
}
