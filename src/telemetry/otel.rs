//! The global `tracing` subscriber and OpenTelemetry export.
//!
//! Logs go to standard error, as text or JSON, filtered by the log filter. When an OTLP
//! endpoint is set, an OpenTelemetry layer beside them turns `tracing` spans into OpenTelemetry
//! spans and a batch processor exports them over OTLP/gRPC (tonic) or OTLP/HTTP with protobuf
//! bodies (reqwest). The two layers have filters of their own, so that quieting the logs does
//! not silence traces.
//!
//! Trace context crosses process boundaries as W3C `traceparent`/`tracestate` headers:
//! [`extract_parent`] reads it from incoming gRPC metadata, [`inject_current`] writes it into
//! outgoing HTTP requests.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tokio::runtime::{Handle, RuntimeFlavor};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::secret::Secret;

/// Service name reported when none is set.
pub const DEFAULT_SERVICE_NAME: &str = "deeprecall";
/// Spans exported when no span filter is set: this crate's, at `info` and above. Libraries'
/// spans (h2, hyper, tower) would multiply the volume without telling much about a query.
pub const DEFAULT_SPAN_FILTER: &str = "deeprecall=info";
/// Time one export may take before it is abandoned.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Path of the traces signal in OTLP/HTTP, added to an endpoint given without a path.
const TRACES_PATH: &str = "/v1/traces";
/// Largest collector response read; a collector answers with a few bytes, so more is a
/// misconfigured endpoint, not something to buffer.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Time the final flush gets at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Instrumentation scope of the spans this crate creates.
const SCOPE_NAME: &str = "deeprecall";

/// Settings of the log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `tracing` filter directives, e.g. `info` or `deeprecall=debug,info`. An invalid filter
    /// falls back to `info` with a message on standard error, so that a typo does not stop the
    /// service.
    pub filter: String,
    /// Text or JSON lines.
    pub format: LogFormat,
    /// Colours text logs with ANSI escape codes: for a terminal only, never for a file or a
    /// pipe (see [`crate::telemetry::colour_logs`]).
    pub ansi: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: "info".to_string(),
            format: LogFormat::Text,
            ansi: false,
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, usually on port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, usually on port 4318.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Returns the protocol an endpoint most likely speaks: OTLP/HTTP when it names port 4318
    /// or a `/v1/traces` path, OTLP/gRPC otherwise (the OpenTelemetry Collector's default
    /// ports are 4317 for gRPC and 4318 for HTTP, and only HTTP endpoints carry a path).
    pub fn infer(endpoint: &http::Uri) -> OtlpProtocol {
        let path = endpoint.path().trim_end_matches('/');
        if endpoint.port_u16() == Some(4318) || path.ends_with(TRACES_PATH) {
            OtlpProtocol::HttpProtobuf
        } else {
            OtlpProtocol::Grpc
        }
    }
}

impl FromStr for OtlpProtocol {
    type Err = TelemetryError;

    /// Parses the names of `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`), and `http`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Ok(OtlpProtocol::HttpProtobuf),
            _ => Err(TelemetryError::InvalidProtocol(value.to_string())),
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Settings of span export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// Collector URL, `http://` or `https://`. For OTLP/HTTP an endpoint without a path gets
    /// `/v1/traces`; one with a path is used as it is.
    pub endpoint: String,
    /// Transport; `None` infers it from the endpoint ([`OtlpProtocol::infer`]).
    pub protocol: Option<OtlpProtocol>,
    /// `service.name` of the resource; it wins over a `service.name` in `resource_attributes`.
    pub service_name: String,
    /// Further resource attributes, e.g. `deployment.environment=prod`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Share of traces started here that are sampled, from 0 to 1. A trace continued from an
    /// incoming `traceparent` follows the caller's decision instead.
    pub sampling_ratio: f64,
    /// `tracing` filter directives choosing which spans are exported.
    pub span_filter: String,
    /// Time one export may take.
    pub export_timeout: Duration,
    /// Headers (gRPC metadata) sent with every export, e.g. a vendor's API key; the values
    /// are secrets and never shown. The exporter adds `OTEL_EXPORTER_OTLP_HEADERS` after them,
    /// so the environment's value wins for a header named in both.
    pub headers: BTreeMap<String, Secret>,
}

