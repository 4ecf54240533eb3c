//! The one configuration, loaded in one place: defaults, then a TOML file, then `DEEPRECALL_*`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Any setting can come from the environment as `DEEPRECALL_<SECTION>__<KEY>`, e.g.
//! `DEEPRECALL_ENGINE__MAX_TOP_K=50`; the common ones also have short names (see
//! [`ENV_ALIASES`]). This module is the only reader of the process environment.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::access::KeyEntry;
use crate::engine::EngineConfig;
use crate::secret::Secret;

/// Prefix of every environment variable read.
pub const ENV_PREFIX: &str = "DEEPRECALL_";

/// Short environment names and the setting each one sets.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("DEEPRECALL_LISTEN", "server.listen"),
    ("DEEPRECALL_DATA_DIR", "store.data_dir"),
    ("DEEPRECALL_STORE", "store.backend"),
    ("DEEPRECALL_DATABASE_URL", "store.database_url"),
    (
        "DEEPRECALL_DATABASE_PASSWORD_FILE",
        "store.database_password_file",
    ),
    (
        "DEEPRECALL_SHUTDOWN_GRACE_SECONDS",
        "server.shutdown_grace_seconds",
    ),
    ("DEEPRECALL_BACKEND", "llm.backend"),
    ("DEEPRECALL_MODEL", "llm.model"),
    ("DEEPRECALL_BASE_URL", "llm.base_url"),
    ("DEEPRECALL_LLM_API_KEY", "llm.api_key"),
    ("DEEPRECALL_API_KEY_FILE", "llm.api_key_file"),
    ("DEEPRECALL_CACHE", "cache.backend"),
    ("DEEPRECALL_CACHE_TTL", "cache.ttl_seconds"),
    ("DEEPRECALL_REDIS_URL", "cache.redis_url"),
    ("DEEPRECALL_REDIS_URL", "limits.redis_url"),
    ("DEEPRECALL_KEYS_FILE", "auth.keys_file"),
    (
        "DEEPRECALL_RATE_LIMIT_PER_MINUTE",
        "limits.requests_per_minute",
    ),
    ("DEEPRECALL_RATE_LIMIT_BURST", "limits.burst"),
    (
        "DEEPRECALL_RATE_LIMIT_FALLBACK_REPLICAS",
        "limits.fallback_replicas",
    ),
    (
        "DEEPRECALL_MAX_CONCURRENT_QUERIES",
        "limits.max_concurrent_queries",
    ),
    ("DEEPRECALL_LOG", "telemetry.log_filter"),
    ("DEEPRECALL_LOG_FORMAT", "telemetry.log_format"),
    ("DEEPRECALL_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("DEEPRECALL_METRICS_LISTEN", "telemetry.metrics_listen"),
    ("DEEPRECALL_HTTP_LISTEN", "server.http_listen"),
    ("DEEPRECALL_TRACE_LOG", "telemetry.trace_log"),
];

/// Environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "DEEPRECALL_CONFIG";
/// Environment variable naming the server the client commands talk to.
pub const SERVER_ENV: &str = "DEEPRECALL_SERVER";
/// Environment variable holding the API key the client commands send.
pub const CLIENT_KEY_ENV: &str = "DEEPRECALL_CLIENT_KEY";
/// Server the client commands talk to by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Errors of configuration loading.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A setting has the wrong type or an unknown name.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The gRPC server.
    pub server: ServerConfig,
    /// Document storage.
    pub store: StoreConfig,
    /// Reasoning engine limits and default budget.
    pub engine: EngineConfig,
    /// Model backends.
    pub llm: LlmConfig,
    /// Result cache.
    pub cache: CacheConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// Rate limits and load shedding.
    pub limits: LimitsConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

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
    /// pgvector's HNSW index: searches stay fast as collections grow, but every document
    /// written enters the graph, which for hashed text vectors costs milliseconds a document.
    #[default]
    Hnsw,
    /// No vector index: each search scans its collection's vectors exactly. Writes are an
    /// order of magnitude faster; searches grow with the collection (BENCHMARKS.md).
    Exact,
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
    /// TLS: disable, prefer, require, verify-ca or verify-full.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates that verify-ca and verify-full trust; the system roots
    /// when unset.
    pub ssl_ca_file: Option<PathBuf>,
    /// Milliseconds between checks that the store is reachable; while it is not, the service's
    /// health reports NOT_SERVING (readiness), the whole server's stays SERVING (liveness).
    /// 0 turns the checks off.
    pub health_check_interval_ms: u64,
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
            sslmode: SslMode::Prefer,
            ssl_ca_file: None,
            health_check_interval_ms: 5_000,
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

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// A TOML file; when `None`, the file named by `DEEPRECALL_CONFIG`, if any.
    pub file: Option<PathBuf>,
    /// The environment, as a map, so that tests stay hermetic.
    pub env: HashMap<String, String>,
    /// Settings from flags, as `("section.key", "value")`.
    pub flags: Vec<(String, String)>,
}

