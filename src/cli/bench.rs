//! `deeprecall bench`: ingest throughput and cached-query latency over real gRPC, and hybrid
//! search latency on the embedded store. Synthetic documents come from a seeded generator, so
//! runs are comparable. Build with `--release` for numbers worth quoting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{CliError, READY_TIMEOUT, connect, wait_until_serving};
use crate::api::pb;
use crate::config::{Backend, CacheBackend, Config, StoreBackend, StoreConfig, VectorIndex};
use crate::embed::HashingEmbedder;
use crate::llm::mock_server::{MockLlmServer, MockReply, MockScript, RecordedRequest, Recording};
use crate::server;
use crate::store::{
    DocumentStore, EmbeddedStore, EmbeddedStoreConfig, Filter, NewDocument, PostgresStore,
    SearchRequest,
};

mod protocols;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// AddDocuments throughput over gRPC.
    Ingest,
    /// Hybrid search latency on the embedded store.
    Search,
    /// Server-side and round-trip latency of a cached Query.
    CachedQuery,
    /// Engine overhead with an OpenAI-compatible model (the scripted mock) in the loop.
    Engine,
    /// Cache hits and engine overhead over gRPC and over the HTTP API, side by side.
    Protocols,
    /// All of the above.
    All,
}

/// Arguments of `deeprecall bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    suite: Suite,
    /// Documents ingested by the ingest suite.
    #[arg(long, default_value_t = 20_000)]
    ingest_documents: usize,
    /// Documents per AddDocuments call in the ingest suite.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Documents in the collection searched by the search suite.
    #[arg(long, default_value_t = 100_000)]
    search_documents: usize,
    /// Searches (or cached queries) measured.
    #[arg(long, default_value_t = 1_000)]
    samples: usize,
    /// Passages per search.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Zipf ranks left to function words before content words start; 1 makes a few content
    /// words appear in most documents, the worst case for keyword ranking.
    #[arg(long, default_value_t = 150)]
    zipf_offset: usize,
    /// Engine suite: asks the model for whole replies instead of streamed ones.
    #[arg(long)]
    no_stream: bool,
    /// Cached-query suite: also measures the redis backend on this server.
    #[arg(long)]
    redis_url: Option<String>,
    /// Engine suite: only this concurrency (default: 1, 16 and 64).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Engine suite: only this mock latency in milliseconds (default: 0 and 50).
    #[arg(long)]
    mock_latency_ms: Option<u64>,
    /// Ingest and search suites: also measure the postgres store on this database (an empty
    /// one: the bench writes its own collections and deletes them after).
    #[arg(long)]
    database_url: Option<String>,
    /// Vector index of the postgres store: hnsw or exact.
    #[arg(long, default_value = "hnsw")]
    vector_index: String,
}

/// Runs the benchmarks and prints one line per measurement.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.samples == 0 || args.batch_size == 0 || args.concurrency == Some(0) {
        return Err(CliError::Usage(
            "--samples, --batch-size and --concurrency must be at least 1".into(),
        ));
    }
    println!(
        "deeprecall bench ({} build, {} cores)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if matches!(args.suite, Suite::Ingest | Suite::All) {
        ingest(&args).await?;
    }
    if matches!(args.suite, Suite::Search | Suite::All) {
        search(&args).await?;
    }
    if matches!(args.suite, Suite::CachedQuery | Suite::All) {
        cached_query(&args).await?;
    }
    if matches!(args.suite, Suite::Engine | Suite::All) {
        let latencies = args.mock_latency_ms.map_or(vec![0, 50], |only| vec![only]);
        let concurrencies = args.concurrency.map_or(vec![1, 16, 64], |only| vec![only]);
        for &latency_ms in &latencies {
            for &concurrency in &concurrencies {
                engine_overhead(&args, Duration::from_millis(latency_ms), concurrency).await?;
            }
        }
    }
    if matches!(args.suite, Suite::Protocols | Suite::All) {
        protocols::protocols(&args).await?;
    }
    Ok(())
}

/// A server on a throwaway data directory, stopped on drop of `stop`.
struct BenchServer {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    _data_dir: tempfile::TempDir,
}

