//! Server bootstrap: builds the engine from the configuration, serves the gRPC services with
//! health and reflection, and shuts down gracefully.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::util::option_layer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::{
    AccessError, FrontDoor, FrontDoorSettings, QuerySlots, Rate, RateLimiter, SlotSettings,
    limit::RedisLimiter,
};
use crate::api::{Admission, DeepRecallServer, DeepRecallService, pb};
use crate::cache::{
    Cache, CacheError, CacheLevel, MemoryCache, MemoryCacheConfig, NoCache, RedisCache,
    RedisCacheConfig, SqliteCache, SqliteCacheConfig,
};
use crate::config::{CacheBackend, CacheConfig, Config, RateLimitStore, TelemetryConfig};
use crate::embed::EmbedError;
use crate::engine::{Engine, EngineParts, EngineTelemetry, RerankStage};
use crate::http::{HttpServer, HttpSettings, HttpState};
use crate::llm::LlmError;
use crate::rerank::RerankError;
use crate::store::StoreError;
use crate::telemetry::trace_log::{DEFAULT_QUEUE_LINES, TraceLogSettings};
use crate::telemetry::{self, Metrics, TraceLog};
use crate::transport::tls::{ALPN_GRPC, ALPN_HTTP, watch};
use crate::transport::{Incoming, IncomingSettings, ServerTls, TlsError, TlsFiles};

/// Name under which health reports the DeepRecall service.
pub const SERVICE_NAME: &str = "deeprecall.v1.DeepRecall";

/// Longest wait at start-up for a Redis rate limiter's first connection.
const LIMITER_READY_WAIT: Duration = Duration::from_secs(2);

/// Time running queries get to deliver their partial results once the grace period is over.
const ABORT_GRACE: Duration = Duration::from_secs(5);

pub mod front_door;
pub mod models;
pub mod retrieval;
mod settings;
mod store_health;

pub use settings::check_settings;

use front_door::FrontDoorLayer;