impl Config {
    /// Loads the configuration from its sources, in order of precedence.
    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
        let mut table = to_table(&Config::default())?;
        let file = sources
            .file
            .clone()
            .or_else(|| sources.env.get(CONFIG_FILE_ENV).map(PathBuf::from));
        if let Some(path) = file {
            merge(&mut table, read_file(&path)?);
        }
        for (path, value) in env_settings(&sources.env) {
            set(&mut table, &path, &value)?;
        }
        for (path, value) in &sources.flags {
            set(&mut table, path, value)?;
        }
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.message().to_string()))?;
        config.store.libpq_env = LIBPQ_ENV
            .iter()
            .filter_map(|name| {
                let value = sources.env.get(*name)?;
                Some(((*name).to_string(), Secret::new(value.clone())))
            })
            .collect();
        Ok(config)
    }
}

/// Returns the process environment. The only place that reads it.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) || LIBPQ_ENV.contains(&name.as_str()))
        .collect()
}

/// Whether the user asked for output without colours: `NO_COLOR` set to anything but the
/// empty string (<https://no-color.org>).
pub fn no_color_requested() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

/// Returns the server the client commands talk to, as a URL: the flag, else
/// `DEEPRECALL_SERVER`, else the default, read by [`endpoint_url`].
pub fn server_endpoint(flag: Option<&str>, env: &HashMap<String, String>) -> String {
    let address = flag
        .map(str::to_string)
        .or_else(|| env.get(SERVER_ENV).cloned())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    endpoint_url(&address)
}

/// Returns a server address as a URL: `http://host:port` and `https://host:port` stay as they
/// are, and a bare `host:port` means plaintext, `http://host:port`, as gRPC clients (grpcurl,
/// the Python client) read it.
pub fn endpoint_url(address: &str) -> String {
    let address = address.trim();
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

fn to_table(config: &Config) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(config).map_err(|error| ConfigError::Invalid(error.to_string()))
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.message().to_string(),
        })
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(overlay)) => merge(base, overlay),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Returns `(setting path, value)` for every `DEEPRECALL_*` variable that names a setting.
fn env_settings(env: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = Vec::new();
    for (name, value) in env {
        let mut aliases = ENV_ALIASES
            .iter()
            .filter(|(alias, _)| alias == name)
            .peekable();
        if aliases.peek().is_some() {
            for (_, path) in aliases {
                settings.push(((*path).to_string(), value.clone()));
            }
        } else if let Some(rest) = name.strip_prefix(ENV_PREFIX)
            && let Some((section, key)) = rest.split_once("__")
        {
            settings.push((
                format!("{}.{}", section.to_lowercase(), key.to_lowercase()),
                value.clone(),
            ));
        }
    }
    // Generic names first, aliases after: an alias is the more specific spelling.
    settings.sort_by_key(|(path, _)| ENV_ALIASES.iter().any(|(_, alias)| alias == path));
    settings
}

