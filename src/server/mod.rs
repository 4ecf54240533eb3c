//! Server bootstrap: builds the engine from the configuration, serves the gRPC services with
//! health and reflection, and shuts down gracefully.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::{Admission, DeepRecallServer, DeepRecallService, pb};
use crate::cache::{
    Cache, CacheError, CacheLevel, MemoryCache, MemoryCacheConfig, NoCache, RedisCache,
    RedisCacheConfig, SqliteCache, SqliteCacheConfig,
};
use crate::config::{CacheBackend, CacheConfig, Config};
use crate::embed::HashingEmbedder;
use crate::engine::{Engine, EngineParts};
use crate::llm::LlmError;
use crate::store::{EmbeddedStore, EmbeddedStoreConfig, StoreError};

/// Name under which health reports the DeepRecall service.
pub const SERVICE_NAME: &str = "deeprecall.v1.DeepRecall";

/// Time running queries get to deliver their partial results once the grace period is over.
const ABORT_GRACE: Duration = Duration::from_secs(5);

mod models;

/// Errors of the server layer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A model backend is misconfigured.
    #[error(transparent)]
    Llm(#[from] LlmError),
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
}

/// Builds the engine the configuration describes over the given models, opening the store.
async fn build_engine(config: &Config, models: models::Models) -> Result<Engine, ServerError> {
    let embedder = Arc::new(HashingEmbedder::new(config.store.embedding_dimension));
    let store = EmbeddedStore::open(
        EmbeddedStoreConfig {
            data_dir: config.store.data_dir.clone(),
            read_connections: config.store.read_connections,
        },
        embedder,
    )
    .await?;
    let (results, searches) = cache_levels(&config.cache).await?;
    Ok(Engine::new(
        EngineParts {
            store: Arc::new(store),
            model: models.model,
            sub_model: models.sub_model,
            prices: models.prices,
            results,
            searches,
        },
        config.engine.clone(),
    ))
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
                    ..RedisCacheConfig::default()
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
/// calls are refused, in-flight calls get `shutdown_grace_seconds` to finish, and queries still
/// running after that end with a partial result. Health answers from the start; the DeepRecall
/// service reports SERVING once the store is open.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // Models first: a missing key or model fails start-up at once, before anything listens.
    let models = models::build(&config.llm)?;
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
    let service = DeepRecallServer::new(DeepRecallService::new(admission.clone()))
        .max_decoding_message_size(config.server.max_request_bytes)
        .max_encoding_message_size(config.server.max_response_bytes);

    let address = listener.local_addr()?;
    let (drain, drained) = oneshot::channel::<()>();
    let keepalive = Duration::from_secs(config.server.http2_keepalive_seconds.max(1));
    // Without TCP_NODELAY the small frames of a stream wait for delayed ACKs (~40 ms each);
    // tonic sets it only on listeners it binds itself.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(keepalive));
    let server = Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = drained.await;
        });
    let mut server = std::pin::pin!(server);
    tracing::info!(%address, "serving gRPC");

    let opening = build_engine(&config, models);
    let mut opening = std::pin::pin!(opening);
    let mut shutdown = std::pin::pin!(shutdown);
    let engine = tokio::select! {
        outcome = &mut server => return Ok(outcome?),
        () = &mut shutdown => None,
        engine = &mut opening => Some(engine?),
    };
    if let Some(engine) = &engine {
        admission.open(engine.clone());
        set_health(&health, ServingStatus::Serving).await;
        tracing::info!(data_dir = %config.store.data_dir.display(), "store open; serving queries");
        tokio::select! {
            outcome = &mut server => return Ok(outcome?),
            () = &mut shutdown => {}
        }
    }

    tracing::info!("shutting down: refusing new calls, letting in-flight calls finish");
    admission.start_draining();
    set_health(&health, ServingStatus::NotServing).await;
    let _ = drain.send(());
    let grace =
        Duration::try_from_secs_f64(config.server.shutdown_grace_seconds).unwrap_or(Duration::ZERO);
    if let Ok(outcome) = tokio::time::timeout(grace, &mut server).await {
        return Ok(outcome?);
    }
    tracing::warn!(?grace, "grace period over: stopping running queries");
    if let Some(engine) = &engine {
        engine.abort_runs();
    }
    match tokio::time::timeout(ABORT_GRACE, &mut server).await {
        Ok(outcome) => Ok(outcome?),
        Err(_) => {
            tracing::warn!("calls still open after stopping; closing them");
            Ok(())
        }
    }
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
