//! `deeprecall bench ingest` and `search`: AddDocuments throughput over gRPC, and hybrid search
//! latency on the store itself, on the embedded store and optionally PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;

use super::{BenchArgs, BenchServer, Corpus, bench_stores, percentiles};
use crate::api::pb;
use crate::cli::{CliError, connect};
use crate::config::StoreConfig;
use crate::embed::{EmbedError, Embedder, Embedding, HashingEmbedder};
use crate::store::{
    DocumentStore, EmbeddedStore, EmbeddedStoreConfig, Filter, NewDocument, PostgresStore,
    SearchRequest, postgres::BacklogWatch,
};

/// The ingest suite's collection: another than the search suite's, whose collection
/// `--keep-search-collection` keeps between runs in the same database.
const INGEST_COLLECTION: &str = "bench-ingest";

pub(super) async fn ingest(args: &BenchArgs) -> Result<(), CliError> {
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
    let embedding = super::retrieval::retrieval_config(args).embedding;
    let backlog = match &store {
        Some(config) if config.vector_index == crate::config::VectorIndex::Hnsw => {
            Some(BacklogWatch::new(config).map_err(|error| CliError::Io(error.to_string()))?)
        }
        _ => None,
    };
    let embedder = match embedding.embedder {
        crate::config::EmbedderKind::Hashing => String::new(),
        kind => format!(", {} embedder", kind.as_str()),
    };
    let server = BenchServer::start_with(|config| {
        config.embedding = embedding;
        if let Some(store) = store {
            config.store = StoreConfig {
                data_dir: config.store.data_dir.clone(),
                ..store
            };
        }
    })
    .await?;
    let mut client = connect(&server.endpoint, None).await?;
    // Left behind by a stopped run; no-op on an empty database.
    let _ = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: INGEST_COLLECTION.into(),
        })
        .await;
    let documents = Corpus::new(7, args.zipf_offset).proto_documents(args.ingest_documents);
    let started = Instant::now();
    for batch in documents.chunks(args.batch_size) {
        client
            .add_documents(pb::AddDocumentsRequest {
                collection: INGEST_COLLECTION.into(),
                documents: batch.to_vec(),
            })
            .await?;
    }
    let elapsed = started.elapsed();
    println!(
        "ingest ({label}{embedder}): {} documents in {:.2} s over gRPC, batches of {} = {:.0} \
         documents/s",
        args.ingest_documents,
        elapsed.as_secs_f64(),
        args.batch_size,
        args.ingest_documents as f64 / elapsed.as_secs_f64()
    );
    if let Some(store) = backlog {
        let graphed = wait_for_graph(&store).await?;
        let total = started.elapsed();
        println!(
            "ingest ({label}{embedder}): all {} in the HNSW graph {:.2} s after the first \
             write ({:.2} s after the last acknowledgement) = {:.0} documents/s",
            args.ingest_documents,
            total.as_secs_f64(),
            graphed.as_secs_f64(),
            args.ingest_documents as f64 / total.as_secs_f64()
        );
    }
    let _ = client
        .delete_collection(pb::DeleteCollectionRequest {
            collection: INGEST_COLLECTION.into(),
        })
        .await;
    Ok(())
}

/// Queries whose hits the recall of the postgres store's index is measured on.
const RECALL_QUERIES: usize = 200;

/// The share of the hits `exact` finds (vectors ranked exactly) that `store` finds too.
async fn recall_against(
    store: &dyn DocumentStore,
    exact: &PostgresStore,
    corpus: &mut Corpus,
    filter: &Filter,
    args: &BenchArgs,
) -> Result<f64, CliError> {
    let (mut found, mut wanted) = (0usize, 0usize);
    for _ in 0..RECALL_QUERIES.min(args.samples) {
        let request = SearchRequest {
            collection: "bench".into(),
            query: corpus.query(),
            top_k: args.top_k,
            filter: filter.clone(),
        };
        let truth = exact
            .search(request.clone())
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        let hits = store
            .search(request)
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        wanted += truth.len();
        found += truth
            .iter()
            .filter(|hit| hits.iter().any(|other| other.id == hit.id))
            .count();
    }
    Ok(found as f64 / wanted.max(1) as f64)
}

/// Waits until the postgres store's vector backlog is empty, and returns how long that took.
/// Polls: a benchmark, where a second of lag in noticing costs nothing.
async fn wait_for_graph(backlog: &BacklogWatch) -> Result<Duration, CliError> {
    let started = Instant::now();
    while backlog
        .pending()
        .await
        .map_err(|error| CliError::Io(error.to_string()))?
        > 0
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}

pub(super) async fn search(args: &BenchArgs) -> Result<(), CliError> {
    for (label, store) in bench_stores(args)? {
        match (&store, args.dense_dimensions) {
            (None, Some(dimension)) => super::dense::side_by_side(args, dimension).await?,
            _ => search_in(args, label, store).await?,
        }
    }
    Ok(())
}