/// Sets `section.key` to `value`, typed like the value already there (every setting has a
/// default, so there always is one, or it is an optional setting read as TOML).
fn set(table: &mut toml::Table, path: &str, value: &str) -> Result<(), ConfigError> {
    let (section, key) = path
        .split_once('.')
        .ok_or_else(|| ConfigError::Invalid(format!("{path:?} is not a section.key setting")))?;
    let section_table = match table.get_mut(section) {
        Some(toml::Value::Table(section_table)) => section_table,
        _ => return Err(ConfigError::Invalid(format!("unknown section {section:?}"))),
    };
    let typed = match section_table.get(key) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_string()),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(value.parse().map_err(|_| {
            ConfigError::Invalid(format!("{path} must be a whole number, not {value:?}"))
        })?),
        Some(toml::Value::Float(_)) => toml::Value::Float(value.parse().map_err(|_| {
            ConfigError::Invalid(format!("{path} must be a number, not {value:?}"))
        })?),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(value.parse().map_err(|_| {
            ConfigError::Invalid(format!("{path} must be true or false, not {value:?}"))
        })?),
        // Optional settings absent from the defaults: read as a TOML value, else as text.
        _ => format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|parsed| parsed.get("v").cloned())
            .unwrap_or_else(|| toml::Value::String(value.to_string())),
    };
    section_table.insert(key.to_string(), typed);
    Ok(())
}

/// A commented configuration file with every setting at its default, as `deeprecall init`
/// writes it.
pub const DEFAULT_CONFIG_TOML: &str = r#"# DeepRecall configuration. Every setting left active is at its default; a commented-out
# setting is unset by default, shown with an example value.
# Precedence: these defaults < this file < DEEPRECALL_* environment < command-line flags.
# Any setting can be set from the environment as DEEPRECALL_<SECTION>__<KEY>,
# e.g. DEEPRECALL_ENGINE__MAX_TOP_K=50.

[server]
# Address of the gRPC server (env DEEPRECALL_LISTEN, flag --listen).
listen = "127.0.0.1:50051"
# Largest request and response messages, in bytes.
max_request_bytes = 67108864
max_response_bytes = 67108864
# Seconds in-flight calls get to finish after SIGTERM/SIGINT; after that, running queries end
# with a partial result (env DEEPRECALL_SHUTDOWN_GRACE_SECONDS).
shutdown_grace_seconds = 30.0
# Seconds between HTTP/2 keepalive pings, and how long one may go unanswered.
http2_keepalive_seconds = 60
http2_keepalive_timeout_seconds = 20
# Seconds a new connection has to send the start of its first request before it is closed
# (0 for no limit).
handshake_timeout_seconds = 10
# Calls open at once on one connection.
max_concurrent_streams = 256
# Seconds a handler may take to answer (to start its stream, for Query and QueryBatch);
# a shorter grpc-timeout wins. 0 for no limit.
request_timeout_seconds = 300
# gRPC-Web (HTTP/1.1 and HTTP/2) on the same port, for browsers (flag --grpc-web), and the
# origins allowed to call it cross-origin (["*"] for any).
grpc_web = false
cors_allow_origins = []
# Address of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/documents, ...), e.g.
# "0.0.0.0:8080"; empty serves none (env DEEPRECALL_HTTP_LISTEN, flag --http-listen). Its
# largest request body, in bytes.
http_listen = ""
http_max_body_bytes = 16777216

