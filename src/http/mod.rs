//! The OpenAI-compatible HTTP surface, served by the same process as gRPC on its own port
//! (`server.http_listen`). Each handler passes the same front door (`access::FrontDoor`: keys
//! as `Authorization: Bearer`, scopes, the caller's one rate bucket, query slots) and the same
//! admission as the gRPC service, converts JSON to engine types, calls the engine and converts
//! back; `error` alone turns errors into HTTP responses.

mod chat;
pub mod error;
mod rest;
mod timed;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::{
    AccessError, Admission as DoorAdmission, Caller, Credentials, FrontDoor, Method, QuerySlot,
};
use crate::api::{Admission, OpenCall};
use crate::engine::Engine;
use crate::telemetry::{self, Metrics};
use crate::transport::{Incoming, PeerInfo};
use error::HttpError;

/// Limits of the HTTP surface.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Largest request body read.
    pub max_body_bytes: usize,
    /// Time a non-streamed completion may take, as `server.request_timeout_seconds` bounds a
    /// gRPC handler: the run's deadline, so it answers in time with what it has, or fails
    /// with 504 when it found nothing. `None` for no limit.
    pub request_timeout: Option<Duration>,
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    admission: Admission,
    door: Arc<FrontDoor>,
    settings: HttpSettings,
    started: Instant,
}

impl HttpState {
    /// The state of a surface admitting calls through `admission` and `door`.
    pub fn new(admission: Admission, door: Arc<FrontDoor>, settings: HttpSettings) -> Self {
        HttpState {
            admission,
            door,
            settings,
            started: Instant::now(),
        }
    }

    /// Passes the front door as `method` (`None` for a call any caller may make), then the
    /// admission. The slot, when the method runs queries, is held by the caller of this.
    async fn enter(
        &self,
        headers: &HeaderMap,
        peer: &PeerInfo,
        method: Option<Method>,
    ) -> Result<(Engine, OpenCall, Caller, Option<QuerySlot>), HttpError> {
        let credentials = Credentials {
            authorization: headers
                .get(header::AUTHORIZATION)
                .map(|value| value.as_bytes()),
            api_key: headers.get("x-api-key").map(|value| value.as_bytes()),
            certificate_subject: peer.client_subject.as_deref(),
        };
        let (caller, slot) = match self
            .door
            .admit_call(method, credentials, Some(peer.remote.ip()))
            .await?
        {
            DoorAdmission::Caller { caller, slot } => (caller, slot),
            DoorAdmission::Exempt => return Err(AccessError::NoIdentity.into()),
        };
        let (engine, call) = self.admission.enter()?;
        Ok((engine, call, caller, slot))
    }
}

/// The routes of the surface, each request counted in the metrics by route and status.
pub fn router(state: HttpState, metrics: Metrics) -> Router {
    let counted = middleware::from_fn(move |request: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .and_then(|path| ROUTES.iter().find(|route| **route == path.as_str()))
                .copied()
                .unwrap_or("unknown");
            let started = Instant::now();
            let response = next.run(request).await;
            metrics.http_request(route, response.status().as_u16());
            response.map(|body| {
                Body::new(timed::TimedBody::new(body, started, move |took| {
                    metrics.http_request_finished(route, took)
                }))
            })
        }
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route(
            "/v1/documents",
            post(add_documents).delete(delete_documents),
        )
        .route("/v1/cache/clear", post(clear_cache))
        .route("/v1/usage", get(usage))
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(live))
        .fallback(no_route)
        .method_not_allowed_fallback(|| async { HttpError::wrong_method() })
        .route_layer(counted)
        .with_state(state)
}

/// The routes, as metrics label them.
const ROUTES: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/models",
    "/v1/documents",
    "/v1/cache/clear",
    "/v1/usage",
    "/health",
    "/readyz",
    "/livez",
];