impl OtelSettings {
    /// Returns settings exporting every trace to `endpoint`, with the protocol inferred.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtelSettings {
            endpoint: endpoint.into(),
            protocol: None,
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            resource_attributes: BTreeMap::new(),
            sampling_ratio: 1.0,
            span_filter: DEFAULT_SPAN_FILTER.to_string(),
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            headers: BTreeMap::new(),
        }
    }
}

/// Errors of telemetry setup.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an absolute `http` or `https` URL.
    #[error("invalid otlp endpoint {endpoint:?}: {message}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        message: String,
    },
    /// An unknown protocol name.
    #[error("invalid otlp protocol {0:?}: expected grpc or http/protobuf")]
    InvalidProtocol(String),
    /// A sampling ratio outside 0..=1.
    #[error("invalid sampling ratio {0}: expected a number from 0 to 1")]
    InvalidSamplingRatio(f64),
    /// Span filter directives that do not parse.
    #[error("invalid span filter {filter:?}: {message}")]
    InvalidSpanFilter {
        /// The filter as given.
        filter: String,
        /// The parser's complaint.
        message: String,
    },
    /// An export header whose name or value HTTP does not allow; the value is never shown.
    #[error("invalid otlp header {name:?}: {message}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// What is wrong with it.
        message: &'static str,
    },
    /// A resource attribute not of the form `key=value`.
    #[error("invalid resource attribute {0:?}: expected key=value")]
    InvalidResourceAttribute(String),
    /// Export was asked for outside a tokio runtime; the exporters' connections live on it.
    #[error("otlp export must be set up inside a tokio runtime")]
    NoRuntime,
    /// The HTTP client for OTLP/HTTP could not be built.
    #[error("cannot build the otlp http client: {0}")]
    HttpClient(String),
    /// The exporter rejected its configuration.
    #[error("cannot build the otlp exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Another global subscriber was installed first.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    /// The final flush failed or timed out.
    #[error("cannot flush spans at shutdown: {0}")]
    Shutdown(String),
}

/// Parses resource attributes written as in `OTEL_RESOURCE_ATTRIBUTES`:
/// `key=value,key2=value2`, blanks around items ignored, values may contain `=`.
pub fn parse_resource_attributes(text: &str) -> Result<BTreeMap<String, String>, TelemetryError> {
    let mut attributes = BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let Some((key, value)) = item.split_once('=') else {
            return Err(TelemetryError::InvalidResourceAttribute(item.to_string()));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(TelemetryError::InvalidResourceAttribute(item.to_string()));
        }
        attributes.insert(key.to_string(), value.trim().to_string());
    }
    Ok(attributes)
}

/// Keeps span export alive; [`TelemetryGuard::shutdown`] flushes the spans still queued.
///
/// Dropping the guard flushes too, but blocks the thread for up to five seconds; in async code
/// prefer `guard.shutdown().await`.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Returns true when spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter. The export itself runs on a
    /// blocking thread so that the runtime stays free to drive the exporter's connection.
    pub async fn shutdown(mut self) -> Result<(), TelemetryError> {
        let Some(provider) = self.provider.take() else {
            return Ok(());
        };
        let result = if Handle::try_current().is_ok() {
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await
                .map_err(|error| TelemetryError::Shutdown(error.to_string()))?
        } else {
            provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        };
        result.map_err(|error| TelemetryError::Shutdown(error.to_string()))
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let shutdown = move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        // On a multi-threaded runtime, `block_in_place` hands this worker's tasks to another
        // one, so the exporter's connection task keeps running while this thread waits.
        let result = match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(shutdown)
            }
            _ => shutdown(),
        };
        if let Err(error) = result {
            eprintln!("cannot flush spans at shutdown: {error}");
        }
    }
}