[store]
# Where documents live: "embedded" (SQLite in data_dir, one replica) or "postgres" (PostgreSQL
# with pgvector, shared by every replica) (env DEEPRECALL_STORE, flag --store).
backend = "embedded"
# Where the SQLite database lives (env DEEPRECALL_DATA_DIR, flag --data-dir).
data_dir = "./deeprecall-data"
# SQLite connections used for reads.
read_connections = 4
# Dimensions of the feature-hashing embedder. Changing it re-embeds every document at start
# (embedded store); the postgres store refuses to start instead.
embedding_dimension = 4096
# PostgreSQL of the postgres store: postgres://user@host:5432/database (env
# DEEPRECALL_DATABASE_URL, flag --database-url). Never logged. The standard PG* variables
# (PGHOST, PGPASSWORD, ...) fill in what the URL leaves out.
database_url = ""
# File holding the password (env DEEPRECALL_DATABASE_PASSWORD_FILE, flag
# --database-password-file); it wins over PGPASSWORD, a password in the URL wins over both.
# database_password_file = "/run/secrets/deeprecall/password"
# Connections per replica; seconds to connect (and to wait for a pooled connection); seconds
# a statement may run; longest wait between attempts to reach the database at start.
pool_size = 16
connect_timeout_seconds = 5.0
statement_timeout_seconds = 30.0
connect_retry_max_seconds = 30.0
# Vector index: "hnsw" (searches stay fast as collections grow; each write enters the graph, a
# few milliseconds a document for hashed text) or "exact" (no index: writes much faster, each
# search scans its collection). Every replica must agree: the index is made or dropped at start.
vector_index = "hnsw"
# TLS: disable, prefer, require, verify-ca or verify-full; CA certificates (PEM) for the
# verify modes, the system roots when unset.
sslmode = "prefer"
# ssl_ca_file = "/etc/ssl/postgres-ca.pem"
# Milliseconds between checks that the store answers: while it does not, the health of
# deeprecall.v1.DeepRecall (readiness) reports NOT_SERVING and the server's ("", liveness)
# stays SERVING. 0 turns the checks off.
health_check_interval_ms = 5000

[engine]
# Passages per search when a request says 0, and the most a request may ask for.
default_top_k = 5
max_top_k = 100
# Request limits, in bytes.
max_query_bytes = 8192
max_prompt_bytes = 32768
max_document_bytes = 1048576
# Most documents (or ids) per AddDocuments / DeleteDocuments call.
max_documents_per_call = 10000
# QueryBatch: most queries, default and largest concurrency.
max_batch_queries = 10000
default_batch_concurrency = 4
max_batch_concurrency = 64
# Default budget of a query; a request may set its own.
max_iterations = 10
max_search_calls = 20
max_time_seconds = 120.0
# max_tokens = 200000
# max_cost_usd = 0.50
# Turns in a row whose tool calls all fail before a run stops.
max_consecutive_tool_errors = 3
# Sub-model prompts run at once, and the most prompts per llm_query_batched call.
sub_model_concurrency = 8
max_batched_prompts = 32
# Most sources in a result (cited sources are always kept).
max_sources = 20
# Trace events buffered per stream before the run waits for a slow reader.
event_buffer = 64
# Completion tokens asked for per model call, at most.
max_completion_tokens = 4096
# Milliseconds kept before a caller's gRPC deadline for the result's trip back: a run with a
# deadline finishes this much earlier (the time a summing-up call needs is measured per run).
deadline_reserve_ms = 100

[llm]
# Root model backend: "extractive" (offline, no model needed), "openai" (any OpenAI-compatible
# API) or "anthropic" (env DEEPRECALL_BACKEND, flag --backend).
backend = "extractive"
# Model name; for Azure OpenAI the deployment name (env DEEPRECALL_MODEL, flag --model).
model = ""
# API root; empty takes the backend's public endpoint (env DEEPRECALL_BASE_URL, flag --base-url).
base_url = ""
# The API key comes from DEEPRECALL_LLM_API_KEY or from this file (flag --api-key-file).
# api_key_file = "/run/secrets/llm-api-key"
# It may also be written here, but a key in a config file ends up in backups, images and
# version control: prefer the environment or a secrets file.
# api_key = "sk-..."
# Seconds to connect, and for a whole model request.
connect_timeout_seconds = 10.0
request_timeout_seconds = 120.0
# Retries per model call: attempts in all, first backoff and longest backoff (ms).
max_attempts = 4
retry_base_ms = 500
retry_max_ms = 20000
# Stream replies so the answer's text reaches the caller as it is written.
stream = true
# Azure OpenAI: setting api-version selects the deployment URL and the api-key header.
# azure_api_version = "2024-06-01"
# "max_completion_tokens" for OpenAI's reasoning models.
max_tokens_field = "max_tokens"
# Ask for each call's cost (OpenRouter).
request_cost = false
anthropic_version = "2023-06-01"
# extractive_max_followups = 2

