//! The front door as one tower layer over the whole server: every call is admitted or refused
//! here before any service sees it, and an admitted call carries its [`Caller`] in the request
//! extensions for the handlers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::access::{Admission, Credentials, FrontDoor, Method, QuerySlot};
use crate::api::status::access_status;
use crate::telemetry::Metrics;
use crate::transport::PeerInfo;

/// Applies a [`FrontDoor`] to every call, and counts every call in the metrics by method and
/// final status.
#[derive(Debug, Clone)]
pub struct FrontDoorLayer {
    door: Arc<FrontDoor>,
    metrics: Metrics,
}

impl FrontDoorLayer {
    /// A layer over `door`, reporting to `metrics`.
    pub fn new(door: Arc<FrontDoor>, metrics: Metrics) -> Self {
        FrontDoorLayer { door, metrics }
    }
}

impl<S> Layer<S> for FrontDoorLayer {
    type Service = FrontDoorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FrontDoorService {
            door: Arc::clone(&self.door),
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct FrontDoorService<S> {
    door: Arc<FrontDoor>,
    metrics: Metrics,
    inner: S,
}

impl<S> Service<http::Request<Body>> for FrontDoorService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready goes to this call; the fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let door = Arc::clone(&self.door);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let method = method_label(request.uri().path());
            let connection = request.extensions().get::<PeerInfo>().cloned();
            let peer = connection.as_ref().map(|connection| connection.remote.ip());
            let headers = request.headers();
            let credentials = Credentials {
                authorization: headers
                    .get(http::header::AUTHORIZATION)
                    .map(|value| value.as_bytes()),
                api_key: headers.get("x-api-key").map(|value| value.as_bytes()),
                certificate_subject: connection
                    .as_ref()
                    .and_then(|connection| connection.client_subject.as_deref()),
            };
            let admission = door.admit(request.uri().path(), credentials, peer).await;
            let slot = match admission {
                Err(error) => {
                    let status = access_status(&error);
                    metrics.rpc_finished(method, status.code(), started.elapsed());
                    return Ok(status.into_http());
                }
                Ok(Admission::Exempt) => None,
                Ok(Admission::Caller { caller, slot }) => {
                    request.extensions_mut().insert(caller);
                    slot
                }
            };
            let response = inner.call(request).await?;
            let mut metered = MeteredBody {
                body: Body::empty(),
                metrics,
                method,
                started,
                recorded: false,
                _slot: slot,
            };
            // A trailers-only response (an error before any message) has its status here.
            if let Some(code) = status_in(response.headers()) {
                metered.record(code);
            }
            Ok(response.map(|body| {
                metered.body = body;
                Body::new(metered)
            }))
        })
    }
}

/// The `method` label of a path: bounded to the methods this server has, so that a client
/// probing random paths cannot grow the metrics.
fn method_label(path: &str) -> &'static str {
    if let Some(method) = Method::from_path(path) {
        return method.name();
    }
    if path.starts_with("/grpc.health.v1.Health/") {
        "Health"
    } else if path.starts_with("/grpc.reflection.") {
        "Reflection"
    } else {
        "unknown"
    }
}

/// The gRPC status a header map carries, if any.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A response body that records the call in the metrics when its status is known (in the
/// trailers, for a call that got as far as a body), and that holds the call's query slot
/// until the stream ends or the caller goes: a query runs for as long as its response
/// streams, not only until the handler returns.
struct MeteredBody {
    body: Body,
    metrics: Metrics,
    method: &'static str,
    started: Instant,
    recorded: bool,
    _slot: Option<QuerySlot>,
}

impl MeteredBody {
    fn record(&mut self, code: tonic::Code) {
        if !self.recorded {
            self.recorded = true;
            self.metrics
                .rpc_finished(self.method, code, self.started.elapsed());
        }
    }
}

impl HttpBody for MeteredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    self.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.record(code);
            }
            Poll::Ready(None) => self.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Dropped before its status went out: the caller cancelled or disconnected.
        self.record(tonic::Code::Cancelled);
    }
}