/// Installs the global subscriber: logs on standard error and, with `otel`, span export.
///
/// With `otel` it must run inside a tokio runtime: the gRPC channel and the HTTP client of the
/// exporter run their connections on it. The returned guard must live as long as spans should
/// be exported; shut it down before the runtime ends.
pub fn init_tracing(
    log: &LogSettings,
    otel: Option<&OtelSettings>,
) -> Result<TelemetryGuard, TelemetryError> {
    let log_filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|error| {
        eprintln!(
            "invalid log filter {:?} ({error}); using \"info\"",
            log.filter
        );
        EnvFilter::new("info")
    });
    let fmt_layer = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(log.ansi)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    let (span_filter, provider) = match otel {
        Some(settings) => (
            Some(span_filter(&settings.span_filter)?),
            Some(tracer_provider(settings)?),
        ),
        None => (None, None),
    };
    let otel_layer = provider
        .as_ref()
        .zip(span_filter)
        .map(|(provider, filter)| otel_layer(provider).with_filter(filter));
    let installed = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if installed.is_err() {
        if let Some(provider) = provider {
            // Nothing was recorded through it yet, so this returns at once.
            drop(provider.shutdown());
        }
        return Err(TelemetryError::AlreadyInstalled);
    }
    // No `opentelemetry::global` provider or propagator: spans reach the exporter through the
    // layer, and the propagation helpers here name their propagator, so there is no global
    // state for tests to trip over.
    Ok(TelemetryGuard { provider })
}

/// Returns a `tracing` layer that records spans into `provider`'s tracer. For callers that
/// build their own subscriber, such as tests with `tracing::subscriber::set_default`.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let scope = InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    tracing_opentelemetry::layer().with_tracer(provider.tracer_with_scope(scope))
}

/// Builds a tracer provider exporting to `settings.endpoint` through a batch processor, with
/// the `ParentBased(TraceIdRatioBased(ratio))` sampler. Must run inside a tokio runtime.
pub fn tracer_provider(settings: &OtelSettings) -> Result<SdkTracerProvider, TelemetryError> {
    if !(0.0..=1.0).contains(&settings.sampling_ratio) {
        return Err(TelemetryError::InvalidSamplingRatio(
            settings.sampling_ratio,
        ));
    }
    let headers = export_headers(&settings.headers)?;
    let runtime = Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let endpoint = parse_endpoint(&settings.endpoint)?;
    let protocol = settings
        .protocol
        .unwrap_or_else(|| OtlpProtocol::infer(&endpoint));
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            let builder = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_metadata(MetadataMap::from_headers(headers));
            // Left alone, the exporter would use an empty trust store for https.
            let builder = if endpoint.scheme() == Some(&http::uri::Scheme::HTTPS) {
                builder.with_tls_config(ClientTlsConfig::new().with_enabled_roots())
            } else {
                builder
            };
            builder.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            let client = reqwest::Client::builder()
                .timeout(settings.export_timeout)
                .build()
                .map_err(|error| TelemetryError::HttpClient(error.to_string()))?;
            SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(traces_url(&endpoint))
                .with_timeout(settings.export_timeout)
                .with_headers(percent_escaped(&headers))
                .with_http_client(ReqwestExportClient { client, runtime })
                .build()?
        }
    };
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        settings.sampling_ratio,
    )));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource(settings))
        .build())
}

/// Returns the remote parent carried by `headers` (`traceparent`, `tracestate`), or an empty
/// context when there is none or it does not parse. Works on gRPC metadata through
/// `tonic::metadata::MetadataMap::as_ref()`.
pub fn extract_parent(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes the trace context in `headers` the parent of `span`. Returns false when `headers`
/// carry no valid context, when no OpenTelemetry layer is installed, or when `span` has
/// already been entered (its parent is fixed then): call it right after creating the span.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) -> bool {
    set_parent(span, extract_parent(headers))
}

/// Makes `parent` (from [`extract_parent`]) the parent of `span`, for handlers that read the
/// metadata before the span exists. Returns false as [`set_remote_parent`] does.
pub fn set_parent(span: &tracing::Span, parent: Context) -> bool {
    if !parent.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(parent).is_ok()
}

