//! The one configuration, loaded in one place: defaults, then a TOML file, then `DEEPRECALL_*`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Any setting can come from the environment as `DEEPRECALL_<SECTION>__<KEY>`, e.g.
//! `DEEPRECALL_ENGINE__MAX_TOP_K=50`; the common ones also have short names (see
//! [`ENV_ALIASES`]). This module is the only reader of the process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::secret::Secret;

mod retrieval;
mod sections;
mod template;

pub use retrieval::*;
pub use sections::*;
pub use template::DEFAULT_CONFIG_TOML;

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
    ("DEEPRECALL_EMBEDDER", "embedding.embedder"),
    ("DEEPRECALL_EMBEDDING_MODEL", "embedding.model"),
    ("DEEPRECALL_EMBEDDING_BASE_URL", "embedding.base_url"),
    ("DEEPRECALL_EMBEDDING_DIMENSIONS", "embedding.dimensions"),
    ("DEEPRECALL_EMBEDDING_MODEL_DIR", "embedding.model_dir"),
    ("DEEPRECALL_EMBEDDING_API_KEY", "embedding.api_key"),
    (
        "DEEPRECALL_EMBEDDING_API_KEY_FILE",
        "embedding.api_key_file",
    ),
    ("DEEPRECALL_RERANKER", "rerank.reranker"),
    ("DEEPRECALL_RERANKER_MODEL", "rerank.model"),
    ("DEEPRECALL_RERANKER_BASE_URL", "rerank.base_url"),
    ("DEEPRECALL_RERANKER_MODEL_DIR", "rerank.model_dir"),
    ("DEEPRECALL_RERANKER_API_KEY", "rerank.api_key"),
    ("DEEPRECALL_RERANKER_API_KEY_FILE", "rerank.api_key_file"),
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
    ("DEEPRECALL_TLS_CERT", "tls.cert"),
    ("DEEPRECALL_TLS_KEY", "tls.key"),
    ("DEEPRECALL_TLS_CLIENT_CA", "tls.client_ca"),
];

/// Environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "DEEPRECALL_CONFIG";
/// Environment variable naming the server the client commands talk to.
pub const SERVER_ENV: &str = "DEEPRECALL_SERVER";
/// Environment variable holding the API key the client commands send.
pub const CLIENT_KEY_ENV: &str = "DEEPRECALL_CLIENT_KEY";
/// Environment variable naming the CA file the client commands trust (`--tls-ca`).
pub const CLIENT_TLS_CA_ENV: &str = "DEEPRECALL_TLS_CA";
/// Environment variable naming the client certificate for mutual TLS (`--tls-client-cert`).
pub const CLIENT_TLS_CERT_ENV: &str = "DEEPRECALL_TLS_CLIENT_CERT";
/// Environment variable naming that certificate's private key (`--tls-client-key`).
pub const CLIENT_TLS_KEY_ENV: &str = "DEEPRECALL_TLS_CLIENT_KEY";
/// Environment variable naming the server's certificate name (`--tls-server-name`).
pub const CLIENT_TLS_SERVER_NAME_ENV: &str = "DEEPRECALL_TLS_SERVER_NAME";
/// Environment variable of the allocator that, set to a true value, keeps transparent huge
/// pages on for the process (see `main.rs`).
pub const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";
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
    /// The embedder behind the store's vectors.
    pub embedding: EmbeddingConfig,
    /// The reranker of search results.
    pub rerank: RerankConfig,
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
    /// TLS on the server's ports.
    pub tls: TlsConfig,
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
/// Whether the environment asks for transparent huge pages, read as mimalloc reads
/// [`ALLOW_THP_ENV`]: `1`, `true`, `on` or `yes`, in any case.
pub fn transparent_huge_pages_asked() -> bool {
    std::env::var(ALLOW_THP_ENV).is_ok_and(|value| is_true(&value))
}

fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes"
    )
}

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

#[cfg(test)]
mod tests;
