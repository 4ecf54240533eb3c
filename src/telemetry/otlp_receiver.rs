//! An in-process OTLP collector for tests: it accepts spans over OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) and OTLP/HTTP (`POST
//! /v1/traces` with a protobuf body), each on its own port of `127.0.0.1`, and keeps them in
//! a flattened form that assertions can read.
//!
//! Tests wait for spans with [`OtlpReceiver::wait_for_spans`], which returns as soon as enough
//! have arrived; exporters batch, so flush the tracer provider first
//! (`SdkTracerProvider::force_flush`, from a blocking thread).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use parking_lot::Mutex;
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Path of the OTLP/HTTP traces endpoint.
pub const TRACES_PATH: &str = "/v1/traces";
/// Content type of OTLP/HTTP protobuf bodies.
const PROTOBUF: &str = "application/x-protobuf";

/// One span as received, with ids in lowercase hex and values as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, `None` for a root span.
    pub parent_span_id: Option<String>,
    /// Span name.
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// Start time.
    pub start: SystemTime,
    /// End time.
    pub end: SystemTime,
    /// Span attributes.
    pub attributes: BTreeMap<String, Value>,
    /// Attributes of the resource that sent it (`service.name`, …).
    pub resource: BTreeMap<String, Value>,
    /// Name of the instrumentation scope.
    pub scope: String,
    /// `unset`, `ok` or `error`.
    pub status: String,
    /// Status message.
    pub status_message: String,
    /// Names of the span's events (log lines inside it).
    pub events: Vec<String>,
}

/// Waiting for spans took too long.
#[derive(Debug)]
pub struct WaitTimeout {
    /// Spans waited for.
    pub wanted: usize,
    /// Spans received by then.
    pub received: Vec<ReceivedSpan>,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .received
            .iter()
            .map(|span| span.name.as_str())
            .collect();
        write!(
            formatter,
            "waited for {} spans, received {}: {names:?}",
            self.wanted,
            self.received.len()
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// A running receiver; it stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    state: Arc<Received>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    count: watch::Sender<usize>,
    grpc_requests: AtomicU64,
    http_requests: AtomicU64,
    /// Headers (gRPC metadata) of the latest export call.
    latest_headers: Mutex<http::HeaderMap>,
}

impl Received {
    fn record(&self, request: &ExportTraceServiceRequest) {
        let spans = flatten(request);
        let total = {
            let mut all = self.spans.lock();
            all.extend(spans);
            all.len()
        };
        self.count.send_replace(total);
    }
}

impl OtlpReceiver {
    /// Starts both servers on ephemeral ports of `127.0.0.1`.
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        let grpc_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let http_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let state = Arc::new(Received {
            spans: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            grpc_requests: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            latest_headers: Mutex::new(http::HeaderMap::new()),
        });
        let stop = CancellationToken::new();

        let grpc = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcTraces(Arc::clone(&state))))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(error) = grpc.await {
                tracing::warn!(%error, "otlp test receiver: grpc server failed");
            }
        });

        let router = Router::new()
            .route(TRACES_PATH, post(export_http))
            .with_state(Arc::clone(&state));
        let http = axum::serve(http_listener, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(error) = http.await {
                tracing::warn!(%error, "otlp test receiver: http server failed");
            }
        });

        Ok(OtlpReceiver {
            grpc_addr,
            http_addr,
            state,
            _stop: stop.drop_guard(),
        })
    }

    /// Returns the OTLP/gRPC endpoint, e.g. `http://127.0.0.1:40123`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Returns the OTLP/HTTP base URL without the signal path, e.g. `http://127.0.0.1:40124`.
    pub fn http_base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Returns the OTLP/HTTP traces URL, e.g. `http://127.0.0.1:40124/v1/traces`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}{TRACES_PATH}", self.http_addr)
    }

    /// Returns the spans received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.spans.lock().clone()
    }

    /// Returns the number of OTLP/gRPC export calls received.
    pub fn grpc_requests(&self) -> u64 {
        self.state.grpc_requests.load(Ordering::Relaxed)
    }

    /// Returns the number of OTLP/HTTP export calls received.
    pub fn http_requests(&self) -> u64 {
        self.state.http_requests.load(Ordering::Relaxed)
    }

    /// Returns the headers (gRPC metadata) of the latest export call.
    pub fn latest_headers(&self) -> http::HeaderMap {
        self.state.latest_headers.lock().clone()
    }

    /// Waits until at least `count` spans have arrived, at most `timeout`, and returns all
    /// received by then.
    pub async fn wait_for_spans(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, WaitTimeout> {
        let mut arrived = self.state.count.subscribe();
        let reached =
            tokio::time::timeout(timeout, arrived.wait_for(|total| *total >= count)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.spans()),
            // The sender lives in `self`, so only the timeout can end the wait early.
            Ok(Err(_)) | Err(_) => Err(WaitTimeout {
                wanted: count,
                received: self.spans(),
            }),
        }
    }
}

