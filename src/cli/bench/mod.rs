//! `deeprecall bench`: ingest throughput and cached-query latency over real gRPC, hybrid
//! search latency on the embedded store, and a soak under mixed traffic. Synthetic documents come from a seeded generator, so
//! runs are comparable. Build with `--release` for numbers worth quoting.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use self::cached::cached_once;
use self::corpus::Corpus;
use self::engine::{QUESTION_PREFIX, mock_time_by_query};
use super::{CliError, READY_TIMEOUT, wait_until_serving};
use crate::config::{Config, StoreBackend, StoreConfig, VectorIndex};
use crate::server;
mod cached;
mod corpus;
mod dense;
mod embed;
mod engine;
mod probes;
mod process;
mod protocols;
mod replicas;
mod retrieval;
mod soak;
mod store;

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
    /// Mixed traffic for `--minutes`, watching memory, descriptors, tasks and latency; not
    /// part of `all`.
    Soak,
    /// Queries/s through one replica and through two sharing one PostgreSQL
    /// (`--database-url`) and one Redis (`--redis-url`); not part of `all`.
    Replicas,
    /// Recall@5, recall@20 and MRR@10 of every configured retriever over `--dataset`; not
    /// part of `all`.
    Retrieval,
    /// Chunks/s of the local embedder (`--embedding-model-dir`), beside sentence-transformers
    /// with `--python`; not part of `all`.
    Embed,
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
    /// Cached-query suite: also measures the redis backend on this server. Replicas: the Redis
    /// the replicas share for their cache and rate limits.
    #[arg(long)]
    redis_url: Option<String>,
    /// Engine suite: only this concurrency (default: 1, 16 and 64). Soak and replicas: clients
    /// sending at once (default 64).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Engine suite: only this mock latency in milliseconds (default: 0 and 50). Replicas:
    /// the mock's latency (default 50).
    #[arg(long)]
    mock_latency_ms: Option<u64>,
    /// Ingest and search suites: also measure the postgres store on this database (an empty
    /// one: the bench writes its own collections and deletes them after). Replicas: the
    /// database they share.
    #[arg(long)]
    database_url: Option<String>,
    /// Search suite: search dense vectors of this many dimensions (random unit vectors from a
    /// bench embedder: the index's speed, not retrieval quality) instead of hashed text.
    #[arg(long)]
    dense_dimensions: Option<usize>,
    /// Search suite on postgres: keep the searched collection after the run, and search one
    /// an earlier run kept (the same documents: same `--search-documents` and
    /// `--zipf-offset`) instead of loading it again, which at 100,000 documents spares minutes
    /// of graph building between two measurements.
    #[arg(long)]
    keep_search_collection: bool,
    /// Vector index of the postgres store: hnsw or exact.
    #[arg(long, default_value = "hnsw")]
    vector_index: String,
    /// Soak: how long the traffic runs, in minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Soak: seconds between two rows of the report.
    #[arg(long, default_value_t = 60.0)]
    interval_seconds: f64,
    /// Soak: documents in the collection the queries search.
    #[arg(long, default_value_t = 2_000)]
    documents: usize,
    /// Soak: seed of the traffic mix (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Retrieval: JSONL of questions with the ids of their relevant passages
    /// (`supporting_ids`, as `deeprecall eval` datasets have, or `relevant_ids`).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Retrieval and embed: files or directory the passages come from, read as `deeprecall ingest`
    /// reads them.
    #[arg(long, default_value_os_t = retrieval::default_corpus())]
    corpus: PathBuf,
    /// Embed: texts embedded, the passages of `--corpus` cycled.
    #[arg(long, default_value_t = 1_000)]
    chunks: usize,
    /// Embed, retrieval and ingest: threads running the local model.
    #[arg(long)]
    embedding_threads: Option<usize>,
    /// Embed, retrieval and ingest: texts per forward pass of the local model (and per
    /// sentence-transformers batch beside it).
    #[arg(long)]
    embedding_batch_size: Option<usize>,
    /// Embed: a Python with sentence-transformers, to embed the same texts beside the local
    /// embedder in the same run.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Embed: rounds, each timing the local embedder and then sentence-transformers over all
    /// the texts; the medians are compared, so that a slow spell on a shared machine weighs
    /// on both sides alike.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Retrieval, embed and ingest: a sentence-transformers model directory (local embedder).
    #[arg(long)]
    embedding_model_dir: Option<PathBuf>,
    /// Retrieval and ingest: an OpenAI-compatible embeddings API root (openai embedder).
    #[arg(long)]
    embedding_base_url: Option<String>,
    /// Retrieval: the openai embedder's model.
    #[arg(long)]
    embedding_model: Option<String>,
    /// Retrieval: the openai embedder's vector size.
    #[arg(long)]
    embedding_dimensions: Option<usize>,
    /// Retrieval: a cross-encoder model directory (local reranker).
    #[arg(long)]
    reranker_model_dir: Option<PathBuf>,
    /// Retrieval: a Cohere-compatible rerank API root (cohere reranker).
    #[arg(long)]
    reranker_base_url: Option<String>,
    /// Retrieval: the cohere reranker's model.
    #[arg(long)]
    reranker_model: Option<String>,
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
        store::ingest(&args).await?;
    }
    if matches!(args.suite, Suite::Search | Suite::All) {
        store::search(&args).await?;
    }
    if matches!(args.suite, Suite::CachedQuery | Suite::All) {
        cached::cached_query(&args).await?;
    }
    if matches!(args.suite, Suite::Engine | Suite::All) {
        let latencies = args.mock_latency_ms.map_or(vec![0, 50], |only| vec![only]);
        let concurrencies = args.concurrency.map_or(vec![1, 16, 64], |only| vec![only]);
        for &latency_ms in &latencies {
            for &concurrency in &concurrencies {
                engine::engine_overhead(&args, Duration::from_millis(latency_ms), concurrency)
                    .await?;
            }
        }
    }
    if matches!(args.suite, Suite::Protocols | Suite::All) {
        protocols::protocols(&args).await?;
    }
    if args.suite == Suite::Soak {
        soak::soak(&args).await?;
    }
    if args.suite == Suite::Retrieval {
        return retrieval::run(&args).await;
    }
    if args.suite == Suite::Embed {
        return embed::run(&args).await;
    }
    if args.suite == Suite::Replicas {
        let (Some(database_url), Some(redis_url)) = (&args.database_url, &args.redis_url) else {
            return Err(CliError::Usage(
                "bench replicas needs --database-url and --redis-url: the replicas share them"
                    .into(),
            ));
        };
        replicas::replicas(&args, database_url, redis_url).await?;
    }
    Ok(())
}

/// A server on a throwaway data directory, stopped on drop of `stop`.
pub(super) struct BenchServer {
    pub(super) endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    _data_dir: tempfile::TempDir,
}

impl BenchServer {
    pub(super) async fn start_with(configure: impl FnOnce(&mut Config)) -> Result<Self, CliError> {
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
pub(super) fn bench_stores(
    args: &BenchArgs,
) -> Result<Vec<(&'static str, Option<StoreConfig>)>, CliError> {
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

/// The median of `times`, or zero for none.
pub(super) fn middle(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

pub(super) fn median(latencies: &mut [Duration]) -> String {
    format!("p50 {:.3} ms", middle(latencies).as_secs_f64() * 1000.0)
}

pub(super) fn percentiles(latencies: &mut [Duration]) -> String {
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