impl BenchServer {
    async fn start_with(configure: impl FnOnce(&mut Config)) -> Result<Self, CliError> {
        let data_dir = tempfile::tempdir().map_err(|error| CliError::Io(error.to_string()))?;
        let mut config = Config::default();
        config.store.data_dir = data_dir.path().to_path_buf();
        config.server.shutdown_grace_seconds = 1.0;
        config.telemetry.log_filter = "warn".into();
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        let address = listener
            .local_addr()
            .map_err(|error| CliError::Io(error.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{address}");
        wait_until_serving(&endpoint, READY_TIMEOUT).await?;
        Ok(BenchServer {
            endpoint,
            stop: Some(stop),
            _data_dir: data_dir,
        })
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The stores a suite runs on: the embedded one, and PostgreSQL when a URL is given.
fn bench_stores(args: &BenchArgs) -> Result<Vec<(&'static str, Option<StoreConfig>)>, CliError> {
    let mut stores = vec![("embedded", None)];
    if let Some(url) = &args.database_url {
        let vector_index = match args.vector_index.as_str() {
            "hnsw" => VectorIndex::Hnsw,
            "exact" => VectorIndex::Exact,
            other => {
                return Err(CliError::Usage(format!(
                    "--vector-index {other:?}: use hnsw or exact"
                )));
            }
        };
        stores.push((
            "postgres",
            Some(StoreConfig {
                backend: StoreBackend::Postgres,
                database_url: crate::secret::Secret::new(url.clone()),
                vector_index,
                ..StoreConfig::default()
            }),
        ));
    }
    Ok(stores)
}

async fn ingest(args: &BenchArgs) -> Result<(), CliError> {
    for (label, store) in bench_stores(args)? {
        ingest_into(args, label, store).await?;
    }
    Ok(())
}

async fn ingest_into(
    args: &BenchArgs,
    label: &str,
    store: Option<StoreConfig>,
) -> Result<(), CliError> {
    let server = BenchServer::start_with(|config| {
        if let Some(store) = store {
            config.store = StoreConfig {
                data_dir: config.store.data_dir.clone(),
                ..store
            };
        }
    })
    .await?;
    let mut client = connect(&server.endpoint, None).await?;
    // Not left behind in a shared database; no-op on an empty one.
    let _ = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: "bench".into(),
        })
        .await;
    let documents = Corpus::new(7, args.zipf_offset).proto_documents(args.ingest_documents);
    let started = Instant::now();
    for batch in documents.chunks(args.batch_size) {
        client
            .add_documents(pb::AddDocumentsRequest {
                collection: "bench".into(),
                documents: batch.to_vec(),
            })
            .await?;
    }
    let elapsed = started.elapsed();
    let _ = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: "bench".into(),
        })
        .await;
    println!(
        "ingest ({label}): {} documents in {:.2} s over gRPC, batches of {} = {:.0} documents/s",
        args.ingest_documents,
        elapsed.as_secs_f64(),
        args.batch_size,
        args.ingest_documents as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn search(args: &BenchArgs) -> Result<(), CliError> {
    for (label, store) in bench_stores(args)? {
        search_in(args, label, store).await?;
    }
    Ok(())
}

async fn search_in(
    args: &BenchArgs,
    label: &str,
    postgres: Option<StoreConfig>,
) -> Result<(), CliError> {
    let data_dir = tempfile::tempdir().map_err(|error| CliError::Io(error.to_string()))?;
    let embedder = Arc::new(HashingEmbedder::new(
        crate::embed::hashing::DEFAULT_DIMENSION,
    ));
    let store: Arc<dyn DocumentStore> = match postgres {
        None => Arc::new(
            EmbeddedStore::open(
                EmbeddedStoreConfig {
                    data_dir: data_dir.path().to_path_buf(),
                    read_connections: 4,
                },
                embedder,
            )
            .await
            .map_err(|error| CliError::Io(error.to_string()))?,
        ),
        Some(config) => Arc::new(
            PostgresStore::connect(&config, embedder)
                .await
                .map_err(|error| CliError::Io(error.to_string()))?,
        ),
    };
    store
        .delete_collection("bench")
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
    let mut corpus = Corpus::new(11, args.zipf_offset);
    let loading = Instant::now();
    let mut index = 0;
    while index < args.search_documents {
        let end = (index + 5_000).min(args.search_documents);
        let batch = (index..end)
            .map(|n| {
                let (content, metadata) = corpus.document(n);
                NewDocument {
                    id: Some(format!("doc-{n}")),
                    content,
                    metadata,
                }
            })
            .collect();
        store
            .add_documents("bench", batch)
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        index = end;
    }
    println!(
        "search ({label}): loaded {} documents in {:.1} s",
        args.search_documents,
        loading.elapsed().as_secs_f64()
    );

    let filtered = Filter::from_json(
        serde_json::json!({"group": {"$in": [1, 2, 3]}})
            .as_object()
            .unwrap_or(&Map::new()),
    )
    .map_err(|error| CliError::Usage(error.to_string()))?;
    for (filter_label, filter) in [("unfiltered", Filter::default()), ("filtered", filtered)] {
        let mut latencies = Vec::with_capacity(args.samples);
        for _ in 0..args.samples {
            let query = corpus.query();
            let started = Instant::now();
            store
                .search(SearchRequest {
                    collection: "bench".into(),
                    query,
                    top_k: args.top_k,
                    filter: filter.clone(),
                })
                .await
                .map_err(|error| CliError::Io(error.to_string()))?;
            latencies.push(started.elapsed());
        }
        println!(
            "search ({label}): hybrid top-{} over {} documents, {filter_label}: {}",
            args.top_k,
            args.search_documents,
            percentiles(&mut latencies)
        );
    }
    store
        .delete_collection("bench")
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
    Ok(())
}

async fn cached_query(args: &BenchArgs) -> Result<(), CliError> {
    let mut backends = vec![CacheBackend::Memory, CacheBackend::Sqlite];
    match &args.redis_url {
        Some(_) => backends.push(CacheBackend::Redis),
        None => println!("cached query: redis skipped (no --redis-url)"),
    }
    for backend in backends {
        let cache_dir = tempfile::tempdir().map_err(|error| CliError::Io(error.to_string()))?;
        let server = BenchServer::start_with(|config| {
            config.cache.backend = backend;
            config.cache.path = cache_dir.path().join("cache.db");
            if let Some(url) = &args.redis_url {
                config.cache.redis_url = url.clone();
            }
        })
        .await?;
        let mut client = connect(&server.endpoint, None).await?;
        let mut corpus = Corpus::new(3, args.zipf_offset);
        client
            .add_documents(pb::AddDocumentsRequest {
                collection: String::new(),
                documents: corpus.proto_documents(200),
            })
            .await?;
        let request = pb::QueryRequest {
            query: corpus.query(),
            ..pb::QueryRequest::default()
        };
        // The first query fills the cache; only hits are measured.
        cached_once(&mut client, request.clone()).await?;
        for concurrency in [1, 64] {
            let started = Instant::now();
            let timings = futures::stream::iter(0..args.samples)
                .map(|_| {
                    let mut client = client.clone();
                    let request = request.clone();
                    async move {
                        let began = Instant::now();
                        let (server_side, cached) = cached_once(&mut client, request).await?;
                        if !cached {
                            return Err(CliError::Io(
                                "a repeated query was not served from the cache".into(),
                            ));
                        }
                        Ok((server_side, began.elapsed()))
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            let wall = started.elapsed();
            let mut server_side = Vec::with_capacity(timings.len());
            let mut round_trip = Vec::with_capacity(timings.len());
            for timing in timings {
                let (server, total) = timing?;
                server_side.push(server);
                round_trip.push(total);
            }
            println!(
                "cached query ({backend:?}), concurrency {concurrency}: {:.0} queries/s; server-side {}; gRPC round trip {}",
                args.samples as f64 / wall.as_secs_f64(),
                percentiles(&mut server_side),
                percentiles(&mut round_trip)
            );
        }
    }
    Ok(())
}

/// Runs one query; returns its server-side time and whether it was a cache hit.
async fn cached_once(
    client: &mut super::ServerClient,
    request: pb::QueryRequest,
) -> Result<(Duration, bool), CliError> {
    let mut stream = client.query(request).await?.into_inner();
    let mut result = None;
    while let Some(event) = stream.message().await? {
        if let Some(pb::query_event::Event::Result(done)) = event.event {
            result = Some(done);
        }
    }
    let result = result.ok_or_else(|| CliError::Io("a query ended without a result".into()))?;
    Ok((
        Duration::from_secs_f64(result.execution_time_seconds),
        result.cached,
    ))
}

/// Questions of the engine suite; each names its mock conversation.
const QUESTION_PREFIX: &str = "bench question ";

/// Measures what the engine adds to a model's own latency: each query runs a three-call script
/// (two searches, then submit) against the scripted OpenAI-compatible mock over HTTP, through
/// the real gRPC server. Overhead is the end-to-end latency minus the time the mock spent on
/// that query's three requests.
async fn engine_overhead(
    args: &BenchArgs,
    latency: Duration,
    concurrency: usize,
) -> Result<(), CliError> {
    // At least 16 rounds of `concurrency` queries: the first round arrives all at once and the
    // last one drains, and with only a few rounds those two would decide the throughput.
    let queries = (args.samples / 4).max(concurrency * 16);
    let tool = |name: &str, arguments: serde_json::Value| {
        MockReply::tool_call(name, arguments.to_string())
    };
    let mut script = MockScript::default()
        .with_latency(latency)
        .with_chunk_pause(Duration::ZERO)
        .with_recording(Recording::Light);
    for n in 0..queries {
        script = script.with_conversation(
            format!("{QUESTION_PREFIX}{n}?"),
            vec![
                tool("search_db", serde_json::json!({"query": "first hop"})),
                tool("search_db", serde_json::json!({"query": "second hop"})),
                tool(
                    "submit",
                    serde_json::json!({"answer": "done [doc-1]", "citations": ["doc-1"]}),
                ),
            ],
        );
    }
    let mock = MockLlmServer::start(script)
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
    let base_url = mock.base_url();
    let server = BenchServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock".into();
        config.llm.base_url = base_url;
        config.llm.stream = !args.no_stream;
        config.cache.backend = CacheBackend::None;
    })
    .await?;
    let mut client = connect(&server.endpoint, None).await?;
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: Corpus::new(5, args.zipf_offset).proto_documents(200),
        })
        .await?;

    // The queries run on the runtime's workers, as the server's tasks do: from the thread that
    // blocks on the benchmark, every event would be a hand-off to one more thread.
    let measured = tokio::spawn(async move {
        let started = Instant::now();
        let latencies = futures::stream::iter(0..queries)
            .map(|n| {
                let mut client = client.clone();
                async move {
                    let request = pb::QueryRequest {
                        query: format!("{QUESTION_PREFIX}{n}?"),
                        ..pb::QueryRequest::default()
                    };
                    let began = Instant::now();
                    let mut stream = client.query(request).await?.into_inner();
                    let mut phases = Phases::default();
                    while let Some(event) = stream.message().await? {
                        phases.observe(&event);
                    }
                    let elapsed = began.elapsed();
                    phases.outside_run = elapsed.saturating_sub(phases.run);
                    Ok::<(usize, Duration, Phases), tonic::Status>((n, elapsed, phases))
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        (latencies, started.elapsed())
    });
    let (latencies, wall) = measured
        .await
        .map_err(|error| CliError::Io(format!("the measurement task failed: {error}")))?;

    // The mock's own latency is what its socket measured, per request, from the first byte
    // read to the start of the write of its answer's last bytes: the configured latency plus
    // its HTTP work.
    let mock_time = mock_time_by_query(&mock.requests());
    let mut overheads = Vec::with_capacity(latencies.len());
    let mut end_to_end = Vec::with_capacity(latencies.len());
    let mut mock_share = Vec::with_capacity(latencies.len());
    let mut phases = Vec::with_capacity(latencies.len());
    for outcome in latencies {
        let (n, elapsed, query_phases) = outcome?;
        // Without the mock's own time the overhead would be a guess; better no number.
        let mock = mock_time.get(&n).copied().ok_or_else(|| {
            CliError::Io(format!(
                "the mock has no timing for bench query {n}: its requests no longer carry the question"
            ))
        })?;
        overheads.push(elapsed.saturating_sub(mock));
        end_to_end.push(elapsed);
        mock_share.push(mock);
        phases.push(query_phases);
    }
    let throughput = queries as f64 / wall.as_secs_f64();
    let bound = if latency.is_zero() {
        String::new()
    } else {
        let bound = concurrency as f64 / (latency.as_secs_f64() * 3.0);
        format!(
            " ({:.0}% of the {bound:.0}/s the mock allows)",
            throughput / bound * 100.0
        )
    };
    println!(
        "engine ({}): mock latency {} ms, concurrency {concurrency}: overhead {}; end to end {}, of which mock {}; {throughput:.0} queries/s{bound}",
        if args.no_stream {
            "whole replies"
        } else {
            "streamed replies"
        },
        latency.as_millis(),
        percentiles(&mut overheads),
        median(&mut end_to_end),
        median(&mut mock_share),
    );
    // Where the time goes is only readable without queueing.
    if concurrency == 1 {
        let phase = |pick: fn(&Phases) -> Duration| {
            let mut times: Vec<Duration> = phases.iter().map(pick).collect();
            format!("{:.3} ms", middle(&mut times).as_secs_f64() * 1000.0)
        };
        println!(
            "  where a query's time goes (p50 of each part): model calls {} (the mock's time included), searches {}, the rest of the run {}, gRPC and request handling around the run {}",
            phase(|phases| phases.model_calls),
            phase(|phases| phases.searches),
            phase(|phases| phases
                .run
                .saturating_sub(phases.model_calls + phases.searches)),
            phase(|phases| phases.outside_run),
        );
        println!("  {}", transport_floor_probe(latency).await?);
        if !latency.is_zero() {
            println!("  {}", cold_cache_probe(latency).await);
        }
    }
    Ok(())
}

/// Sums the mock's own time per bench query, recognised by its question in each request's
/// first user message.
fn mock_time_by_query(requests: &[RecordedRequest]) -> HashMap<usize, Duration> {
    let mut mock_time: HashMap<usize, Duration> = HashMap::new();
    for request in requests {
        if let (Some(n), Some(service_time)) = (
            bench_query_number(&request.first_user_text),
            request.service_time,
        ) {
            *mock_time.entry(n).or_default() += service_time;
        }
    }
    mock_time
}

/// Returns `n` from the bench question `"{QUESTION_PREFIX}{n}?"` somewhere in `text`.
fn bench_query_number(text: &str) -> Option<usize> {
    text.split(QUESTION_PREFIX)
        .nth(1)?
        .split('?')
        .next()?
        .parse()
        .ok()
}

/// Times round trips on loopback that carry nothing of DeepRecall, as a query's own travel
/// does: a model call through the same reqwest client to the mock, answered "ok" at once, and
/// counted as the overhead is (the round trip minus the mock's own time at its socket); and a
/// gRPC health check on a bare tonic server, the caller's path. Back to back and, with a slow
/// mock, each after idling as long as the mock takes: a query at concurrency 1 pays one cold
/// model round trip after every model call, so three of them are the floor under its overhead
/// on this machine, whatever the engine does between them.
async fn transport_floor_probe(idle: Duration) -> Result<String, CliError> {
    const BACK_TO_BACK: usize = 200;
    const AFTER_IDLE: usize = 16;
    let probe_error =
        |error: &dyn std::fmt::Display| CliError::Io(format!("transport probe: {error}"));

    let mock = MockLlmServer::start(MockScript::default().with_recording(Recording::Light))
        .await
        .map_err(|error| probe_error(&error))?;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.base_url());
    let body = r#"{"model":"probe","messages":[{"role":"user","content":"ping"}]}"#;
    let model_round_trip = async || -> Result<(), CliError> {
        let response = http
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| probe_error(&error))?;
        response
            .bytes()
            .await
            .map_err(|error| probe_error(&error))?;
        Ok(())
    };
    let model = round_trip_times(idle, BACK_TO_BACK, AFTER_IDLE, model_round_trip).await?;
    // The mock served the requests one at a time, in the order sent, warm-up first. Without
    // its time for each, the floor would be overstated; better no number.
    let mock_times: Vec<Duration> = mock
        .requests()
        .iter()
        .skip(1)
        .map(|request| request.service_time)
        .collect::<Option<_>>()
        .filter(|times: &Vec<Duration>| {
            times.len() == model.back_to_back.len() + model.after_idle.len()
        })
        .ok_or_else(|| probe_error(&"the mock did not time every request"))?;
    let beyond_the_mock = |times: &[Duration], first: usize| -> Vec<Duration> {
        times
            .iter()
            .zip(mock_times.iter().skip(first))
            .map(|(round_trip, mock)| round_trip.saturating_sub(*mock))
            .collect()
    };
    let mut model_warm = beyond_the_mock(&model.back_to_back, 0);
    let mut model_cold = beyond_the_mock(&model.after_idle, BACK_TO_BACK);

    let grpc_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| probe_error(&error))?;
    let grpc_address = grpc_listener
        .local_addr()
        .map_err(|error| probe_error(&error))?;
    let (_health, health_service) = tonic_health::server::health_reporter();
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                grpc_listener,
            )),
    );
    let grpc = async {
        let endpoint = format!("http://{grpc_address}");
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|error| probe_error(&error))?
            .connect()
            .await
            .map_err(|error| CliError::Connect {
                endpoint,
                message: error.to_string(),
            })?;
        let health = tonic_health::pb::health_client::HealthClient::new(channel);
        let health_check = async || -> Result<(), CliError> {
            health
                .clone()
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            Ok(())
        };
        round_trip_times(idle, BACK_TO_BACK, AFTER_IDLE, health_check).await
    }
    .await;
    grpc_server.abort();
    let mut grpc = grpc?;

    let micros = |times: &mut [Duration]| middle(times).as_secs_f64() * 1e6;
    let (model_warm, grpc_warm) = (micros(&mut model_warm), micros(&mut grpc.back_to_back));
    Ok(if idle.is_zero() {
        format!(
            "transport alone on this machine (p50, no DeepRecall code): a model round trip beyond the mock's own time {model_warm:.0} µs (three: {:.2} ms), a gRPC health check on a bare tonic server {grpc_warm:.0} µs",
            3.0 * model_warm / 1000.0,
        )
    } else {
        let (model_cold, grpc_cold) = (micros(&mut model_cold), micros(&mut grpc.after_idle));
        format!(
            "transport alone on this machine (p50, no DeepRecall code): a model round trip beyond the mock's own time {model_warm:.0} µs back to back, {model_cold:.0} µs after {} ms idle (three: {:.2} ms); a gRPC health check on a bare tonic server {grpc_warm:.0} µs, {grpc_cold:.0} µs after idle",
            idle.as_millis(),
            3.0 * model_cold / 1000.0,
        )
    })
}