/// Writes the current span's trace context into `headers` as `traceparent` (and `tracestate`
/// when there is one). Writes nothing when no span is exported. `reqwest::header::HeaderMap`
/// is this same type.
pub fn inject_current(headers: &mut http::HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// Writes `span`'s trace context into `headers`; see [`inject_current`].
pub fn inject_span(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Returns the trace id of `span` as 32 hex digits, or `None` when it is not exported. Lets
/// logs and the trace log point at the trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

fn span_filter(directives: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(directives).map_err(|error| TelemetryError::InvalidSpanFilter {
        filter: directives.to_string(),
        message: error.to_string(),
    })
}

fn parse_endpoint(endpoint: &str) -> Result<http::Uri, TelemetryError> {
    let invalid = |message: &str| TelemetryError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        message: message.to_string(),
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
    let scheme_ok = uri.scheme().is_some_and(|scheme| {
        *scheme == http::uri::Scheme::HTTP || *scheme == http::uri::Scheme::HTTPS
    });
    if !scheme_ok || uri.authority().is_none() {
        return Err(invalid("expected an absolute http:// or https:// url"));
    }
    Ok(uri)
}

/// Checks the configured export headers and returns them as HTTP headers.
fn export_headers(headers: &BTreeMap<String, Secret>) -> Result<http::HeaderMap, TelemetryError> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let invalid = |message| TelemetryError::InvalidHeader {
            name: name.clone(),
            message,
        };
        let header_name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid("not a valid header name"))?;
        // Binary metadata would have to be base64; no collector asks for it.
        if header_name.as_str().ends_with("-bin") {
            return Err(invalid("binary (-bin) metadata is not supported"));
        }
        let header_value = http::HeaderValue::from_str(value.expose())
            .map_err(|_| invalid("the value has characters a header cannot carry"))?;
        map.insert(header_name, header_value);
    }
    Ok(map)
}

/// The headers as the OTLP/HTTP exporter takes them. It percent-decodes every value, as it
/// must for `OTEL_EXPORTER_OTLP_HEADERS`; configured values are literal, so their `%` signs
/// are escaped first and arrive as written, as they do over gRPC.
fn percent_escaped(headers: &http::HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((name.as_str().to_string(), value.replace('%', "%25")))
        })
        .collect()
}

/// Returns the OTLP/HTTP traces URL: the endpoint itself when it has a path, or the endpoint
/// with `/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read by other SDKs.
fn traces_url(endpoint: &http::Uri) -> String {
    let text = endpoint.to_string();
    if endpoint.path().trim_end_matches('/').is_empty() && endpoint.query().is_none() {
        format!("{}{TRACES_PATH}", text.trim_end_matches('/'))
    } else {
        text
    }
}

fn resource(settings: &OtelSettings) -> Resource {
    // An empty builder rather than `Resource::builder()`: the settings are the one source of
    // truth, not `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` read behind the config's
    // back.
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(settings.service_name.clone())
        .build()
}

/// OTLP/HTTP transport over the crate's reqwest 0.12, so that the exporter brings in no second
/// HTTP stack (opentelemetry-otlp's own reqwest feature is built on reqwest 0.13).
///
/// The batch processor exports from a plain thread of its own, outside any runtime, while a
/// reqwest connection needs tokio's reactor: each request is therefore spawned on the runtime
/// the exporter was built in, and only its result crosses back.
#[derive(Debug)]
struct ReqwestExportClient {
    client: reqwest::Client,
    runtime: Handle,
}

#[async_trait]
impl HttpClient for ReqwestExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        self.runtime
            .spawn(async move { send(&client, request).await })
            .await?
    }
}