/// A running HTTP surface; dropping it starts its graceful shutdown.
#[derive(Debug)]
pub struct HttpServer {
    address: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl HttpServer {
    /// Serves `state` on the connections of `incoming` (plaintext or TLS) until stopped.
    pub fn start(incoming: Incoming, state: HttpState, metrics: Metrics) -> HttpServer {
        let address = incoming.local_addr();
        let stop = CancellationToken::new();
        let app = router(state, metrics).into_make_service_with_connect_info::<PeerInfo>();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(incoming, app)
                .with_graceful_shutdown(shutdown)
                .await
        });
        tracing::info!(http_address = %address, "serving the OpenAI-compatible HTTP API");
        HttpServer {
            address,
            stop,
            task: Some(task),
        }
    }

    /// The address served.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes the listener, lets open requests finish for up to `grace`, then returns.
    pub fn stop(mut self, grace: std::time::Duration) -> impl Future<Output = ()> {
        self.stop.cancel();
        let task = self.task.take();
        async move {
            let Some(task) = task else {
                return;
            };
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(%error, "the HTTP server failed"),
                Ok(Err(error)) => tracing::warn!(%error, "the HTTP server task failed"),
                Err(_) => tracing::warn!("HTTP connections still open at the end of the drain"),
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn chat_completions(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    request: Request,
) -> Result<Response, HttpError> {
    let (parts, body) = request.into_parts();
    let (engine, call, caller, slot) = state
        .enter(&parts.headers, &peer, Some(Method::Query))
        .await?;
    let request: chat::ChatRequest = wire::parse(body, state.settings.max_body_bytes).await?;
    let chat = chat::chat_query(request)?;
    caller.check_collection(chat.query.collection.as_deref().unwrap_or(""))?;
    let parent = telemetry::extract_parent(&parts.headers);
    let deadline = state
        .settings
        .request_timeout
        .filter(|_| !chat.stream)
        .map(|timeout| Instant::now() + timeout);
    let held = chat::Held { call, slot, caller };
    chat::complete(engine, chat, held, parent, deadline).await
}

async fn models(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let (engine, _call, caller, _slot) = state.enter(&headers, &peer, None).await?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    Ok(Json(rest::models(&engine, &caller, created).await?))
}

async fn add_documents(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    request: Request,
) -> Result<Json<serde_json::Value>, HttpError> {
    let (parts, body) = request.into_parts();
    let (engine, _call, caller, _slot) = state
        .enter(&parts.headers, &peer, Some(Method::AddDocuments))
        .await?;
    let request: rest::AddDocuments = wire::parse(body, state.settings.max_body_bytes).await?;
    caller.check_collection(request.collection())?;
    Ok(Json(rest::add_documents(&engine, request).await?))
}

async fn delete_documents(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    request: Request,
) -> Result<Json<serde_json::Value>, HttpError> {
    let (parts, body) = request.into_parts();
    let (engine, _call, caller, _slot) = state
        .enter(&parts.headers, &peer, Some(Method::DeleteDocuments))
        .await?;
    let request: rest::DeleteDocuments = wire::parse(body, state.settings.max_body_bytes).await?;
    caller.check_collection(request.collection())?;
    Ok(Json(rest::delete_documents(&engine, request).await?))
}

async fn clear_cache(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    request: Request,
) -> Result<Json<serde_json::Value>, HttpError> {
    let (parts, body) = request.into_parts();
    let (engine, _call, caller, _slot) = state
        .enter(&parts.headers, &peer, Some(Method::ClearCache))
        .await?;
    let request =
        wire::parse_optional::<rest::ClearCache>(body, state.settings.max_body_bytes).await?;
    caller.check_clear(request.collection())?;
    Ok(Json(rest::clear_cache(&engine, request).await?))
}

async fn usage(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let (engine, _call, caller, _slot) =
        state.enter(&headers, &peer, Some(Method::GetStats)).await?;
    Ok(Json(rest::usage(&engine, &caller).await?))
}

/// `/health` and `/readyz`: 200 while the gRPC health reports SERVING (the store is open and
/// the server is not draining), 503 otherwise. Like gRPC health, it needs no key.
async fn health(State(state): State<HttpState>) -> Response {
    let serving = state.admission.is_ready();
    let status = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if serving { "healthy" } else { "not_serving" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
    });
    (status, Json(body)).into_response()
}

/// `/livez`: the process answers.
async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

async fn no_route(request: Request) -> HttpError {
    HttpError::no_route(request.uri().path())
}