/// Errors of the server layer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A model backend is misconfigured.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The embedder cannot be built.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The reranker cannot be built.
    #[error(transparent)]
    Rerank(#[from] RerankError),
    /// The cache could not be opened.
    #[error("cannot open the cache: {0}")]
    Cache(#[from] CacheError),
    /// The transport failed.
    #[error("transport failure: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Listening failed.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The API keys are invalid.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A setting of the server itself is invalid.
    #[error("invalid server setting: {0}")]
    Setting(String),
    /// The TLS files cannot be served.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Reads and checks the TLS files the configuration names; `None` when TLS is off. `serve`
/// and `serve --check-config` both load them here.
pub fn load_tls(config: &Config) -> Result<Option<Arc<ServerTls>>, ServerError> {
    Ok(TlsFiles::from_config(&config.tls)?
        .map(ServerTls::load)
        .transpose()?)
}

/// How one port accepts: TLS when configured, with its ALPN protocols and, when `ask_client`,
/// a client certificate under mutual TLS; a handshake deadline either way.
fn incoming(
    listener: TcpListener,
    config: &Config,
    tls: Option<&ServerTls>,
    alpn: &[&[u8]],
    ask_client: bool,
) -> Result<Incoming, ServerError> {
    let keepalive = Duration::from_secs(config.server.http2_keepalive_seconds.max(1));
    let settings = IncomingSettings {
        tls: tls
            .map(|tls| tls.server_config(alpn, ask_client))
            .transpose()?,
        handshake_timeout: Duration::from_secs(config.server.handshake_timeout_seconds),
        tcp_keepalive: Some(keepalive),
    };
    Ok(Incoming::start(listener, settings)?)
}

/// Builds the front door the configuration describes: keys loaded and checked, the rate
/// limiter (connecting to Redis in the background if it is the store) and the query slots.
pub fn build_front_door(config: &Config, metrics: &Metrics) -> Result<Arc<FrontDoor>, ServerError> {
    check_settings(config)?;
    let limits = &config.limits;
    let limiter = match limits.store {
        RateLimitStore::Memory => RateLimiter::in_memory(limits.max_tracked_callers),
        RateLimitStore::Redis => RateLimiter::in_redis(
            RedisLimiter::open(
                &limits.redis_url,
                &limits.redis_prefix,
                Duration::from_millis(limits.redis_timeout_ms.max(1)),
            )
            .map_err(|reason| ServerError::Setting(format!("limits.redis_url: {reason}")))?,
            limits.max_tracked_callers,
            limits.fallback_replicas,
        ),
    };
    let slots = QuerySlots::new(SlotSettings {
        max_running: limits.max_concurrent_queries,
        max_waiting: limits.max_queued_queries,
        max_wait: Duration::from_millis(limits.max_queue_wait_ms),
    });
    let door = FrontDoor::new(
        FrontDoorSettings {
            keys: config.auth.keys.clone(),
            keys_file: config.auth.keys_file.clone(),
            exempt_services: config.auth.exempt_services.clone(),
            default_rate: Rate::from_settings(limits.requests_per_minute, limits.burst),
            refused_rate: Rate::from_settings(limits.refused_per_minute, limits.refused_burst),
        },
        limiter,
        slots,
    )?
    .with_metrics(metrics.clone());
    Ok(Arc::new(door))
}

/// The CORS policy of gRPC-Web: the allowed origins may call with the key headers and read the
/// gRPC status headers. `None` when no origin is allowed.
fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin).map_err(|_| {
                    ServerError::Setting(format!(
                        "server.cors_allow_origins: {origin:?} is not a valid origin"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let header = HeaderName::from_static;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([http::Method::POST, http::Method::OPTIONS])
            .allow_headers([
                header("content-type"),
                header("x-grpc-web"),
                header("x-user-agent"),
                header("grpc-timeout"),
                header("authorization"),
                header("x-api-key"),
                header("traceparent"),
            ])
            .expose_headers([
                header("grpc-status"),
                header("grpc-message"),
                header("grpc-status-details-bin"),
                header("retry-after"),
            ])
            .max_age(Duration::from_secs(24 * 3600)),
    ))
}

/// Keeps the process alive when a write crosses a file-size limit (`ulimit -f`, systemd's
/// `LimitFSIZE`): the kernel then sends SIGXFSZ, whose default action kills the process, and
/// only when the signal is caught or ignored does the write fail with `EFBIG` instead, which
/// the store reports as a full disk on the one call that did not fit. Tokio's handler, once
/// installed, stays for the life of the process, so the listener itself is not kept.
#[cfg(unix)]
fn survive_file_size_limit() {
    use tokio::signal::unix::{SignalKind, signal};
    if let Err(error) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
        tracing::warn!(%error, "cannot catch SIGXFSZ: a file-size limit would end the process");
    }
}

#[cfg(not(unix))]
fn survive_file_size_limit() {}

/// Re-reads the key file on every SIGHUP until the returned task is aborted; connections and
/// calls in flight are untouched, and a file that fails to load keeps the keys in force.
#[cfg(unix)]
fn reload_keys_on_hangup(door: Arc<FrontDoor>) -> Option<tokio::task::AbortHandle> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: the key file will not be reloaded");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match door.reload_keys() {
                Ok(count) => tracing::info!(keys = count, "SIGHUP: API keys reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: API keys not reloaded; the old keys stay")
                }
            }
        }
    });
    Some(task.abort_handle())
}

