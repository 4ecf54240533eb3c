//! The sections of the configuration, each with its defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::access::KeyEntry;
use crate::secret::Secret;

/// Settings of the gRPC server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest response message sent, in bytes.
    pub max_response_bytes: usize,
    /// Seconds in-flight calls get to finish after a shutdown signal; past it, running queries
    /// end with a partial result.
    pub shutdown_grace_seconds: f64,
    /// Seconds between HTTP/2 keepalive pings to idle clients.
    pub http2_keepalive_seconds: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_seconds: u64,
    /// Seconds a new connection has to send the start of its first request (the HTTP/2
    /// preface) before it is closed. 0 for no limit.
    pub handshake_timeout_seconds: u64,
    /// Calls open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Seconds a handler may take to answer (to start its stream, for streaming calls); a
    /// shorter `grpc-timeout` from the caller wins. 0 for no limit.
    pub request_timeout_seconds: u64,
    /// Serve gRPC-Web (HTTP/1.1 and HTTP/2) on the same port, for browsers.
    pub grpc_web: bool,
    /// Origins browsers may call from over gRPC-Web; `["*"]` for any. Empty allows no
    /// cross-origin caller.
    pub cors_allow_origins: Vec<String>,
    /// Address of the OpenAI-compatible HTTP API, e.g. `0.0.0.0:8080`; empty serves none.
    pub http_listen: String,
    /// Largest HTTP request body accepted, in bytes.
    pub http_max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_request_bytes: 64 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            shutdown_grace_seconds: 30.0,
            http2_keepalive_seconds: 60,
            http2_keepalive_timeout_seconds: 20,
            handshake_timeout_seconds: 10,
            max_concurrent_streams: 256,
            request_timeout_seconds: 300,
            grpc_web: false,
            cors_allow_origins: Vec::new(),
            http_listen: String::new(),
            http_max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// TLS on the server's own ports. Off unless `cert` and `key` are both set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the server's certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM file of the CAs whose client certificates are accepted: mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Whether a client must present a certificate once `client_ca` is set.
    pub client_auth: ClientAuth,
    /// Seconds between looks at the files for a change (a rotated Kubernetes Secret); 0 reloads
    /// on SIGHUP only.
    pub reload_interval_seconds: u64,
    /// Serve the Prometheus port over TLS too, with the same certificate (no client
    /// certificate asked).
    pub metrics: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            client_ca: None,
            client_auth: ClientAuth::Required,
            reload_interval_seconds: 10,
            metrics: false,
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

/// Whether a client certificate is required under mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A connection without a certificate signed by `client_ca` is refused in the handshake.
    #[default]
    Required,
    /// A certificate is checked when presented; a connection without one must use a key.
    Optional,
}

/// Where documents are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// SQLite under `data_dir`, owned by this process: one replica.
    #[default]
    Embedded,
    /// PostgreSQL with pgvector at `database_url`, shared by every replica.
    Postgres,
}

/// How the PostgreSQL connection uses TLS, as libpq's `sslmode` means it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain TCP otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS, the certificate not checked (libpq's meaning, without a CA file).
    Require,
    /// TLS with a certificate signed by the CA file (or the system roots), any host name.
    VerifyCa,
    /// TLS with a certificate signed by the CA file (or the system roots) for the host.
    VerifyFull,
}

/// How the postgres store finds the nearest vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorIndex {
    /// pgvector's HNSW index: searches stay fast as collections grow. Entering the graph
    /// costs milliseconds a document, so written vectors enter it in the background and are
    /// ranked exactly until they have.
    #[default]
    Hnsw,
    /// No vector index: each search scans its collection's vectors exactly, and grows with
    /// the collection (BENCHMARKS.md).
    Exact,
}

/// Whether pgvector's HNSW scans go back into the graph until enough rows pass a search's
/// filter (`hnsw.iterative_scan`, pgvector 0.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IterativeScan {
    /// The scan continues past `hnsw.ef_search` until enough rows pass, returning them in
    /// roughly the graph's order; the exact re-ranking restores the order.
    #[default]
    RelaxedOrder,
    /// The same, in exact order: slower, and nothing the re-ranking needs.
    StrictOrder,
    /// No iterative scans: one pass of the graph, so a selective filter may leave fewer vector
    /// candidates (the keyword ranking is unaffected). The setting is then not sent at all,
    /// which is what pgvector 0.7, without iterative scans, needs to start sessions without a
    /// warning.
    Off,
}