struct GrpcTraces(Arc<Received>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.grpc_requests.fetch_add(1, Ordering::Relaxed);
        *self.0.latest_headers.lock() = request.metadata().clone().into_headers();
        self.0.record(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn export_http(
    State(state): State<Arc<Received>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    state.http_requests.fetch_add(1, Ordering::Relaxed);
    *state.latest_headers.lock() = headers;
    state.record(&request);
    let response = ExportTraceServiceResponse {
        partial_success: None,
    };
    ([(header::CONTENT_TYPE, PROTOBUF)], response.encode_to_vec()).into_response()
}

fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut flat = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|resource| attributes(&resource.attributes))
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans
                .scope
                .as_ref()
                .map(|scope| scope.name.clone())
                .unwrap_or_default();
            for span in &scope_spans.spans {
                let status = span.status.clone().unwrap_or_default();
                flat.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name.clone(),
                    kind: span_kind(span.kind),
                    start: UNIX_EPOCH + Duration::from_nanos(span.start_time_unix_nano),
                    end: UNIX_EPOCH + Duration::from_nanos(span.end_time_unix_nano),
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    status: status_code(status.code),
                    status_message: status.message,
                    events: span.events.iter().map(|event| event.name.clone()).collect(),
                });
            }
        }
    }
    flat
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn span_kind(kind: i32) -> String {
    let name = span::SpanKind::try_from(kind)
        .map(|kind| kind.as_str_name())
        .unwrap_or("SPAN_KIND_UNSPECIFIED");
    name.trim_start_matches("SPAN_KIND_").to_ascii_lowercase()
}

fn status_code(code: i32) -> String {
    let name = status::StatusCode::try_from(code)
        .map(|code| code.as_str_name())
        .unwrap_or("STATUS_CODE_UNSET");
    name.trim_start_matches("STATUS_CODE_").to_ascii_lowercase()
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), any_value(pair.value.as_ref())))
        .collect()
}

fn any_value(value: Option<&AnyValue>) -> Value {
    let Some(value) = value.and_then(|value| value.value.as_ref()) else {
        return Value::Null;
    };
    match value {
        any_value::Value::StringValue(text) => Value::from(text.as_str()),
        any_value::Value::BoolValue(flag) => Value::from(*flag),
        any_value::Value::IntValue(number) => Value::from(*number),
        any_value::Value::DoubleValue(number) => Value::from(*number),
        any_value::Value::ArrayValue(array) => array
            .values
            .iter()
            .map(|item| any_value(Some(item)))
            .collect(),
        any_value::Value::KvlistValue(list) => Value::Object(
            list.values
                .iter()
                .map(|pair| (pair.key.clone(), any_value(pair.value.as_ref())))
                .collect(),
        ),
        any_value::Value::BytesValue(bytes) => Value::from(hex(bytes)),
        // A reference into the string table of a profiles message; traces never use it.
        any_value::Value::StringValueStrindex(index) => Value::from(format!("strindex:{index}")),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn request() -> ExportTraceServiceRequest {
        let string = |key: &str, value: &str| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
            ..KeyValue::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", "svc")],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "scope".to_string(),
                        ..InstrumentationScope::default()
                    }),
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        name: "root".to_string(),
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 2_000,
                        attributes: vec![string("k", "v")],
                        ..Span::default()
                    }],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    #[tokio::test]
    async fn receives_over_grpc_and_http_and_flattens() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
            .await
            .unwrap();
        client.export(request()).await.unwrap();
        let response = reqwest::Client::new()
            .post(receiver.http_endpoint())
            .header(header::CONTENT_TYPE, PROTOBUF)
            .body(request().encode_to_vec())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());

        let spans = receiver
            .wait_for_spans(2, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!((receiver.grpc_requests(), receiver.http_requests()), (1, 1));
        let span = &spans[0];
        assert_eq!(span.trace_id, "ab".repeat(16));
        assert_eq!(span.span_id, "01".repeat(8));
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.kind, "server");
        assert_eq!(span.status, "unset");
        assert_eq!(span.scope, "scope");
        assert_eq!(span.attributes["k"], "v");
        assert_eq!(span.resource["service.name"], "svc");
        assert_eq!(
            span.end.duration_since(span.start).unwrap(),
            Duration::from_nanos(1_000)
        );
    }

    #[tokio::test]
    async fn waiting_for_more_spans_than_sent_times_out_with_what_came() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let error = receiver
            .wait_for_spans(1, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(error.wanted, 1);
        assert!(error.received.is_empty());
    }
}