#[cfg(not(unix))]
fn reload_keys_on_hangup(_door: Arc<FrontDoor>) -> Option<tokio::task::AbortHandle> {
    None
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The embedder and the reranker, built before anything listens so that a misconfiguration
/// fails start-up at once.
struct Retrieval {
    embedder: Arc<dyn crate::embed::Embedder>,
    reranker: Option<Arc<dyn crate::rerank::Reranker>>,
}

/// Builds the engine the configuration describes over the given models, opening the store.
async fn build_engine(
    config: &Config,
    models: models::Models,
    retrieval: Retrieval,
    telemetry: EngineTelemetry,
) -> Result<Engine, ServerError> {
    // Retries while a postgres database cannot be reached; health stays NOT_SERVING meanwhile.
    let store =
        retrieval::open_store(config, retrieval.embedder, config.store.read_connections).await?;
    let (results, searches) = cache_levels(&config.cache).await?;
    let engine = Engine::with_telemetry(
        EngineParts {
            store,
            model: models.model,
            sub_model: models.sub_model,
            prices: models.prices,
            results,
            searches,
            rerank: retrieval.reranker.map(|reranker| RerankStage {
                reranker,
                candidates: config.rerank.candidates.max(1),
            }),
        },
        config.engine.clone(),
        telemetry.clone(),
    );
    // The documents gauge starts from what is on disk; writes keep it current.
    match engine.stats().await {
        Ok(stats) => {
            for collection in stats.collections {
                telemetry
                    .metrics
                    .set_documents(&collection.name, collection.document_count);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot count documents for the metrics"),
    }
    Ok(engine)
}

/// Builds the result and search cache levels of the configured backend.
async fn cache_levels(config: &CacheConfig) -> Result<(CacheLevel, CacheLevel), ServerError> {
    let level = |name, cache: Arc<dyn Cache>, ttl_seconds| CacheLevel {
        name,
        cache,
        ttl: Duration::from_secs(ttl_seconds),
    };
    let memory = || -> Arc<dyn Cache> {
        Arc::new(MemoryCache::new(MemoryCacheConfig {
            max_entries: config.max_entries,
            max_bytes: config.max_bytes,
        }))
    };
    let (results, searches): (Arc<dyn Cache>, Arc<dyn Cache>) = match config.backend {
        CacheBackend::None => (Arc::new(NoCache), Arc::new(NoCache)),
        CacheBackend::Memory => (memory(), memory()),
        CacheBackend::Sqlite => {
            let sqlite = |path: PathBuf| {
                SqliteCache::open(SqliteCacheConfig {
                    path,
                    max_entries: config.max_entries,
                    ..SqliteCacheConfig::default()
                })
            };
            let mut search_path = config.path.clone().into_os_string();
            search_path.push("-search");
            (
                Arc::new(sqlite(config.path.clone()).await?),
                Arc::new(sqlite(PathBuf::from(search_path)).await?),
            )
        }
        CacheBackend::Redis => {
            let redis = |level: &str| {
                RedisCache::open(RedisCacheConfig {
                    url: config.redis_url.clone(),
                    prefix: format!("{}:{level}", config.redis_prefix),
                    operation_timeout: Duration::from_millis(config.redis_timeout_ms),
                })
            };
            (
                Arc::new(redis("result").await?),
                Arc::new(redis("search").await?),
            )
        }
    };
    Ok((
        level("result", results, config.ttl_seconds),
        level("search", searches, config.search_ttl_seconds),
    ))
}

/// Serves until `shutdown` resolves, then shuts down gracefully: health turns NOT_SERVING, new
/// calls are refused with UNAVAILABLE while the listener stays open, in-flight calls get
/// `shutdown_grace_seconds` to finish, queries still running after that end with a partial
/// result, and the listener closes once the calls have ended. Health answers from the start; the DeepRecall
/// service reports SERVING once the store is open.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    survive_file_size_limit();
    let tls = load_tls(&config)?;
    let metrics = Metrics::new();
    let trace_log = open_trace_log(&config.telemetry, &metrics)?;
    let metrics_server = match config.telemetry.metrics_listen.trim() {
        "" => None,
        address => {
            let metrics_listener = TcpListener::bind(address).await.map_err(|error| {
                ServerError::Setting(format!(
                    "telemetry.metrics_listen: cannot listen on {address}: {error}"
                ))
            })?;
            let metrics_tls = tls.as_deref().filter(|_| config.tls.metrics);
            tracing::info!(
                metrics_address = %metrics_listener.local_addr()?,
                tls = metrics_tls.is_some(),
                "serving Prometheus metrics on /metrics"
            );
            let metrics_incoming =
                incoming(metrics_listener, &config, metrics_tls, ALPN_HTTP, false)?;
            let stop = CancellationToken::new();
            let task = tokio::spawn(telemetry::serve_metrics(
                metrics_incoming,
                metrics.clone(),
                stop.clone().cancelled_owned(),
            ));
            Some((stop, task))
        }
    };
    let telemetry = EngineTelemetry {
        metrics,
        trace_log: trace_log.clone(),
    };
    let _tls_watched = tls.as_ref().map(|tls| {
        if let Some(not_after) = tls.not_after() {
            telemetry.metrics.set_tls_certificate_expiry(not_after);
        }
        watch(
            Arc::clone(tls),
            Duration::from_secs(config.tls.reload_interval_seconds),
            telemetry.metrics.clone(),
        )
    });
    let outcome = serve_calls(config, listener, shutdown, telemetry, tls).await;
    if let Some((stop, task)) = metrics_server {
        stop.cancel();
        let _ = task.await;
    }
    if let Some(trace_log) = trace_log
        && let Err(error) = trace_log.flush().await
    {
        tracing::warn!(%error, "the trace log lost lines at shutdown");
    }
    outcome
}

/// Opens the trace log the configuration names, if any; a path that cannot be written fails
/// start-up rather than losing every line later.
fn open_trace_log(
    config: &TelemetryConfig,
    metrics: &Metrics,
) -> Result<Option<TraceLog>, ServerError> {
    let path = config.trace_log.trim();
    if path.is_empty() {
        return Ok(None);
    }
    let settings = TraceLogSettings {
        path: PathBuf::from(path),
        max_bytes: config.trace_log_max_bytes.max(1),
        keep_files: config.trace_log_keep_files,
        queue_lines: DEFAULT_QUEUE_LINES,
    };
    TraceLog::open_with(settings, metrics.trace_log_dropped())
        .map(Some)
        .map_err(|error| ServerError::Setting(format!("telemetry.trace_log {path}: {error}")))
}

async fn serve_calls(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    telemetry: EngineTelemetry,
    tls: Option<Arc<ServerTls>>,
) -> Result<(), ServerError> {
    // Models first: a missing key or model fails start-up at once, before anything listens.
    let models = models::build(&config.llm)?;
    let metering = retrieval::Metering::from_config(&config, telemetry.metrics.clone());
    let retrieval = Retrieval {
        embedder: retrieval::build_embedder(&config, Some(&metering))?,
        reranker: retrieval::build_reranker(&config, Some(&metering))?,
    };
    let door = build_front_door(&config, &telemetry.metrics)?;
    let cors = if config.server.grpc_web {
        cors_layer(&config.server.cors_allow_origins)?
    } else {
        None
    };
    let address = listener.local_addr()?;
    if door.auth_enabled() {
        tracing::info!(keys = door.key_count(), "API keys required");
    } else if !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "no API keys configured: anyone who can reach this address can query and write; \
             set auth.keys_file (--keys-file)"
        );
    }
    let _reloader = AbortOnDrop(
        config
            .auth
            .keys_file
            .is_some()
            .then(|| reload_keys_on_hangup(Arc::clone(&door)))
            .flatten(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let admission = Admission::default();
    let service =
        DeepRecallServer::new(DeepRecallService::new(admission.clone(), Arc::clone(&door)))
            .max_decoding_message_size(config.server.max_request_bytes)
            .max_encoding_message_size(config.server.max_response_bytes);

    let http = start_http(
        &config,
        &admission,
        &door,
        &telemetry.metrics,
        tls.as_deref(),
    )
    .await?;

    let (drain, drained) = oneshot::channel::<()>();
    let keepalive = Duration::from_secs(config.server.http2_keepalive_seconds.max(1));
    // gRPC-Web from browsers may come over HTTP/1.1.
    let alpn: &[&[u8]] = if config.server.grpc_web {
        ALPN_HTTP
    } else {
        ALPN_GRPC
    };
    let incoming = incoming(listener, &config, tls.as_deref(), alpn, true)?;
    let mut builder = Server::builder()
        .accept_http1(config.server.grpc_web)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(
            config.server.http2_keepalive_timeout_seconds.max(1),
        )))
        .max_concurrent_streams(config.server.max_concurrent_streams.max(1));
    if config.server.request_timeout_seconds > 0 {
        builder = builder.timeout(Duration::from_secs(config.server.request_timeout_seconds));
    }
    let grpc_web = config.server.grpc_web.then(tonic_web::GrpcWebLayer::new);
    let server = builder
        .layer(option_layer(cors))
        .layer(option_layer(grpc_web))
        .layer(FrontDoorLayer::new(
            Arc::clone(&door),
            telemetry.metrics.clone(),
        ))
        .layer(crate::api::wire::SpecStatusLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = drained.await;
        });
    let mut server = std::pin::pin!(server);
    tracing::info!(
        %address,
        grpc_web = config.server.grpc_web,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|tls| tls.mutual()),
        "serving gRPC"
    );

    let opening = build_engine(&config, models, retrieval, telemetry);
    let mut opening = std::pin::pin!(opening);
    let mut shutdown = std::pin::pin!(shutdown);
    let engine = tokio::select! {
        outcome = &mut server => return Ok(outcome?),
        () = &mut shutdown => None,
        engine = &mut opening => Some(engine?),
    };
    if let Some(engine) = &engine {
        if !door.limiter().wait_until_ready(LIMITER_READY_WAIT).await {
            tracing::warn!(
                "the redis rate limiter is not connected yet: each replica limits alone until it is"
            );
        }
        admission.open(engine.clone());
        set_health(&health, ServingStatus::Serving).await;
        tracing::info!(data_dir = %config.store.data_dir.display(), "store open; serving queries");
        // Dropped at the drain, so that it cannot report SERVING again after shutdown began.
        let _store_followed = (config.store.health_check_interval_ms > 0).then(|| {
            AbortOnDropHandle::new(tokio::spawn(store_health::follow_store(
                engine.clone(),
                health.clone(),
                Duration::from_millis(config.store.health_check_interval_ms),
            )))
        });
        tokio::select! {
            outcome = &mut server => return Ok(outcome?),
            () = &mut shutdown => {}
        }
    }

    // The drain: the listener stays open, so that probes and clients see health NOT_SERVING
    // and new calls refused with UNAVAILABLE, as documented, instead of a refused connection;
    // it closes only once the calls in flight have ended.
    tracing::info!("shutting down: refusing new calls, letting in-flight calls finish");
    admission.start_draining();
    set_health(&health, ServingStatus::NotServing).await;
    let grace =
        Duration::try_from_secs_f64(config.server.shutdown_grace_seconds).unwrap_or(Duration::ZERO);
    let ended_in_grace = tokio::select! {
        outcome = &mut server => return Ok(outcome?),
        ended = tokio::time::timeout(grace, admission.calls_ended()) => ended.is_ok(),
    };
    if !ended_in_grace {
        tracing::warn!(?grace, "grace period over: stopping running queries");
        if let Some(engine) = &engine {
            engine.abort_runs();
        }
        let ended = tokio::select! {
            outcome = &mut server => return Ok(outcome?),
            ended = tokio::time::timeout(ABORT_GRACE, admission.calls_ended()) => ended.is_ok(),
        };
        if !ended {
            tracing::warn!("calls still open after stopping; closing them");
        }
    }
    // Closes the listener and tells open connections to go (GOAWAY); what is still on its way
    // to a caller gets there.
    let _ = drain.send(());
    if let Some(http) = http {
        http.stop(ABORT_GRACE).await;
    }
    match tokio::time::timeout(ABORT_GRACE, &mut server).await {
        Ok(outcome) => Ok(outcome?),
        Err(_) => {
            tracing::warn!("connections still open at the end of the drain; closing them");
            Ok(())
        }
    }
}