[llm.headers]
# "HTTP-Referer" = "https://example.com"

[llm.sub]
# The sub-model answering llm_query; unset fields take the root model's.
# backend = "openai"
# model = "gpt-4o-mini"
# base_url = ""
# api_key_file = ""

[llm.prices]
# US dollars per million tokens, for backends that do not report a cost.
# "gpt-4o-mini" = { input_per_million = 0.15, output_per_million = 0.60 }

[cache]
# Cache backend: "memory", "sqlite", "redis" or "none" (env DEEPRECALL_CACHE, flag --cache).
backend = "memory"
# Seconds a cached result stays valid (env DEEPRECALL_CACHE_TTL, flag --cache-ttl).
ttl_seconds = 3600
# Seconds cached search hits stay valid.
search_ttl_seconds = 600
# File of the sqlite cache (flag --cache-path); the search cache sits beside it.
path = "./deeprecall-cache.db"
# Redis of the redis cache (env DEEPRECALL_REDIS_URL, flag --redis-url), and its key prefix.
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "deeprecall"
# Milliseconds a redis operation may take before it counts as failed (a lookup as a miss).
redis_timeout_ms = 250
# Bounds of the memory cache.
max_entries = 10000
max_bytes = 268435456

[auth]
# API keys: off when no key is configured. A key file (TOML, one [[keys]] table per key) is
# re-read on SIGHUP (env DEEPRECALL_KEYS_FILE, flag --keys-file).
# keys_file = "/etc/deeprecall/keys.toml"
# Keys may also be listed here, as in the key file:
# keys = [{ name = "ci", sha256 = "<hex digest>", scopes = ["query"] }]
keys = []
# Services callable without a key.
exempt_services = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]

[limits]
# Requests per minute per key, or per client address without auth; 0 turns rate limits off
# (env DEEPRECALL_RATE_LIMIT_PER_MINUTE, flag --rate-limit-per-minute). A QueryBatch costs one
# request per query.
requests_per_minute = 0
# Requests admitted at once after a quiet spell (flag --rate-limit-burst).
burst = 20
# While keys are on: calls refused for a missing, malformed or unknown key, per client address
# per minute, and at once after a quiet spell; beyond them such calls get RESOURCE_EXHAUSTED
# with retry-after instead of UNAUTHENTICATED. Valid keys from the address are not held back.
# 0 turns this off.
refused_per_minute = 60
refused_burst = 20
# "memory" (each replica alone) or "redis" (one limit shared by every replica; flag
# --rate-limit-store). While Redis cannot answer, each replica limits alone.
store = "memory"
# Redis of the redis store (env DEEPRECALL_REDIS_URL, flag --redis-url), its key prefix and the
# longest wait for it.
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "deeprecall:ratelimit"
redis_timeout_ms = 250
# While Redis cannot answer, each replica limits alone, to 1/N of every rate with N here: set
# it to the replica count to keep the fleet near the shared limit during an outage; 1 lets
# each replica admit the whole rate (env DEEPRECALL_RATE_LIMIT_FALLBACK_REPLICAS).
fallback_replicas = 1
# Callers tracked in memory at most; idle ones are forgotten first.
max_tracked_callers = 100000
# Queries running at once, 0 for no bound (flag --max-concurrent-queries); how many may wait
# for a slot, and for how long (ms), before being refused with RESOURCE_EXHAUSTED.
max_concurrent_queries = 256
max_queued_queries = 64
max_queue_wait_ms = 1000