async fn search_in(
    args: &BenchArgs,
    label: &str,
    postgres: Option<StoreConfig>,
) -> Result<(), CliError> {
    let data_dir = tempfile::tempdir().map_err(|error| CliError::Io(error.to_string()))?;
    let embedder: Arc<dyn Embedder> = match args.dense_dimensions {
        Some(dimension) => Arc::new(RandomDense { dimension }),
        None => Arc::new(HashingEmbedder::new(
            crate::embed::hashing::DEFAULT_DIMENSION,
        )),
    };
    let label = match args.dense_dimensions {
        Some(dimension) => format!("{label}, dense {dimension}"),
        None => label.to_string(),
    };
    let mut backlog = None;
    let mut exact_twin = None;
    let store: Arc<dyn DocumentStore> = match postgres {
        None => Arc::new(
            EmbeddedStore::open(
                EmbeddedStoreConfig {
                    data_dir: data_dir.path().to_path_buf(),
                    read_connections: 4,
                    ..EmbeddedStoreConfig::default()
                },
                embedder,
            )
            .await
            .map_err(|error| CliError::Io(error.to_string()))?,
        ),
        Some(config) => {
            let store = PostgresStore::connect(&config, embedder)
                .await
                .map_err(|error| CliError::Io(error.to_string()))?;
            if config.vector_index == crate::config::VectorIndex::Hnsw {
                backlog =
                    Some(BacklogWatch::new(&config).map_err(|e| CliError::Io(e.to_string()))?);
                exact_twin = Some(store.ranking_exactly());
            }
            Arc::new(store)
        }
    };
    let keep = args.keep_search_collection && backlog.is_some();
    let kept = store
        .collection("bench")
        .await
        .map_err(|error| CliError::Io(error.to_string()))?
        .is_some_and(|info| info.document_count == args.search_documents as u64);
    let mut corpus = if keep && kept {
        println!("search ({label}): searching the collection an earlier run kept");
        skip_search_corpus(args.search_documents, args.zipf_offset)
    } else {
        store
            .delete_collection("bench")
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        let loading = Instant::now();
        let corpus =
            load_search_corpus(store.as_ref(), args.search_documents, args.zipf_offset).await?;
        println!(
            "search ({label}): loaded {} documents in {:.1} s",
            args.search_documents,
            loading.elapsed().as_secs_f64()
        );
        corpus
    };
    if let Some(backlog) = &backlog {
        // Searches are measured on the steady state, every vector in the graph.
        let graphed = wait_for_graph(backlog).await?;
        println!(
            "search ({label}): all in the HNSW graph {:.1} s later",
            graphed.as_secs_f64()
        );
    }

    for (filter_label, filter) in search_filters()? {
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
        if let Some(exact) = &exact_twin {
            let recall = recall_against(store.as_ref(), exact, &mut corpus, &filter, args).await?;
            println!(
                "search ({label}): {filter_label}, the hybrid top-{} through the HNSW index holds \
                 {:.3} of the hits found with vectors ranked exactly ({} queries)",
                args.top_k,
                recall,
                RECALL_QUERIES.min(args.samples)
            );
        }
    }
    if !keep {
        store
            .delete_collection("bench")
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
    }
    Ok(())
}

/// The corpus as [`load_search_corpus`] leaves it after `documents`, without writing them:
/// the queries drawn next are the ones a run that loaded the collection would draw.
fn skip_search_corpus(documents: usize, zipf_offset: usize) -> Corpus {
    let mut corpus = Corpus::new(11, zipf_offset);
    for n in 0..documents {
        corpus.document(n);
    }
    corpus
}

/// The search suites' two cases: no filter, and `group $in [1,2,3]`, which admits 30% of
/// the corpus.
pub(super) fn search_filters() -> Result<[(&'static str, Filter); 2], CliError> {
    let filtered = Filter::from_json(
        serde_json::json!({"group": {"$in": [1, 2, 3]}})
            .as_object()
            .unwrap_or(&Map::new()),
    )
    .map_err(|error| CliError::Usage(error.to_string()))?;
    Ok([("unfiltered", Filter::default()), ("filtered", filtered)])
}

/// Writes the search suite's `documents` into the collection "bench", 5,000 a call, and returns
/// the corpus, ready to draw queries from the same distribution.
pub(super) async fn load_search_corpus(
    store: &dyn DocumentStore,
    documents: usize,
    zipf_offset: usize,
) -> Result<Corpus, CliError> {
    let mut corpus = Corpus::new(11, zipf_offset);
    let mut index = 0;
    while index < documents {
        let end = (index + 5_000).min(documents);
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
    Ok(corpus)
}

/// Dense unit vectors with none of a model's cost: each word of the bench corpus stands for a
/// random direction of its own, and a text for the normalised sum of its words' directions.
/// Every dimension is filled, as a neural embedder fills them, and texts that share words are
/// near each other, as paraphrases are under one; vectors drawn at random per text instead
/// would all be about equally far apart (cosines within ±0.25 in 384 dimensions), a case no
/// embedder produces and where no graph index finds neighbours.
#[derive(Debug)]
pub(super) struct RandomDense {
    pub(super) dimension: usize,
}

impl RandomDense {
    fn word_direction(&self, word: &str, into: &mut [f32]) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        word.hash(&mut hasher);
        let mut rng = fastrand::Rng::with_seed(hasher.finish());
        for value in into.iter_mut() {
            *value += rng.f32() * 2.0 - 1.0;
        }
    }
}

#[async_trait::async_trait]
impl Embedder for RandomDense {
    fn id(&self) -> String {
        format!("bench-word-directions:{}", self.dimension)
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn dense(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        Ok(texts
            .iter()
            .map(|text| {
                let mut values = vec![0.0f32; self.dimension];
                for word in text.split_whitespace() {
                    self.word_direction(&word.to_lowercase(), &mut values);
                }
                let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                values.iter_mut().for_each(|v| *v /= norm);
                Embedding::from_dense(&values)
            })
            .collect())
    }
}
