//! The `deeprecall` command line: the server, client commands that talk gRPC to it, the demo
//! and the benchmarks.

mod bench;
mod client;
mod demo;
pub mod eval;
mod health;
pub mod ingest;
mod output;
mod reindex;
mod retrieval_flags;
pub mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::api::pb;
use crate::config::{self, Config, ConfigSources};
use crate::server;

pub use client::{
    CallerKey, ClientArgs, ClientTls, ServerClient, connect, connect_channel, connect_channel_with,
    connect_with, wait_until_serving, wait_until_serving_with,
};
use client::{READY_TIMEOUT, transport_failure};

/// Recursive, multi-hop question answering over your documents, served over gRPC.
#[derive(Debug, Parser)]
#[command(name = "deeprecall", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gRPC server.
    Serve(Box<ServeArgs>),
    /// Adds text and Markdown files (directories recursively) to a collection.
    Ingest(ingest::IngestArgs),
    /// Asks a question and prints the reasoning as it happens, then the answer.
    Query(QueryArgs),
    /// Prints collections, cache counters and usage.
    Stats(StatsArgs),
    /// Exits 0 only when the server reports SERVING (for scripts, images and hosts without
    /// Kubernetes' own gRPC probe).
    Health(health::HealthArgs),
    /// Deletes documents by id.
    Delete(DeleteArgs),
    /// Writes a commented configuration file with every default.
    Init(InitArgs),
    /// Starts a server on the bundled sample corpus and asks it multi-hop questions.
    Demo(demo::DemoArgs),
    /// Measures ingest, search and cached-query speed.
    Bench(bench::BenchArgs),
    /// Scores answers, citations, cost and latency on a question set, loop against single pass.
    Eval(Box<eval::EvalArgs>),
    /// Brings the postgres store's schema to this build's version, ahead of a rollout.
    Migrate(MigrateArgs),
    /// Writes a collection as JSON Lines, read from the configured store.
    Export(transfer::ExportArgs),
    /// Adds JSON Lines documents (as export writes them) through a server.
    Import(transfer::ImportArgs),
    /// Re-embeds a collection with the configured embedder, on the store directly, while
    /// servers keep serving it; resumes where a stopped run was.
    Reindex(reindex::ReindexArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Flags shared by the commands that read the configuration.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Configuration file (TOML); env DEEPRECALL_CONFIG.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Directory of the database; env DEEPRECALL_DATA_DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Document store: embedded or postgres; env DEEPRECALL_STORE.
    #[arg(long)]
    store: Option<String>,
    /// PostgreSQL of the postgres store (postgres://user@host/db); env DEEPRECALL_DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
    /// File holding the database password; env DEEPRECALL_DATABASE_PASSWORD_FILE.
    #[arg(long)]
    database_password_file: Option<PathBuf>,
    #[command(flatten)]
    embedding: retrieval_flags::EmbeddingFlags,
}