[telemetry]
# tracing filter directives (env DEEPRECALL_LOG).
log_filter = "info"
# "text" or "json" (env DEEPRECALL_LOG_FORMAT).
log_format = "text"
# OpenTelemetry collector for spans, e.g. "http://otel-collector:4317" (OTLP/gRPC) or
# "http://otel-collector:4318" (OTLP/HTTP); empty exports nothing (flag --otlp-endpoint,
# env DEEPRECALL_OTLP_ENDPOINT). The protocol is inferred unless set: "grpc", "http/protobuf".
otlp_endpoint = ""
otlp_protocol = ""
service_name = "deeprecall"
# Share of new traces exported; a caller's traceparent decides for the traces it continues.
sampling_ratio = 1.0
# Prometheus metrics on their own port, e.g. "0.0.0.0:9464" (flag --metrics-listen,
# env DEEPRECALL_METRICS_LISTEN); empty serves none.
metrics_listen = ""
# JSONL file of every trace event (flag --trace-log, env DEEPRECALL_TRACE_LOG), rotated past
# trace_log_max_bytes, keeping trace_log_keep_files old files.
trace_log = ""
trace_log_max_bytes = 104857600
trace_log_keep_files = 5

[telemetry.resource_attributes]
# "deployment.environment" = "prod"

