//! The checks that deployments run: `deeprecall health` asks a running server whether it
//! serves, and `serve --check-config` checks a configuration without starting anything.

use std::time::Duration;

use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::{CallerKey, CliError, ClientArgs};
use crate::config::Config;
use crate::server;

/// Longest `--timeout` accepted: a health check that waits longer than this is a hang, not a
/// check.
const MAX_TIMEOUT_SECONDS: f64 = 300.0;

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Service whose status to ask for; "" asks for the server as a whole.
    #[arg(long, default_value = server::SERVICE_NAME)]
    service: String,
    /// Seconds the whole check (connecting included) may take before it fails.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// Asks the server for the status of one service; succeeds only when it is SERVING.
pub async fn run(args: HealthArgs) -> Result<(), CliError> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|timeout| !timeout.is_zero() && args.timeout <= MAX_TIMEOUT_SECONDS)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--timeout must be more than 0 and at most {MAX_TIMEOUT_SECONDS} seconds, not {}",
                args.timeout
            ))
        })?;
    let service = args.service.clone();
    let no_answer = || {
        CliError::Io(format!(
            "no health answer within {} s",
            timeout.as_secs_f64()
        ))
    };
    let check = async {
        let (channel, key) = args.client.channel_and_key().await?;
        let mut health = HealthClient::with_interceptor(channel, key);
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.clone(),
        });
        // The deadline travels to the server too, so a stuck check ends on both sides.
        request.set_timeout(timeout);
        match health.check(request).await {
            Ok(response) => Ok(response.into_inner()),
            // The health service answers NOT_FOUND for a name it does not know.
            Err(status) if status.code() == tonic::Code::NotFound => Ok(HealthCheckResponse {
                status: ServingStatus::ServiceUnknown as i32,
            }),
            // The call's own deadline, when it fires before the timer below.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) =>
            {
                Err(no_answer())
            }
            Err(status) => Err(CliError::Call(status)),
        }
    };
    let response = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| no_answer())??;
    let shown = if service.is_empty() {
        "server"
    } else {
        &service
    };
    let status = status_name(response.status);
    if response.status == ServingStatus::Serving as i32 {
        println!("{shown}: {status}");
        Ok(())
    } else {
        Err(CliError::NotServing(format!("{shown}: {status}")))
    }
}

/// The status as grpc.health.v1 spells it.
fn status_name(status: i32) -> &'static str {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => "SERVING",
        Ok(ServingStatus::NotServing) => "NOT_SERVING",
        Ok(ServingStatus::ServiceUnknown) => "SERVICE_UNKNOWN",
        Ok(ServingStatus::Unknown) | Err(_) => "UNKNOWN",
    }
}

/// Checks a loaded configuration for what the server would refuse only later, then prints the
/// settings a deployment must agree with (ports, drain time, the directories and files it
/// needs), one `name: value` per line.
/// Opens no file, binds no port and connects nowhere.
pub fn check_config(config: &Config) -> Result<(), CliError> {
    let grace = config.server.shutdown_grace_seconds;
    if !grace.is_finite() || grace < 0.0 {
        return Err(config_error(format!(
            "server.shutdown_grace_seconds must be a number of seconds of 0 or more, not {grace}"
        )));
    }
    let metrics = config.telemetry.metrics_listen.trim();
    // The server binds a host name as well as an address; a port is what must be there.
    let has_port = metrics
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !metrics.is_empty() && !has_port {
        return Err(config_error(format!(
            "telemetry.metrics_listen must be host:port, like 0.0.0.0:9464, not {metrics:?}"
        )));
    }
    crate::server::check_settings(config).map_err(|error| config_error(error.to_string()))?;
    // The files themselves are read at start: they live in mounted Secrets this check may not see.
    let tls = crate::transport::TlsFiles::from_config(&config.tls)
        .map_err(|error| config_error(error.to_string()))?;
    println!("configuration is valid");
    println!("listen: {}", config.server.listen);
    println!("metrics_listen: {metrics}");
    println!("shutdown_grace_seconds: {grace}");
    println!("data_dir: {}", config.store.data_dir.display());
    let file = |path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default()
    };
    println!("keys_file: {}", file(&config.auth.keys_file));
    println!(
        "tls: {}",
        match &tls {
            None => "off",
            Some(files) if files.client_ca.is_some() => "mutual",
            Some(_) => "on",
        }
    );
    println!("llm_api_key_file: {}", file(&config.llm.api_key_file));
    println!(
        "cache: {}",
        format!("{:?}", config.cache.backend).to_lowercase()
    );
    println!(
        "llm: {}",
        format!("{:?}", config.llm.backend).to_lowercase()
    );
    Ok(())
}

fn config_error(message: String) -> CliError {
    CliError::Config(crate::config::ConfigError::Invalid(message))
}

impl ClientArgs {
    /// Connects to the server and returns the channel with the key to send, for clients of
    /// services other than DeepRecall.
    async fn channel_and_key(&self) -> Result<(tonic::transport::Channel, CallerKey), CliError> {
        let (endpoint, key) = self.endpoint_and_key()?;
        Ok((
            super::client::connect_channel_with(&endpoint, &self.tls()).await?,
            CallerKey::new(key.as_deref())?,
        ))
    }
}