impl ConfigArgs {
    fn load(&self, mut flags: Vec<(String, String)>) -> Result<Config, config::ConfigError> {
        if let Some(dir) = &self.data_dir {
            flags.push(("store.data_dir".into(), dir.display().to_string()));
        }
        if let Some(store) = &self.store {
            flags.push(("store.backend".into(), store.clone()));
        }
        if let Some(url) = &self.database_url {
            flags.push(("store.database_url".into(), url.clone()));
        }
        if let Some(file) = &self.database_password_file {
            flags.push((
                "store.database_password_file".into(),
                file.display().to_string(),
            ));
        }
        self.embedding.push_to(&mut flags);
        Config::load(&ConfigSources {
            file: self.config.clone(),
            env: config::process_env(),
            flags,
        })
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Loads and checks the configuration, prints the settings a deployment must match, and
    /// exits without listening or opening the store.
    #[arg(long)]
    check_config: bool,
    /// Address to listen on (default 127.0.0.1:50051); env DEEPRECALL_LISTEN.
    #[arg(long)]
    listen: Option<String>,
    /// Seconds in-flight calls get after SIGTERM/SIGINT; env DEEPRECALL_SHUTDOWN_GRACE_SECONDS.
    #[arg(long)]
    shutdown_grace_seconds: Option<f64>,
    /// Cache backend: memory, sqlite, redis or none; env DEEPRECALL_CACHE.
    #[arg(long)]
    cache: Option<String>,
    /// Seconds a cached result stays valid; env DEEPRECALL_CACHE_TTL.
    #[arg(long)]
    cache_ttl: Option<u64>,
    /// File of the sqlite cache.
    #[arg(long)]
    cache_path: Option<PathBuf>,
    /// Redis of the redis cache and of the redis rate limiter; env DEEPRECALL_REDIS_URL.
    #[arg(long)]
    redis_url: Option<String>,
    /// TOML file of API keys, re-read on SIGHUP; env DEEPRECALL_KEYS_FILE.
    #[arg(long)]
    keys_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS on the gRPC and HTTP ports; env DEEPRECALL_TLS_CERT.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; env DEEPRECALL_TLS_KEY.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CAs of accepted client certificates: mutual TLS; env DEEPRECALL_TLS_CLIENT_CA.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Requests per minute per key (per client address without keys), 0 for no limit; env
    /// DEEPRECALL_RATE_LIMIT_PER_MINUTE.
    #[arg(long)]
    rate_limit_per_minute: Option<u32>,
    /// Requests admitted at once after a quiet spell; env DEEPRECALL_RATE_LIMIT_BURST.
    #[arg(long)]
    rate_limit_burst: Option<u32>,
    /// Where rate-limit buckets live: memory or redis (shared by every replica).
    #[arg(long)]
    rate_limit_store: Option<String>,
    /// Replicas sharing the redis store's limits: while Redis cannot answer, each admits this
    /// share of every rate; env DEEPRECALL_RATE_LIMIT_FALLBACK_REPLICAS.
    #[arg(long)]
    rate_limit_fallback_replicas: Option<u32>,
    /// Queries running at once before new ones wait or are refused, 0 for no bound; env
    /// DEEPRECALL_MAX_CONCURRENT_QUERIES.
    #[arg(long)]
    max_concurrent_queries: Option<usize>,
    /// Serve gRPC-Web on the same port, for browsers.
    #[arg(long)]
    grpc_web: bool,
    /// Address of the OpenAI-compatible HTTP API, e.g. 0.0.0.0:8080; env DEEPRECALL_HTTP_LISTEN.
    #[arg(long)]
    http_listen: Option<String>,
    /// Log format: text or json; env DEEPRECALL_LOG_FORMAT.
    #[arg(long)]
    log_format: Option<String>,
    /// OpenTelemetry collector receiving spans (OTLP gRPC or HTTP); env DEEPRECALL_OTLP_ENDPOINT.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Address of the Prometheus endpoint, e.g. 0.0.0.0:9464; env DEEPRECALL_METRICS_LISTEN.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// JSONL file of every trace event; env DEEPRECALL_TRACE_LOG.
    #[arg(long)]
    trace_log: Option<PathBuf>,
    /// Model backend: extractive, openai or anthropic; env DEEPRECALL_BACKEND.
    #[arg(long)]
    backend: Option<String>,
    /// Model name (Azure: the deployment); env DEEPRECALL_MODEL.
    #[arg(long)]
    model: Option<String>,
    /// API root of the model backend; env DEEPRECALL_BASE_URL.
    #[arg(long)]
    base_url: Option<String>,
    /// File holding the model API key; else env DEEPRECALL_LLM_API_KEY.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    #[command(flatten)]
    rerank: retrieval_flags::RerankFlags,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// The question.
    query: String,
    #[command(flatten)]
    client: ClientArgs,
    /// Collection to search (default: default).
    #[arg(long)]
    collection: Option<String>,
    /// Passages per search.
    #[arg(long)]
    top_k: Option<u32>,
    /// Metadata filters as JSON, e.g. '{"team": "platform", "year": {"$gte": 2020}}'.
    #[arg(long)]
    filter: Option<String>,
    /// Extra instructions for the model.
    #[arg(long)]
    root_prompt: Option<String>,
    /// Context placed before the question.
    #[arg(long)]
    context: Option<String>,
    /// Most reasoning iterations.
    #[arg(long)]
    max_iterations: Option<u32>,
    /// Most searches.
    #[arg(long)]
    max_search_calls: Option<u32>,
    /// Most seconds.
    #[arg(long)]
    max_time_seconds: Option<f64>,
    /// Bypasses the result cache.
    #[arg(long)]
    skip_cache: bool,
    /// Prints every event, then the result, as JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Prints JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// Ids of the documents to delete.
    #[arg(required = true)]
    ids: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
    /// Collection (default: default).
    #[arg(long)]
    collection: Option<String>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// File to write.
    #[arg(default_value = "deeprecall.toml")]
    path: PathBuf,
    /// Overwrites an existing file.
    #[arg(long)]
    force: bool,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// A call failed.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Call(tonic::Status),
    /// A call failed below gRPC: the connection broke or the server does not speak gRPC.
    #[error("the call failed: {0}")]
    Transport(String),
    /// The server answered health checks with a status other than SERVING.
    #[error("{0}")]
    NotServing(String),
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// A flag's value is wrong.
    #[error("{0}")]
    Usage(String),
    /// A run ended but missed the targets it checks (`bench soak`).
    #[error("{0}")]
    TargetsMissed(String),
}

impl From<tonic::Status> for CliError {
    /// A status the transport made up for a broken connection carries its cause; that cause,
    /// in plain words, is the error. A status the server sent is reported as it is.
    fn from(status: tonic::Status) -> Self {
        use std::error::Error as _;
        match status.source() {
            Some(cause) => CliError::Transport(transport_failure(cause)),
            _ => CliError::Call(status),
        }
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Ingest(args) => ingest::run(args).await,
        Command::Query(args) => query(args).await,
        Command::Stats(args) => stats(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Delete(args) => delete(args).await,
        Command::Init(args) => init(args),
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Eval(args) => eval::run(*args).await,
        Command::Export(args) => transfer::export(args).await,
        Command::Import(args) => transfer::import(args).await,
        Command::Reindex(args) => reindex::reindex(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let mut flags = Vec::new();
    let mut flag = |path: &str, value: Option<String>| {
        if let Some(value) = value {
            flags.push((path.to_string(), value));
        }
    };
    flag("server.listen", args.listen);
    flag(
        "server.shutdown_grace_seconds",
        args.shutdown_grace_seconds
            .map(|seconds| seconds.to_string()),
    );
    flag("cache.backend", args.cache);
    flag(
        "cache.ttl_seconds",
        args.cache_ttl.map(|ttl| ttl.to_string()),
    );
    flag(
        "cache.path",
        args.cache_path.map(|path| path.display().to_string()),
    );
    flag("cache.redis_url", args.redis_url.clone());
    flag("limits.redis_url", args.redis_url);
    flag(
        "auth.keys_file",
        args.keys_file.map(|path| path.display().to_string()),
    );
    let path = |path: Option<PathBuf>| path.map(|path| path.display().to_string());
    flag("tls.cert", path(args.tls_cert));
    flag("tls.key", path(args.tls_key));
    flag("tls.client_ca", path(args.tls_client_ca));
    flag(
        "limits.requests_per_minute",
        args.rate_limit_per_minute.map(|rate| rate.to_string()),
    );
    flag(
        "limits.burst",
        args.rate_limit_burst.map(|burst| burst.to_string()),
    );
    flag("limits.store", args.rate_limit_store);
    flag(
        "limits.fallback_replicas",
        args.rate_limit_fallback_replicas
            .map(|replicas| replicas.to_string()),
    );
    flag(
        "limits.max_concurrent_queries",
        args.max_concurrent_queries.map(|bound| bound.to_string()),
    );
    if args.grpc_web {
        flag("server.grpc_web", Some("true".to_string()));
    }
    flag("telemetry.log_format", args.log_format);
    flag("telemetry.otlp_endpoint", args.otlp_endpoint);
    flag("telemetry.metrics_listen", args.metrics_listen);
    flag("server.http_listen", args.http_listen);
    flag(
        "telemetry.trace_log",
        args.trace_log.map(|path| path.display().to_string()),
    );
    flag("llm.backend", args.backend);
    flag("llm.model", args.model);
    flag("llm.base_url", args.base_url);
    flag(
        "llm.api_key_file",
        args.api_key_file.map(|path| path.display().to_string()),
    );
    args.rerank.push_to(&mut flags);
    let config = args.config.load(flags)?;
    if args.check_config {
        return health::check_config(&config);
    }
    let tracing = init_telemetry(&config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|error| {
            CliError::Io(format!(
                "cannot listen on {}: {error}",
                config.server.listen
            ))
        })?;
    let served = server::serve(config, listener, server::shutdown_signal()).await;
    // Spans still batched go out before the process ends.
    if let Err(error) = tracing.shutdown().await {
        eprintln!("cannot flush the last spans: {error}");
    }
    Ok(served?)
}

/// Installs logging and, with an OTLP endpoint, span export.
fn init_telemetry(
    config: &config::TelemetryConfig,
) -> Result<crate::telemetry::TelemetryGuard, CliError> {
    use crate::telemetry::{LogSettings, OtelSettings};
    let log = LogSettings {
        filter: config.log_filter.clone(),
        format: config.log_format,
        ansi: crate::telemetry::colour_logs(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            config::no_color_requested(),
        ),
    };
    let otel = match config.otlp_endpoint.trim() {
        "" => None,
        endpoint => {
            let mut settings = OtelSettings::new(endpoint);
            settings.protocol = match config.otlp_protocol.trim() {
                "" => None,
                protocol => Some(protocol.parse().map_err(|error| {
                    CliError::Usage(format!("telemetry.otlp_protocol: {error}"))
                })?),
            };
            settings.service_name = config.service_name.clone();
            settings.resource_attributes = config.resource_attributes.clone();
            settings.headers = config.otlp_headers.clone();
            settings.sampling_ratio = config.sampling_ratio;
            Some(settings)
        }
    };
    crate::telemetry::init_tracing(&log, otel.as_ref())
        .map_err(|error| CliError::Usage(format!("telemetry: {error}")))
}

async fn query(args: QueryArgs) -> Result<(), CliError> {
    let filters = match &args.filter {
        None => None,
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|error| CliError::Usage(format!("--filter is not JSON: {error}")))?;
            let serde_json::Value::Object(map) = value else {
                return Err(CliError::Usage("--filter must be a JSON object".into()));
            };
            Some(crate::api::convert::json_to_struct(map))
        }
    };
    let request = pb::QueryRequest {
        query: args.query,
        root_prompt: args.root_prompt.unwrap_or_default(),
        top_k: args.top_k.unwrap_or(0),
        collection: args.collection.unwrap_or_default(),
        filters,
        context_prefix: args.context.unwrap_or_default(),
        budget: Some(pb::Budget {
            max_iterations: args.max_iterations,
            max_search_calls: args.max_search_calls,
            max_time_seconds: args.max_time_seconds,
            ..pb::Budget::default()
        }),
        skip_cache: args.skip_cache,
        ..pb::QueryRequest::default()
    };
    let mut client = args.client.connect().await?;
    let mut stream = client.query(request).await?.into_inner();
    let mut printer = output::TracePrinter::new(args.json);
    while let Some(event) = stream.message().await? {
        printer.print(&event);
    }
    Ok(())
}

async fn stats(args: StatsArgs) -> Result<(), CliError> {
    let mut client = args.client.connect().await?;
    let stats = client.get_stats(pb::GetStatsRequest {}).await?.into_inner();
    if args.json {
        println!("{}", output::stats_json(&stats));
    } else {
        output::print_stats(&stats);
    }
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let mut client = args.client.connect().await?;
    let response = client
        .delete_documents(pb::DeleteDocumentsRequest {
            collection: args.collection.unwrap_or_default(),
            ids: args.ids,
        })
        .await?
        .into_inner();
    println!(
        "deleted {} document(s); the collection now holds {} (version {})",
        response.deleted, response.document_count, response.collection_version
    );
    Ok(())
}

async fn migrate(args: MigrateArgs) -> Result<(), CliError> {
    let config = args.config.load(Vec::new())?;
    if config.store.backend != config::StoreBackend::Postgres {
        return Err(CliError::Usage(
            "migrate is for the postgres store (--store postgres); the embedded store \
             migrates its file when it opens"
                .to_string(),
        ));
    }
    let embedder =
        server::retrieval::build_embedder(&config, None).map_err(server::ServerError::from)?;
    let report = crate::store::PostgresStore::migrate(&config.store, embedder.as_ref())
        .await
        .map_err(server::ServerError::from)?;
    if report.applied.is_empty() {
        println!("schema already at version {}", report.version);
    } else {
        println!(
            "applied migration(s) {:?}; schema at version {}",
            report.applied, report.version
        );
    }
    Ok(())
}

fn init(args: InitArgs) -> Result<(), CliError> {
    if args.path.exists() && !args.force {
        return Err(CliError::Usage(format!(
            "{} exists; pass --force to overwrite it",
            args.path.display()
        )));
    }
    std::fs::write(&args.path, config::DEFAULT_CONFIG_TOML)
        .map_err(|error| CliError::Io(format!("cannot write {}: {error}", args.path.display())))?;
    println!("wrote {}", args.path.display());
    Ok(())
}