/// Times of a round trip, in the order taken.
#[derive(Debug, Default)]
struct RoundTrips {
    back_to_back: Vec<Duration>,
    /// Each after sleeping the idle time; empty when it is zero.
    after_idle: Vec<Duration>,
}

/// Times `round_trip` `back_to_back` times in a row after one untimed to warm up, then, when
/// `idle` is not zero, `after_idle` times each after sleeping `idle`.
async fn round_trip_times(
    idle: Duration,
    back_to_back: usize,
    after_idle: usize,
    mut round_trip: impl AsyncFnMut() -> Result<(), CliError>,
) -> Result<RoundTrips, CliError> {
    round_trip().await?;
    let mut times = RoundTrips::default();
    for _ in 0..back_to_back {
        let began = Instant::now();
        round_trip().await?;
        times.back_to_back.push(began.elapsed());
    }
    if !idle.is_zero() {
        for _ in 0..after_idle {
            tokio::time::sleep(idle).await;
            let began = Instant::now();
            round_trip().await?;
            times.after_idle.push(began.elapsed());
        }
    }
    Ok(times)
}

/// The median of `times`, or zero for none.
fn middle(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// The bytes [`cold_cache_probe`] walks: past the two cores' L2 caches, well inside a
/// shared L3.
const PROBE_BYTES: usize = 8 << 20;

/// Measures how much slower this machine runs memory-bound work after idling for `idle`, as
/// a query does after each model call: the same walk over [`PROBE_BYTES`] back to back, then
/// each time after sleeping. On a virtual machine whose neighbours use the shared cache while
/// it idles, the second is markedly slower, and so is every step of a query at concurrency 1
/// with a slow model, however little work the step does.
async fn cold_cache_probe(idle: Duration) -> String {
    const WALKS: usize = 16;
    let mut memory = vec![1u8; PROBE_BYTES];
    let mut walk = || {
        let began = Instant::now();
        // One byte per cache line, written back so that the walk cannot be skipped.
        for line in memory.chunks_mut(64) {
            line[0] = std::hint::black_box(line[0].wrapping_add(1));
        }
        began.elapsed()
    };
    walk();
    let mut warm: Vec<Duration> = (0..WALKS).map(|_| walk()).collect();
    let mut cold = Vec::with_capacity(WALKS);
    for _ in 0..WALKS {
        tokio::time::sleep(idle).await;
        cold.push(walk());
    }
    let (warm, cold) = (middle(&mut warm), middle(&mut cold));
    format!(
        "this machine after {} ms idle: a walk over {} MiB takes {:.0} µs against {:.0} µs back to back ({:.1}x)",
        idle.as_millis(),
        PROBE_BYTES >> 20,
        cold.as_secs_f64() * 1e6,
        warm.as_secs_f64() * 1e6,
        cold.as_secs_f64() / warm.as_secs_f64().max(f64::MIN_POSITIVE),
    )
}

/// How one query's time divides, from the server's own timestamps on its trace events: a
/// model call is the time from a step's start to the call's event, a search the time from
/// the event before it (the call that asked for it) to its own.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    model_calls: Duration,
    searches: Duration,
    /// From the run's start to its last event.
    run: Duration,
    /// The rest of the round trip: the request reaching the run, and the last event the client.
    outside_run: Duration,
}

