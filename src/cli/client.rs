//! How the client commands reach a server: the address, the API key sent with every call, and
//! the reasons a connection failed, said in plain words.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::CliError;
use crate::api::DeepRecallClient;
use crate::config;
use crate::server;

/// Flags shared by the client commands.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server to talk to: a URL (http://, https:// for TLS) or host:port (plaintext); default
    /// http://127.0.0.1:50051; env DEEPRECALL_SERVER.
    #[arg(long)]
    server: Option<String>,
    /// File holding the API key to send; else env DEEPRECALL_CLIENT_KEY.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

impl ClientArgs {
    pub(super) async fn connect(&self) -> Result<ServerClient, CliError> {
        let (endpoint, key) = self.endpoint_and_key()?;
        connect(&endpoint, key.as_deref()).await
    }

    pub(super) fn endpoint_and_key(&self) -> Result<(String, Option<String>), CliError> {
        let env = config::process_env();
        let endpoint = config::server_endpoint(self.server.as_deref(), &env);
        let key = match &self.key_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|error| {
                CliError::Io(format!("cannot read {}: {error}", path.display()))
            })?),
            None => env.get(config::CLIENT_KEY_ENV).cloned(),
        };
        Ok((endpoint, key))
    }
}

/// Sends the caller's API key, if any, as `authorization: Bearer <key>` with every call.
#[derive(Debug, Clone, Default)]
pub struct CallerKey(Option<MetadataValue<Ascii>>);

impl CallerKey {
    /// The key to send; `None` sends none.
    pub fn new(key: Option<&str>) -> Result<CallerKey, CliError> {
        let Some(key) = key.map(str::trim).filter(|key| !key.is_empty()) else {
            return Ok(CallerKey(None));
        };
        MetadataValue::try_from(format!("Bearer {key}"))
            .map(|value| CallerKey(Some(value)))
            .map_err(|_| CliError::Usage("the API key must be printable ASCII".into()))
    }
}

impl Interceptor for CallerKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The client of the client commands: a channel that sends the caller's key.
pub type ServerClient = DeepRecallClient<InterceptedService<Channel, CallerKey>>;

/// How long the demo and the benchmarks wait for a server they started.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until health reports the service SERVING, at most `timeout`. The listener is bound
/// before the server starts, so the health stream answers at once and pushes the change.
pub async fn wait_until_serving(endpoint: &str, timeout: Duration) -> Result<(), CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let not_ready = |message: String| CliError::Connect {
        endpoint: endpoint.to_string(),
        message,
    };
    let watch = async {
        let channel = connect_channel(endpoint).await?;
        let mut updates = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: server::SERVICE_NAME.to_string(),
            })
            .await?
            .into_inner();
        while let Some(update) = updates.message().await? {
            if update.status == ServingStatus::Serving as i32 {
                return Ok(());
            }
        }
        Err(not_ready("the health stream ended".into()))
    };
    tokio::time::timeout(timeout, watch).await.map_err(|_| {
        not_ready(format!(
            "the server did not become ready within {} s",
            timeout.as_secs_f64()
        ))
    })?
}

/// Connects a client sending `api_key` with every call, failing fast when nothing listens.
/// `endpoint` is a URL or a bare `host:port` (plaintext), as [`config::endpoint_url`] reads it.
pub async fn connect(endpoint: &str, api_key: Option<&str>) -> Result<ServerClient, CliError> {
    let key = CallerKey::new(api_key)?;
    let channel = connect_channel(endpoint).await?;
    Ok(DeepRecallClient::with_interceptor(channel, key)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// Opens a channel to `endpoint` (a URL, or `host:port` for plaintext), over TLS for an
/// `https://` URL; a failure says what went wrong: nothing listening, a TLS mismatch, or a
/// server that does not speak gRPC.
pub async fn connect_channel(endpoint: &str) -> Result<Channel, CliError> {
    let url = config::endpoint_url(endpoint);
    let connect_error = |message: String| CliError::Connect {
        endpoint: url.clone(),
        message,
    };
    let mut builder = Endpoint::from_shared(url.clone())
        .map_err(|error| connect_error(format!("not a server address: {error}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if url.starts_with("https://") {
        builder = builder
            .tls_config(ClientTlsConfig::new().with_enabled_roots())
            .map_err(|error| connect_error(transport_failure(&error)))?;
    }
    builder
        .connect()
        .await
        .map_err(|error| connect_error(transport_failure(&error)))
}

/// How long a client command waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Says in plain words why a connection or a call failed below gRPC, from the chain of
/// causes: the transport's own message ("transport error") names none of them.
pub(super) fn transport_failure(error: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = Vec::new();
    let mut refused = false;
    let mut timed_out = false;
    let mut next = Some(error);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    let chain = causes.join(": ");
    let lowered = chain.to_lowercase();
    if refused {
        "connection refused: nothing listens there (is `deeprecall serve` running, on this \
         address and port?)"
            .to_string()
    } else if lowered.contains("invalidcontenttype")
        || lowered.contains("corrupt message")
        || lowered.contains("tls")
        || lowered.contains("certificate")
        || lowered.contains("handshake")
    {
        format!(
            "TLS handshake failed ({chain}): the server may not speak TLS on this port (use \
             http:// or host:port for a plaintext server), or its certificate is not trusted"
        )
    } else if timed_out || lowered.contains("timed out") {
        format!("timed out connecting ({chain})")
    } else if lowered.contains("frame with invalid size")
        || lowered.contains("invalid http version")
        || lowered.contains("connection error detected")
        || lowered.contains("protocol error")
    {
        // What came back is not HTTP/2: an HTTP/1 server, or a TLS server's alert.
        format!(
            "the server did not answer as a gRPC server over HTTP/2 ({chain}): wrong port, or a \
             server that expects TLS (use https://)"
        )
    } else if lowered.contains("connection reset")
        || lowered.contains("broken pipe")
        || lowered.contains("connection closed")
        || lowered.contains("go away")
        || lowered.contains("goaway")
    {
        format!("the connection was lost ({chain}): the server may have stopped or restarted")
    } else {
        chain
    }
}