async fn send(
    client: &reqwest::Client,
    request: reqwest::Request,
) -> Result<http::Response<Bytes>, HttpError> {
    let mut response = client.execute(request).await?;
    let mut builder = http::Response::builder()
        .status(response.status())
        .version(response.version());
    if let Some(headers) = builder.headers_mut() {
        *headers = std::mem::take(response.headers_mut());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("otlp response larger than {MAX_RESPONSE_BYTES} bytes").into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(builder.body(Bytes::from(body))?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::TraceContextExt;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::otlp_receiver::{OtlpReceiver, ReceivedSpan};

    const REMOTE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REMOTE_SPAN_ID: &str = "00f067aa0ba902b7";
    const WAIT: Duration = Duration::from_secs(10);

    fn incoming_headers(sampled: bool) -> http::HeaderMap {
        let flags = if sampled { "01" } else { "00" };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_str(&format!("00-{REMOTE_TRACE_ID}-{REMOTE_SPAN_ID}-{flags}"))
                .unwrap(),
        );
        headers
    }

    async fn flush(provider: &SdkTracerProvider) {
        let provider = provider.clone();
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .unwrap()
            .unwrap();
    }

    /// Runs a query-shaped pair of spans under a local subscriber and returns the
    /// `traceparent` injected from inside the child.
    async fn query_with_child(provider: &SdkTracerProvider, incoming: &http::HeaderMap) -> String {
        let subscriber = tracing_subscriber::registry().with(otel_layer(provider));
        let _default = crate::telemetry::spans::recorded::scoped(subscriber);
        let query = crate::telemetry::spans::query("Query", "q-1", "handbook");
        assert!(set_remote_parent(&query, incoming));
        let outgoing = async {
            let search = crate::telemetry::spans::search(1, "handbook", 5);
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                crate::telemetry::spans::record_search(&tracing::Span::current(), 3, true);
                let mut outgoing = http::HeaderMap::new();
                inject_current(&mut outgoing);
                outgoing
            }
            .instrument(search)
            .await
        }
        .instrument(query)
        .await;
        outgoing
            .get("traceparent")
            .expect("a traceparent is injected")
            .to_str()
            .unwrap()
            .to_string()
    }

    fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_export_keeps_parent_child_structure_and_the_incoming_trace_id() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut settings = OtelSettings::new(receiver.grpc_endpoint());
        settings.protocol = Some(OtlpProtocol::Grpc);
        settings.service_name = "deeprecall-test".to_string();
        settings.resource_attributes =
            parse_resource_attributes("deployment.environment=test, team=search").unwrap();
        settings.headers = BTreeMap::from([("x-api-key".to_string(), Secret::new("k%20ey-1"))]);
        let provider = tracer_provider(&settings).unwrap();

        let traceparent = query_with_child(&provider, &incoming_headers(true)).await;
        flush(&provider).await;
        let spans = receiver.wait_for_spans(2, WAIT).await.unwrap();

        let query = by_name(&spans, "query");
        let search = by_name(&spans, "search");
        assert_eq!(query.trace_id, REMOTE_TRACE_ID);
        assert_eq!(search.trace_id, REMOTE_TRACE_ID);
        assert_eq!(query.parent_span_id.as_deref(), Some(REMOTE_SPAN_ID));
        assert_eq!(
            search.parent_span_id.as_deref(),
            Some(query.span_id.as_str())
        );
        assert_eq!(
            traceparent,
            format!("00-{REMOTE_TRACE_ID}-{}-01", search.span_id)
        );
        assert_eq!(query.attributes["query_id"], "q-1");
        assert_eq!(query.attributes["rpc.method"], "Query");
        assert_eq!(search.attributes["collection"], "handbook");
        assert_eq!(search.attributes["hits"], 3);
        assert_eq!(search.attributes["step"], 1);
        assert_eq!(query.kind, "server");
        assert_eq!(search.attributes["cache_hit"], true);
        assert!(search.start <= search.end);
        assert!(query.start <= search.start && search.end <= query.end);
        assert!(search.end.duration_since(search.start).unwrap() >= Duration::from_millis(5));
        assert_eq!(query.resource["service.name"], "deeprecall-test");
        assert_eq!(query.resource["deployment.environment"], "test");
        assert_eq!(query.resource["team"], "search");
        assert_eq!(query.scope, "deeprecall");
        assert_eq!(receiver.latest_headers()["x-api-key"], "k%20ey-1");

        provider.shutdown().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_export_reaches_the_receiver_through_reqwest() {
        let receiver = OtlpReceiver::start().await.unwrap();
        // No path and no protocol: the port says nothing, so the protocol is named.
        let mut settings = OtelSettings::new(receiver.http_base_url());
        settings.protocol = Some(OtlpProtocol::HttpProtobuf);
        // Written literally, as over gRPC: the exporter's percent-decoding does not touch it.
        settings.headers = BTreeMap::from([("x-api-key".to_string(), Secret::new("k%20ey-1"))]);
        let provider = tracer_provider(&settings).unwrap();

        query_with_child(&provider, &incoming_headers(true)).await;
        flush(&provider).await;
        let spans = receiver.wait_for_spans(2, WAIT).await.unwrap();

        let query = by_name(&spans, "query");
        let search = by_name(&spans, "search");
        assert_eq!(
            search.parent_span_id.as_deref(),
            Some(query.span_id.as_str())
        );
        assert_eq!(query.trace_id, REMOTE_TRACE_ID);
        assert_eq!(query.resource["service.name"], DEFAULT_SERVICE_NAME);
        assert_eq!(receiver.http_requests(), 1);
        assert_eq!(receiver.latest_headers()["x-api-key"], "k%20ey-1");
        let provider = provider.clone();
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sampling_follows_the_caller_and_the_ratio_for_new_traces() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut settings = OtelSettings::new(receiver.grpc_endpoint());
        settings.sampling_ratio = 0.0;
        let provider = tracer_provider(&settings).unwrap();
        let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
        let _default = tracing::subscriber::set_default(subscriber);

        let sampled = |span: &tracing::Span| span.context().span().span_context().is_sampled();
        let new_trace = tracing::info_span!("new");
        assert!(!sampled(&new_trace));
        let continued = tracing::info_span!("continued");
        assert!(set_remote_parent(&continued, &incoming_headers(true)));
        assert!(sampled(&continued));
        let refused = tracing::info_span!("refused");
        assert!(set_remote_parent(&refused, &incoming_headers(false)));
        assert!(!sampled(&refused));
        assert_eq!(trace_id(&continued).as_deref(), Some(REMOTE_TRACE_ID));

        // An unsampled span still passes the caller's decision on downstream.
        let mut outgoing = http::HeaderMap::new();
        inject_span(&refused, &mut outgoing);
        assert!(outgoing["traceparent"].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn missing_or_garbled_traceparent_gives_no_parent() {
        assert!(!extract_parent(&http::HeaderMap::new()).has_active_span());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("00-zz-yy-01"));
        assert!(!extract_parent(&headers).span().span_context().is_valid());
        let span = tracing::info_span!("no_layer");
        assert!(!set_remote_parent(&span, &headers));
        let mut outgoing = http::HeaderMap::new();
        inject_span(&span, &mut outgoing);
        assert!(outgoing.is_empty());
    }

    #[test]
    fn protocol_is_inferred_from_port_and_path() {
        let infer = |url: &str| OtlpProtocol::infer(&url.parse().unwrap());
        assert_eq!(infer("http://collector:4317"), OtlpProtocol::Grpc);
        assert_eq!(infer("https://otel.example.com"), OtlpProtocol::Grpc);
        assert_eq!(infer("http://collector:4318"), OtlpProtocol::HttpProtobuf);
        assert_eq!(
            infer("https://otel.example.com/v1/traces"),
            OtlpProtocol::HttpProtobuf
        );
        assert_eq!(
            "http/protobuf".parse::<OtlpProtocol>().unwrap(),
            OtlpProtocol::HttpProtobuf
        );
        assert_eq!("GRPC".parse::<OtlpProtocol>().unwrap(), OtlpProtocol::Grpc);
        assert!("thrift".parse::<OtlpProtocol>().is_err());
    }

    #[test]
    fn http_endpoint_without_a_path_gets_the_traces_path() {
        let url = |text: &str| traces_url(&text.parse().unwrap());
        assert_eq!(
            url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("https://otel.example.com/api/traces"),
            "https://otel.example.com/api/traces"
        );
    }

    #[test]
    fn bad_settings_are_refused_before_anything_starts() {
        assert!(matches!(
            parse_endpoint("collector:4317"),
            Err(TelemetryError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            parse_endpoint("ftp://collector"),
            Err(TelemetryError::InvalidEndpoint { .. })
        ));
        let mut settings = OtelSettings::new("http://127.0.0.1:4317");
        settings.sampling_ratio = 1.5;
        assert!(matches!(
            tracer_provider(&settings),
            Err(TelemetryError::InvalidSamplingRatio(_))
        ));
        settings.sampling_ratio = f64::NAN;
        assert!(matches!(
            tracer_provider(&settings),
            Err(TelemetryError::InvalidSamplingRatio(_))
        ));
        settings.sampling_ratio = 1.0;
        assert!(matches!(
            tracer_provider(&settings),
            Err(TelemetryError::NoRuntime)
        ));
        for (name, value) in [
            ("bad name", "secret-value"),
            ("x-api-key", "secret\nvalue"),
            ("x-trace-bin", "secret-value"),
        ] {
            settings.headers = BTreeMap::from([(name.to_string(), Secret::new(value))]);
            let error = tracer_provider(&settings).unwrap_err();
            assert!(
                matches!(&error, TelemetryError::InvalidHeader { name: named, .. } if named == name),
                "{error:?}"
            );
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        settings.headers.clear();
        assert!(matches!(
            parse_resource_attributes("a=1,broken"),
            Err(TelemetryError::InvalidResourceAttribute(_))
        ));
        assert_eq!(
            parse_resource_attributes(" a = 1 , b=x=y ,").unwrap(),
            BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x=y".to_string())
            ])
        );
    }
}