impl Phases {
    fn observe(&mut self, event: &pb::QueryEvent) {
        use pb::query_event::Event;
        let at = Duration::try_from_secs_f64(event.elapsed_seconds).unwrap_or_default();
        let since_previous = at.saturating_sub(self.run);
        match event.event {
            Some(Event::LlmCall(_)) => self.model_calls += since_previous,
            Some(Event::Search(_)) => self.searches += since_previous,
            _ => {}
        }
        self.run = at;
    }
}

fn median(latencies: &mut [Duration]) -> String {
    format!("p50 {:.3} ms", middle(latencies).as_secs_f64() * 1000.0)
}

fn percentiles(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let at = |fraction: f64| {
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies
            .get(index)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    format!(
        "p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms ({} samples)",
        at(0.50),
        at(0.95),
        at(0.99),
        latencies.len()
    )
}

/// Seeded generator of short documents and queries that look like English to the search: a
/// third of the tokens common function words, the rest from a 30,000-word vocabulary with
/// Zipf-distributed ranks starting after `zipf_offset` (the head of an English Zipf curve being
/// function words). Real text has that shape; a small or flat vocabulary would
/// make every posting list hold every document.
struct Corpus {
    state: u64,
    vocabulary: Vec<String>,
    zipf_offset: f64,
}

/// Function words mixed into documents and queries.
const FUNCTION_WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "for", "with", "on", "by", "as", "at", "from", "that",
];
const VOCABULARY_SIZE: usize = 30_000;
const WORDS_PER_DOCUMENT: usize = 30;

