//! How the client commands reach a server: the address, the API key sent with every call, and
//! the reasons a connection failed, said in plain words.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// TLS flags of the client commands, for an `https://` server.
#[derive(Debug, Args)]
struct ClientTlsArgs {
    /// PEM file of the CA that signed the server's certificate, trusted instead of the
    /// system's roots; env DEEPRECALL_TLS_CA.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// PEM certificate to present under mutual TLS; env DEEPRECALL_TLS_CLIENT_CERT.
    #[arg(long)]
    tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key; env DEEPRECALL_TLS_CLIENT_KEY.
    #[arg(long)]
    tls_client_key: Option<PathBuf>,
    /// Name the server's certificate must carry, when it is not the host of --server (a
    /// server reached by its IP address); env DEEPRECALL_TLS_SERVER_NAME.
    #[arg(long)]
    tls_server_name: Option<String>,
}

/// TLS of a client connection: which CA to trust, which certificate to present and which name
/// to expect. The default trusts the system's roots and presents nothing.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM file of the CA trusted instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM certificate presented under mutual TLS.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// Name the server's certificate must carry, when not the URL's host.
    pub server_name: Option<String>,
}

impl ClientTls {
    fn is_default(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none() && self.server_name.is_none()
    }

    fn config(&self) -> Result<ClientTlsConfig, CliError> {
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|error| CliError::Io(format!("cannot read {}: {error}", path.display())))
        };
        let mut config = match &self.ca {
            Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path)?)),
            None => ClientTlsConfig::new().with_enabled_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--tls-client-cert and --tls-client-key go together".into(),
                ));
            }
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

impl ClientArgs {
    pub(super) async fn connect(&self) -> Result<ServerClient, CliError> {
        let (endpoint, key) = self.endpoint_and_key()?;
        connect_with(&endpoint, key.as_deref(), &self.tls()).await
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

    /// The TLS flags, each falling back to its environment variable.
    pub(super) fn tls(&self) -> ClientTls {
        let env = config::process_env();
        let path = |flag: &Option<PathBuf>, name: &str| {
            flag.clone().or_else(|| {
                env.get(name)
                    .filter(|value| !value.is_empty())
                    .map(PathBuf::from)
            })
        };
        ClientTls {
            ca: path(&self.tls.tls_ca, config::CLIENT_TLS_CA_ENV),
            cert: path(&self.tls.tls_client_cert, config::CLIENT_TLS_CERT_ENV),
            key: path(&self.tls.tls_client_key, config::CLIENT_TLS_KEY_ENV),
            server_name: self.tls.tls_server_name.clone().or_else(|| {
                env.get(config::CLIENT_TLS_SERVER_NAME_ENV)
                    .filter(|value| !value.is_empty())
                    .cloned()
            }),
        }
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
    wait_until_serving_with(endpoint, &ClientTls::default(), timeout).await
}

/// [`wait_until_serving`], over the TLS `tls` describes for an `https://` endpoint.
pub async fn wait_until_serving_with(
    endpoint: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<(), CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let not_ready = |message: String| CliError::Connect {
        endpoint: endpoint.to_string(),
        message,
    };
    let watch = async {
        let channel = connect_channel_with(endpoint, tls).await?;
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
    connect_with(endpoint, api_key, &ClientTls::default()).await
}

/// [`connect`], with the TLS of an `https://` endpoint set by `tls`.
pub async fn connect_with(
    endpoint: &str,
    api_key: Option<&str>,
    tls: &ClientTls,
) -> Result<ServerClient, CliError> {
    let key = CallerKey::new(api_key)?;
    let channel = connect_channel_with(endpoint, tls).await?;
    Ok(DeepRecallClient::with_interceptor(channel, key)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// Opens a channel to `endpoint` (a URL, or `host:port` for plaintext), over TLS for an
/// `https://` URL; a failure says what went wrong: nothing listening, a TLS mismatch, or a
/// server that does not speak gRPC.
pub async fn connect_channel(endpoint: &str) -> Result<Channel, CliError> {
    connect_channel_with(endpoint, &ClientTls::default()).await
}

/// [`connect_channel`], with the TLS of an `https://` endpoint set by `tls`; TLS settings for
/// a plaintext endpoint are refused rather than ignored.
pub async fn connect_channel_with(endpoint: &str, tls: &ClientTls) -> Result<Channel, CliError> {
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
            .tls_config(tls.config()?)
            .map_err(|error| connect_error(transport_failure(&error)))?;
    } else if !tls.is_default() {
        return Err(CliError::Usage(format!(
            "TLS options need an https:// server, not {url}"
        )));
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