/// Starts the OpenAI-compatible HTTP surface when `server.http_listen` names an address.
async fn start_http(
    config: &Config,
    admission: &Admission,
    door: &Arc<FrontDoor>,
    metrics: &Metrics,
    tls: Option<&ServerTls>,
) -> Result<Option<HttpServer>, ServerError> {
    let address = config.server.http_listen.trim();
    if address.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(address).await.map_err(|error| {
        ServerError::Setting(format!(
            "server.http_listen: cannot listen on {address}: {error}"
        ))
    })?;
    let timeout = config.server.request_timeout_seconds;
    let settings = HttpSettings {
        max_body_bytes: config.server.http_max_body_bytes,
        request_timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
    };
    let state = HttpState::new(admission.clone(), Arc::clone(door), settings);
    let incoming = incoming(listener, config, tls, ALPN_HTTP, true)?;
    Ok(Some(HttpServer::start(incoming, state, metrics.clone())))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_replica_sharing_the_redis_limit_is_refused_with_the_setting_named() {
        let mut config = Config::default();
        config.limits.fallback_replicas = 0;
        let Err(error) = build_front_door(&config, &Metrics::new()) else {
            panic!("zero replicas accepted");
        };
        assert!(
            error.to_string().contains("limits.fallback_replicas"),
            "{error}"
        );
        config.limits.fallback_replicas = 3;
        assert!(build_front_door(&config, &Metrics::new()).is_ok());
    }
}