[telemetry.otlp_headers]
# Sent with every export (gRPC metadata or HTTP headers) besides OTEL_EXPORTER_OTLP_HEADERS,
# whose value wins for a header named in both; values are secrets and never logged. For a
# vendor that wants an API key:
# "x-api-key" = "<key>"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn the_init_template_is_exactly_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deeprecall.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1\"\n[engine]\nmax_top_k = 7\ndefault_top_k = 3\n",
        )
        .unwrap();
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[
                ("DEEPRECALL_LISTEN", "127.0.0.1:2"),
                ("DEEPRECALL_ENGINE__MAX_TOP_K", "9"),
                ("DEEPRECALL_ENGINE__MAX_COST_USD", "0.25"),
            ]),
            flags: vec![("server.listen".into(), "127.0.0.1:3".into())],
        };
        let config = Config::load(&sources).unwrap();
        assert_eq!(config.server.listen.port(), 3);
        assert_eq!(config.engine.max_top_k, 9);
        assert_eq!(config.engine.default_top_k, 3);
        assert_eq!(config.engine.max_cost_usd, Some(0.25));
    }

    #[test]
    fn the_postgres_store_is_chosen_by_file_env_or_flags_and_its_secrets_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deeprecall.toml");
        std::fs::write(
            &file,
            "[store]\nbackend = \"postgres\"\nsslmode = \"verify-full\"\npool_size = 4\n",
        )
        .unwrap();
        let sources = ConfigSources {
            file: Some(file.clone()),
            env: env(&[
                (
                    "DEEPRECALL_DATABASE_URL",
                    "postgres://app:hunter2@db:5432/recall",
                ),
                ("DEEPRECALL_DATABASE_PASSWORD_FILE", "/run/secrets/pw"),
                ("DEEPRECALL_STORE__STATEMENT_TIMEOUT_SECONDS", "2.5"),
                ("PGPASSWORD", "from-libpq-env"),
                ("PGHOST", "db.internal"),
            ]),
            flags: Vec::new(),
        };
        let config = Config::load(&sources).unwrap();
        let store = &config.store;
        assert_eq!(store.backend, StoreBackend::Postgres);
        assert_eq!(store.sslmode, SslMode::VerifyFull);
        assert_eq!(store.pool_size, 4);
        assert_eq!(store.statement_timeout_seconds, 2.5);
        assert_eq!(
            store.database_url.expose(),
            "postgres://app:hunter2@db:5432/recall"
        );
        assert_eq!(
            store.database_password_file.as_deref(),
            Some(Path::new("/run/secrets/pw"))
        );
        assert_eq!(store.libpq_env["PGHOST"].expose(), "db.internal");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("from-libpq-env"), "{printed}");

        let flagged = ConfigSources {
            file: Some(file),
            env: env(&[("DEEPRECALL_STORE", "embedded")]),
            flags: vec![
                ("store.backend".into(), "postgres".into()),
                ("store.database_url".into(), "postgres://flag@h/d".into()),
            ],
        };
        let config = Config::load(&flagged).unwrap();
        assert_eq!(config.store.backend, StoreBackend::Postgres);
        assert_eq!(config.store.database_url.expose(), "postgres://flag@h/d");
        let only_env = ConfigSources {
            env: env(&[("DEEPRECALL_STORE", "postgres")]),
            ..ConfigSources::default()
        };
        assert_eq!(
            Config::load(&only_env).unwrap().store.backend,
            StoreBackend::Postgres
        );
        let wrong = ConfigSources {
            env: env(&[("DEEPRECALL_STORE", "mysql")]),
            ..ConfigSources::default()
        };
        assert!(Config::load(&wrong).is_err());
    }

    #[test]
    fn keys_and_shared_redis_come_from_the_environment() {
        let sources = ConfigSources {
            env: env(&[
                (
                    "DEEPRECALL_AUTH__KEYS",
                    r#"[{name = "ci", key = "ci-key-0123456789abc", scopes = ["query"]}]"#,
                ),
                ("DEEPRECALL_REDIS_URL", "redis://redis.internal:6379/2"),
                ("DEEPRECALL_KEYS_FILE", "/etc/deeprecall/keys.toml"),
            ]),
            ..ConfigSources::default()
        };
        let config = Config::load(&sources).unwrap();
        assert_eq!(config.auth.keys.len(), 1);
        assert_eq!(config.auth.keys[0].name, "ci");
        assert_eq!(config.cache.redis_url, "redis://redis.internal:6379/2");
        assert_eq!(config.limits.redis_url, "redis://redis.internal:6379/2");
        assert_eq!(
            config.auth.keys_file,
            Some(PathBuf::from("/etc/deeprecall/keys.toml"))
        );
    }

    #[test]
    fn the_config_file_can_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[store]\ndata_dir = \"/srv/recall\"\n").unwrap();
        let sources = ConfigSources {
            env: env(&[("DEEPRECALL_CONFIG", file.to_str().unwrap())]),
            ..ConfigSources::default()
        };
        assert_eq!(
            Config::load(&sources).unwrap().store.data_dir,
            PathBuf::from("/srv/recall")
        );
    }

    #[test]
    fn otlp_headers_come_from_the_file_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[telemetry.otlp_headers]\n\"x-api-key\" = \"vendor-key-123\"\n",
        )
        .unwrap();
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[("DEEPRECALL_RATE_LIMIT_FALLBACK_REPLICAS", "3")]),
            ..ConfigSources::default()
        };
        let config = Config::load(&sources).unwrap();
        assert_eq!(
            config.telemetry.otlp_headers["x-api-key"].expose(),
            "vendor-key-123"
        );
        assert!(!format!("{config:?}").contains("vendor-key-123"));
        assert_eq!(config.limits.fallback_replicas, 3);
    }

    #[test]
    fn a_server_address_without_a_scheme_is_plaintext() {
        let none = HashMap::new();
        assert_eq!(
            server_endpoint(Some("127.0.0.1:50051"), &none),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            server_endpoint(Some(" localhost:50051 "), &none),
            "http://localhost:50051"
        );
        assert_eq!(
            server_endpoint(Some("https://recall.example:443"), &none),
            "https://recall.example:443"
        );
        let from_env = env(&[(SERVER_ENV, "[::1]:9000")]);
        assert_eq!(server_endpoint(None, &from_env), "http://[::1]:9000");
        assert_eq!(server_endpoint(None, &none), DEFAULT_SERVER);
    }

    #[test]
    fn wrong_types_and_unknown_names_are_reported() {
        let bad_number = ConfigSources {
            env: env(&[("DEEPRECALL_ENGINE__MAX_TOP_K", "many")]),
            ..ConfigSources::default()
        };
        let error = Config::load(&bad_number).unwrap_err().to_string();
        assert!(
            error.contains("engine.max_top_k must be a whole number"),
            "{error}"
        );

        let unknown = ConfigSources {
            env: env(&[("DEEPRECALL_ENGINE__MAX_TOPK", "3")]),
            ..ConfigSources::default()
        };
        let error = Config::load(&unknown).unwrap_err().to_string();
        assert!(error.contains("max_topk"), "{error}");

        let bad_backend = ConfigSources {
            flags: vec![("cache.backend".into(), "floppy".into())],
            ..ConfigSources::default()
        };
        assert!(Config::load(&bad_backend).is_err());
    }
}