impl IterativeScan {
    /// The value of `hnsw.iterative_scan`, or None where nothing is sent.
    pub fn setting(self) -> Option<&'static str> {
        match self {
            IterativeScan::RelaxedOrder => Some("relaxed_order"),
            IterativeScan::StrictOrder => Some("strict_order"),
            IterativeScan::Off => None,
        }
    }
}

/// Settings of the document store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Which store: `embedded` or `postgres`.
    pub backend: StoreBackend,
    /// Directory of the SQLite database (embedded store).
    pub data_dir: PathBuf,
    /// SQLite connections for reads (embedded store).
    pub read_connections: usize,
    /// Dimensions of the feature-hashing embedder.
    pub embedding_dimension: usize,
    /// `postgres://user@host:port/database?…` of the postgres store. A password in it is
    /// accepted, but `database_password_file` or `PGPASSWORD` keep it out of the URL.
    pub database_url: Secret,
    /// File holding the database password (a mounted Kubernetes Secret); trailing newlines are
    /// ignored.
    pub database_password_file: Option<PathBuf>,
    /// Connections in the pool of each replica.
    pub pool_size: usize,
    /// Seconds to open one connection, and to wait for a free one from the pool.
    pub connect_timeout_seconds: f64,
    /// Seconds one SQL statement may run before PostgreSQL cancels it.
    pub statement_timeout_seconds: f64,
    /// Longest wait, in seconds, between attempts to reach the database at start.
    pub connect_retry_max_seconds: f64,
    /// Vector index of the postgres store: `hnsw` or `exact`. Every replica must agree: the
    /// index is created, or dropped, at start.
    pub vector_index: VectorIndex,
    /// Postgres store with `hnsw`: tasks of this replica moving written vectors into the
    /// graph, each holding one pooled connection while it works. 0 leaves the work to other
    /// replicas (at least one must do it). Below `pool_size`, so searches keep connections.
    pub vector_index_workers: usize,
    /// Postgres store with `hnsw`: `hnsw.ef_search`, the candidates the graph keeps while
    /// searching, 1 to 1,000; more finds more of the true neighbours, more slowly. Unset: 40
    /// for the hashing embedder, whose folded graph only adds to the keyword matches ranked
    /// exactly, 100 for a dense embedder, whose neighbours the graph alone finds.
    pub hnsw_ef_search: Option<usize>,
    /// Postgres store with `hnsw`: pgvector's `hnsw.iterative_scan`, `relaxed_order` (the
    /// default), `strict_order` or `off`; `off` on pgvector 0.7, which has no iterative scans.
    pub hnsw_iterative_scan: IterativeScan,
    /// TLS: disable, prefer, require, verify-ca or verify-full.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates that verify-ca and verify-full trust; the system roots
    /// when unset.
    pub ssl_ca_file: Option<PathBuf>,
    /// Milliseconds between checks that the store is reachable; while it is not, the service's
    /// health reports NOT_SERVING (readiness), the whole server's stays SERVING (liveness).
    /// 0 turns the checks off.
    pub health_check_interval_ms: u64,
    /// Rank offset k of the fusion of the vector ranking with BM25 (each passage scores
    /// weight / (k + rank) from each ranking that lists it). Unset: 60 for the hashing
    /// embedder, 10 for a dense one.
    pub rrf_k: Option<f64>,
    /// Weight of the vector ranking against BM25's 1. Unset: 1 for the hashing embedder, 3 for
    /// a dense one.
    pub vector_weight: Option<f64>,
    /// Embedded store: live documents from which a collection of dense vectors (openai,
    /// local) is searched through its HNSW graph instead of a full scan.
    pub hnsw_min_documents: usize,
    /// The standard `PG*` variables of the environment (`PGHOST`, `PGPASSWORD`, …), which fill
    /// in what the URL leaves out. Filled by [`Config::load`], never from a file.
    #[serde(skip)]
    pub libpq_env: BTreeMap<String, Secret>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            data_dir: PathBuf::from("./deeprecall-data"),
            read_connections: 4,
            embedding_dimension: crate::embed::hashing::DEFAULT_DIMENSION,
            database_url: Secret::default(),
            database_password_file: None,
            pool_size: 16,
            connect_timeout_seconds: 5.0,
            statement_timeout_seconds: 30.0,
            connect_retry_max_seconds: 30.0,
            vector_index: VectorIndex::Hnsw,
            vector_index_workers: 1,
            hnsw_ef_search: None,
            hnsw_iterative_scan: IterativeScan::RelaxedOrder,
            sslmode: SslMode::Prefer,
            ssl_ca_file: None,
            health_check_interval_ms: 5_000,
            rrf_k: None,
            vector_weight: None,
            hnsw_min_documents: 50_000,
            libpq_env: BTreeMap::new(),
        }
    }
}

