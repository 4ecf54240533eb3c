//! Logging. Later additions (OpenTelemetry export, Prometheus metrics) hang off the same
//! settings.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global log subscriber. Logs go to standard error so that client commands can
/// print their output on standard output. Calling it twice is harmless.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|error| {
        eprintln!(
            "invalid log filter {:?} ({error}); using \"info\"",
            config.log_filter
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second call (tests, embedded use) keeps the first subscriber.
    drop(installed);
}