impl Corpus {
    fn new(seed: u64, zipf_offset: usize) -> Self {
        let mut corpus = Corpus {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            vocabulary: Vec::with_capacity(VOCABULARY_SIZE),
            zipf_offset: zipf_offset.max(1) as f64,
        };
        const CONSONANTS: &[u8] = b"bcdfghjklmnprstvwz";
        const VOWELS: &[u8] = b"aeiou";
        while corpus.vocabulary.len() < VOCABULARY_SIZE {
            let syllables = 2 + (corpus.next() % 3) as usize;
            let mut word = String::new();
            for _ in 0..syllables {
                word.push(CONSONANTS[(corpus.next() % CONSONANTS.len() as u64) as usize] as char);
                word.push(VOWELS[(corpus.next() % VOWELS.len() as u64) as usize] as char);
            }
            corpus.vocabulary.push(word);
        }
        corpus
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, seeded, good enough for picking words.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn word(&mut self) -> String {
        if self.next().is_multiple_of(3) {
            let index = (self.next() % FUNCTION_WORDS.len() as u64) as usize;
            return FUNCTION_WORDS[index].to_string();
        }
        // A log-uniform draw over [offset, offset + size) approximates Zipf's law (exponent 1)
        // for the ranks after the first `offset`, which in English are the function words.
        let (offset, size) = (self.zipf_offset, VOCABULARY_SIZE as f64);
        let position = (offset.ln() + self.uniform() * ((offset + size).ln() - offset.ln())).exp();
        let rank = (position - offset) as usize;
        self.vocabulary[rank.min(VOCABULARY_SIZE - 1)].clone()
    }

    fn document(&mut self, index: usize) -> (String, Map<String, Value>) {
        let words: Vec<String> = (0..WORDS_PER_DOCUMENT).map(|_| self.word()).collect();
        let mut metadata = Map::new();
        metadata.insert("group".into(), Value::from(index % 10));
        (format!("{}.", words.join(" ")), metadata)
    }

    fn proto_documents(&mut self, count: usize) -> Vec<pb::Document> {
        (0..count)
            .map(|index| {
                let (content, metadata) = self.document(index);
                pb::Document {
                    id: format!("doc-{index}"),
                    content,
                    metadata: Some(crate::api::convert::json_to_struct(metadata)),
                }
            })
            .collect()
    }

    fn query(&mut self) -> String {
        (0..5).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::prompts;

    fn recorded(first_user_text: String, service_time: Option<Duration>) -> RecordedRequest {
        RecordedRequest {
            path: "/v1/chat/completions".into(),
            headers: Vec::new(),
            body: serde_json::Value::Null,
            first_user_text,
            service_time,
        }
    }

    #[test]
    fn the_mock_time_of_each_query_is_found_in_the_prompt_the_engine_sends() {
        let prompt =
            |n: usize| prompts::user_message(&format!("{QUESTION_PREFIX}{n}?"), "default", 200, "");
        let requests = [
            recorded(prompt(7), Some(Duration::from_millis(50))),
            recorded(prompt(12), Some(Duration::from_millis(40))),
            recorded(prompt(7), Some(Duration::from_millis(51))),
            // Not answered yet: no time to count.
            recorded(prompt(12), None),
            recorded(
                "a question of no bench query".into(),
                Some(Duration::from_secs(1)),
            ),
        ];

        let mock_time = mock_time_by_query(&requests);

        assert_eq!(mock_time.len(), 2);
        assert_eq!(mock_time[&7], Duration::from_millis(101));
        assert_eq!(mock_time[&12], Duration::from_millis(40));
    }

    #[test]
    fn bench_query_numbers_need_the_whole_question() {
        assert_eq!(bench_query_number(&format!("{QUESTION_PREFIX}3?")), Some(3));
        assert_eq!(bench_query_number(&format!("{QUESTION_PREFIX}x?")), None);
        assert_eq!(bench_query_number("bench 3?"), None);
    }

    #[tokio::test]
    async fn round_trips_are_timed_back_to_back_and_after_idling_only_when_asked() {
        let mut calls = 0;
        let times = round_trip_times(Duration::ZERO, 5, 3, async || {
            calls += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(calls, 6, "one warm-up and five timed");
        assert_eq!((times.back_to_back.len(), times.after_idle.len()), (5, 0));

        let mut calls = 0;
        let times = round_trip_times(Duration::from_millis(2), 5, 3, async || {
            calls += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(calls, 9);
        assert_eq!(times.after_idle.len(), 3);
        assert!(
            times
                .after_idle
                .iter()
                .all(|time| *time < Duration::from_secs(1))
        );

        let failed = round_trip_times(Duration::ZERO, 5, 3, async || {
            Err(CliError::Io("refused".into()))
        })
        .await;
        assert!(matches!(failed, Err(CliError::Io(message)) if message == "refused"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_transport_probe_talks_to_real_http_and_grpc_servers() {
        let warm_only = transport_floor_probe(Duration::ZERO).await.unwrap();
        assert!(
            warm_only.contains("a model round trip beyond the mock's own time"),
            "{warm_only}"
        );
        assert!(warm_only.contains("a gRPC health check"), "{warm_only}");
        assert!(!warm_only.contains("after"), "{warm_only}");

        let with_idle = transport_floor_probe(Duration::from_millis(1))
            .await
            .unwrap();
        assert!(with_idle.contains("after 1 ms idle"), "{with_idle}");
    }
}