/// The libpq variables read from the environment for the postgres store.
pub const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGAPPNAME",
];

/// Model backends available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The offline extractive reader.
    #[default]
    Extractive,
    /// Any OpenAI-compatible chat completions API.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

/// Settings of the model backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Root model backend.
    pub backend: Backend,
    /// Model name (for Azure OpenAI, the deployment name).
    pub model: String,
    /// API root; empty takes the backend's public endpoint.
    pub base_url: String,
    /// API key. Prefer `DEEPRECALL_LLM_API_KEY` or `api_key_file` over writing it here.
    pub api_key: Secret,
    /// File holding the API key (its first line).
    pub api_key_file: Option<PathBuf>,
    /// Headers added to every model request.
    pub headers: BTreeMap<String, String>,
    /// Seconds to establish a connection.
    pub connect_timeout_seconds: f64,
    /// Seconds for a whole model request.
    pub request_timeout_seconds: f64,
    /// Attempts per model call, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds; doubles each time, with full jitter.
    pub retry_base_ms: u64,
    /// Longest backoff, in milliseconds.
    pub retry_max_ms: u64,
    /// Streams replies so the answer's text reaches the caller as it is written.
    pub stream: bool,
    /// Azure OpenAI `api-version`; setting it selects Azure's URL form and `api-key` header.
    pub azure_api_version: Option<String>,
    /// Completion-limit field of OpenAI-compatible APIs: `max_tokens` or
    /// `max_completion_tokens`.
    pub max_tokens_field: String,
    /// Asks an OpenAI-compatible API for the cost of each call (OpenRouter).
    pub request_cost: bool,
    /// `anthropic-version` header of the Anthropic backend.
    pub anthropic_version: String,
    /// Names followed into a second search by the extractive backend.
    pub extractive_max_followups: Option<usize>,
    /// The sub-model answering `llm_query`; unset fields take the root model's.
    pub sub: SubModelConfig,
    /// US dollars per million tokens, by model, for backends that do not report a cost.
    pub prices: BTreeMap<String, ModelPrice>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            backend: Backend::Extractive,
            model: String::new(),
            base_url: String::new(),
            api_key: Secret::default(),
            api_key_file: None,
            headers: BTreeMap::new(),
            connect_timeout_seconds: 10.0,
            request_timeout_seconds: 120.0,
            max_attempts: 4,
            retry_base_ms: 500,
            retry_max_ms: 20_000,
            stream: true,
            azure_api_version: None,
            max_tokens_field: "max_tokens".to_string(),
            request_cost: false,
            anthropic_version: "2023-06-01".to_string(),
            extractive_max_followups: None,
            sub: SubModelConfig::default(),
            prices: BTreeMap::new(),
        }
    }
}

/// The sub-model: any field left unset is the root model's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubModelConfig {
    /// Backend.
    pub backend: Option<Backend>,
    /// Model name.
    pub model: Option<String>,
    /// API root.
    pub base_url: Option<String>,
    /// File holding the API key.
    pub api_key_file: Option<PathBuf>,
}

/// Price of a model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Per million prompt tokens.
    pub input_per_million: f64,
    /// Per million completion tokens.
    pub output_per_million: f64,
}

/// Result cache backends available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// No caching.
    None,
    /// In process memory.
    #[default]
    Memory,
    /// A SQLite file that survives restarts.
    Sqlite,
    /// A Redis server shared by replicas.
    Redis,
}

/// Settings of the result cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Backend.
    pub backend: CacheBackend,
    /// Seconds a cached result stays valid.
    pub ttl_seconds: u64,
    /// Seconds cached search hits stay valid.
    pub search_ttl_seconds: u64,
    /// File of the SQLite cache; the search cache lives beside it, `-search` appended.
    pub path: PathBuf,
    /// Redis server of the Redis cache: `redis://`, `rediss://` (TLS) or `unix://`.
    pub redis_url: String,
    /// Prefix of the Redis keys, so that several deployments can share one Redis.
    pub redis_prefix: String,
    /// Milliseconds one Redis operation of the cache may take before it counts as failed (a
    /// lookup then as a miss), so that a slow or hung Redis never stalls a query for longer.
    pub redis_timeout_ms: u64,
    /// Most entries held in memory.
    pub max_entries: usize,
    /// Most bytes held in memory.
    pub max_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: CacheBackend::Memory,
            ttl_seconds: 3600,
            search_ttl_seconds: 600,
            path: PathBuf::from("./deeprecall-cache.db"),
            redis_url: "redis://127.0.0.1:6379".to_string(),
            redis_prefix: "deeprecall".to_string(),
            redis_timeout_ms: 250,
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Settings of API-key authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of `[[keys]]`, re-read on SIGHUP.
    pub keys_file: Option<PathBuf>,
    /// Keys listed in the configuration itself, like the key file's.
    pub keys: Vec<KeyEntry>,
    /// Services callable without a key.
    pub exempt_services: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys_file: None,
            keys: Vec::new(),
            exempt_services: vec![
                "grpc.health.v1.Health".to_string(),
                "grpc.reflection.v1.ServerReflection".to_string(),
                "grpc.reflection.v1alpha.ServerReflection".to_string(),
            ],
        }
    }
}

/// Where rate-limit buckets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStore {
    /// In this process: each replica limits alone.
    #[default]
    Memory,
    /// In Redis: every replica shares one limit per caller.
    Redis,
}

/// Settings of rate limits and load shedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute per key (per client address without auth); 0 for no limit.
    pub requests_per_minute: u32,
    /// Requests admitted at once from an idle start.
    pub burst: u32,
    /// Calls refused for a missing, malformed or unknown key (while keys are on) per client
    /// address per minute; beyond them such calls get RESOURCE_EXHAUSTED. 0 for no limit.
    pub refused_per_minute: u32,
    /// Such refusals allowed at once from an idle start.
    pub refused_burst: u32,
    /// Where buckets live.
    pub store: RateLimitStore,
    /// Redis of the `redis` store.
    pub redis_url: String,
    /// Prefix of the bucket keys in Redis.
    pub redis_prefix: String,
    /// Milliseconds a Redis check may take before the replica decides alone.
    pub redis_timeout_ms: u64,
    /// Replicas sharing the `redis` store's limits: while Redis cannot answer, each replica
    /// admits this share of every rate (1: each admits the whole rate, so the fleet up to N
    /// times it).
    pub fallback_replicas: u32,
    /// Callers whose buckets are kept in memory at most.
    pub max_tracked_callers: usize,
    /// Queries (Query and QueryBatch calls) running at once; 0 for no bound.
    pub max_concurrent_queries: usize,
    /// Queries waiting for a slot at most; more are refused at once.
    pub max_queued_queries: usize,
    /// Milliseconds a query waits for a slot at most.
    pub max_queue_wait_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_minute: 0,
            burst: 20,
            refused_per_minute: 60,
            refused_burst: 20,
            store: RateLimitStore::Memory,
            redis_url: "redis://127.0.0.1:6379".to_string(),
            redis_prefix: "deeprecall:ratelimit".to_string(),
            redis_timeout_ms: 250,
            fallback_replicas: 1,
            max_tracked_callers: 100_000,
            max_concurrent_queries: 256,
            max_queued_queries: 64,
            max_queue_wait_ms: 1_000,
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of logs, traces, metrics and the trace log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing` filter directives, e.g. `info` or `deeprecall=debug,info`.
    pub log_filter: String,
    /// Log format.
    pub log_format: LogFormat,
    /// OpenTelemetry collector receiving spans over OTLP; empty for none.
    pub otlp_endpoint: String,
    /// `grpc` or `http/protobuf`; empty infers it from the endpoint (port 4318 or a
    /// `/v1/traces` path mean HTTP).
    pub otlp_protocol: String,
    /// Headers (gRPC metadata) sent with every export, e.g. a vendor's API key; secret values.
    pub otlp_headers: BTreeMap<String, Secret>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Further resource attributes of the exported spans.
    pub resource_attributes: BTreeMap<String, String>,
    /// Share of new traces exported, 0 to 1; a trace continued from a caller's `traceparent`
    /// follows the caller's sampling decision.
    pub sampling_ratio: f64,
    /// Address of the Prometheus endpoint (`GET /metrics`); empty for none.
    pub metrics_listen: String,
    /// JSONL file receiving every trace event of every query; empty for none.
    pub trace_log: String,
    /// Size past which the trace log is rotated.
    pub trace_log_max_bytes: u64,
    /// Rotated trace log files kept.
    pub trace_log_keep_files: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_filter: "info".to_string(),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
            otlp_protocol: String::new(),
            otlp_headers: BTreeMap::new(),
            service_name: "deeprecall".to_string(),
            resource_attributes: BTreeMap::new(),
            sampling_ratio: 1.0,
            metrics_listen: String::new(),
            trace_log: String::new(),
            trace_log_max_bytes: 100 * 1024 * 1024,
            trace_log_keep_files: 5,
        }
    }
}
