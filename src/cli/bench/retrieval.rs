//! `deeprecall bench retrieval`: how well each retriever finds the passages that answer a
//! dataset's questions, over a corpus read like `deeprecall ingest` reads it.
//!
//! Retrievers: BM25 alone, the hashing embedder's vectors alone, and both fused (what a query
//! does with the default settings); with a semantic embedder configured, its vectors alone and
//! fused with BM25; with a reranker configured, that best fusion reranked. Each is scored by
//! recall@5, recall@20 (the share of a question's relevant passages among the first k hits,
//! averaged over questions) and MRR@10 (the reciprocal rank of the first relevant hit within
//! ten).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::BenchArgs;
use crate::cli::CliError;
use crate::cli::ingest::read_chunks;
use crate::config::{Config, EmbedderKind, RerankerKind};
use crate::embed::{Embedder, HashingEmbedder};
use crate::rerank::Reranker;
use crate::server::retrieval::{build_embedder, build_reranker};
use crate::store::embedded::Ranking;
use crate::store::{
    DocumentStore, EmbeddedStore, EmbeddedStoreConfig, Filter, NewDocument, SearchRequest,
};

/// Chunk size of `deeprecall ingest`'s default, so that ids match a dataset written for it.
pub(super) const CHUNK_SIZE: usize = 1200;
/// Hits fetched per question: the deepest cut scored.
const DEPTH: usize = 20;
/// Candidates a reranker reorders.
const RERANK_CANDIDATES: usize = 50;

/// One question of a dataset: the `deeprecall eval` format, or `query` and `relevant_ids`.
#[derive(Debug, Deserialize)]
struct Question {
    #[serde(alias = "query")]
    question: String,
    #[serde(alias = "relevant_ids")]
    supporting_ids: Vec<String>,
}

/// Scores of one retriever over a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Scores {
    pub(crate) recall_at_5: f64,
    pub(crate) recall_at_20: f64,
    pub(crate) mrr_at_10: f64,
}

/// Scores ranked hits against the relevant ids of each question, averaged over questions.
pub(crate) fn score(results: &[(Vec<String>, Vec<String>)]) -> Scores {
    if results.is_empty() {
        return Scores::default();
    }
    let mut total = Scores::default();
    for (hits, relevant) in results {
        let relevant: HashSet<&str> = relevant.iter().map(String::as_str).collect();
        let recall = |k: usize| {
            let found = hits
                .iter()
                .take(k)
                .filter(|id| relevant.contains(id.as_str()))
                .count();
            found as f64 / relevant.len().max(1) as f64
        };
        total.recall_at_5 += recall(5);
        total.recall_at_20 += recall(20);
        total.mrr_at_10 += hits
            .iter()
            .take(10)
            .position(|id| relevant.contains(id.as_str()))
            .map_or(0.0, |rank| 1.0 / (rank as f64 + 1.0));
    }
    let count = results.len() as f64;
    Scores {
        recall_at_5: total.recall_at_5 / count,
        recall_at_20: total.recall_at_20 / count,
        mrr_at_10: total.mrr_at_10 / count,
    }
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), CliError> {
    let dataset = args.dataset.as_deref().ok_or_else(|| {
        CliError::Usage("bench retrieval needs --dataset FILE (JSONL of questions)".into())
    })?;
    let questions = read_dataset(dataset)?;
    let (chunks, _) = read_chunks(std::slice::from_ref(&args.corpus), CHUNK_SIZE)?;
    let documents: Vec<NewDocument> = chunks
        .into_iter()
        .map(|chunk| NewDocument {
            id: Some(chunk.id),
            content: chunk.content,
            metadata: chunk.metadata,
        })
        .collect();
    let config = retrieval_config(args);
    let failed = |error: &dyn std::fmt::Display| CliError::Io(error.to_string());
    let semantic = match config.embedding.embedder {
        EmbedderKind::Hashing => None,
        _ => Some(build_embedder(&config, None).map_err(|error| failed(&error))?),
    };
    let reranker = build_reranker(&config, None).map_err(|error| failed(&error))?;

    println!(
        "retrieval: {} questions from {}, {} passages from {}",
        questions.len(),
        dataset.display(),
        documents.len(),
        args.corpus.display()
    );
    println!("| retriever | recall@5 | recall@20 | MRR@10 |");
    println!("|---|---:|---:|---:|");
    let hashing: Arc<dyn Embedder> = Arc::new(HashingEmbedder::default());
    let lexical = Loaded::new(hashing, &documents).await?;
    for (label, ranking) in [
        ("BM25", Ranking::Keyword),
        ("hashing vectors", Ranking::Vector),
        ("hybrid: BM25 + hashing", Ranking::Hybrid),
    ] {
        print_row(label, lexical.scores(&questions, ranking, None).await?);
    }
    let best = match semantic {
        Some(embedder) => {
            let id = embedder.id();
            let loaded = Loaded::new(embedder, &documents).await?;
            print_row(
                &format!("{id} vectors"),
                loaded.scores(&questions, Ranking::Vector, None).await?,
            );
            print_row(
                &format!("hybrid: BM25 + {id}"),
                loaded.scores(&questions, Ranking::Hybrid, None).await?,
            );
            loaded
        }
        None => lexical,
    };
    if let Some(reranker) = reranker {
        let label = format!("hybrid + {}", reranker.id());
        let scores = best
            .scores(&questions, Ranking::Hybrid, Some(reranker.as_ref()))
            .await?;
        print_row(&label, scores);
    }
    Ok(())
}

/// The embedder and reranker settings the bench's flags give.
pub(super) fn retrieval_config(args: &BenchArgs) -> Config {
    let mut config = Config::default();
    let embedding = &mut config.embedding;
    if let Some(dir) = &args.embedding_model_dir {
        embedding.embedder = EmbedderKind::Local;
        embedding.model_dir = Some(dir.clone());
        if let Some(threads) = args.embedding_threads {
            embedding.threads = threads;
        }
        if let Some(batch_size) = args.embedding_batch_size {
            embedding.batch_size = batch_size;
        }
    } else if let Some(url) = &args.embedding_base_url {
        embedding.embedder = EmbedderKind::Openai;
        embedding.base_url = url.clone();
        embedding.model = args.embedding_model.clone().unwrap_or_default();
        embedding.dimensions = args.embedding_dimensions;
    }
    let rerank = &mut config.rerank;
    if let Some(dir) = &args.reranker_model_dir {
        rerank.reranker = RerankerKind::Local;
        rerank.model_dir = Some(dir.clone());
    } else if let Some(url) = &args.reranker_base_url {
        rerank.reranker = RerankerKind::Cohere;
        rerank.base_url = url.clone();
        rerank.model = args.reranker_model.clone().unwrap_or_default();
    }
    config
}

fn read_dataset(path: &Path) -> Result<Vec<Question>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::Io(format!("cannot read {}: {error}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|error| {
                CliError::Usage(format!("{} line {}: {error}", path.display(), number + 1))
            })
        })
        .collect()
}

fn print_row(label: &str, scores: Scores) {
    println!(
        "| {label} | {:.3} | {:.3} | {:.3} |",
        scores.recall_at_5, scores.recall_at_20, scores.mrr_at_10
    );
}

/// The corpus in a store of its own, embedded by one embedder.
struct Loaded {
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

impl Loaded {
    async fn new(embedder: Arc<dyn Embedder>, documents: &[NewDocument]) -> Result<Self, CliError> {
        let dir = tempfile::tempdir().map_err(|error| CliError::Io(error.to_string()))?;
        let store = EmbeddedStore::open(
            EmbeddedStoreConfig {
                data_dir: dir.path().to_path_buf(),
                read_connections: 1,
                ..EmbeddedStoreConfig::default()
            },
            embedder,
        )
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
        store
            .add_documents("bench", documents.to_vec())
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        Ok(Loaded { store, _dir: dir })
    }

    async fn scores(
        &self,
        questions: &[Question],
        ranking: Ranking,
        reranker: Option<&dyn Reranker>,
    ) -> Result<Scores, CliError> {
        let mut results = Vec::with_capacity(questions.len());
        for question in questions {
            let depth = if reranker.is_some() {
                RERANK_CANDIDATES
            } else {
                DEPTH
            };
            let mut hits = self
                .store
                .search_ranked(
                    SearchRequest {
                        collection: "bench".into(),
                        query: question.question.clone(),
                        top_k: depth,
                        filter: Filter::default(),
                    },
                    ranking,
                )
                .await
                .map_err(|error| CliError::Io(error.to_string()))?;
            if let Some(reranker) = reranker {
                let passages: Vec<String> = hits.iter().map(|hit| hit.content.clone()).collect();
                let scores = reranker
                    .score(&question.question, &passages)
                    .await
                    .map_err(|error| CliError::Io(error.to_string()))?;
                let mut scored: Vec<_> = hits.into_iter().zip(scores).collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1));
                hits = scored.into_iter().map(|(hit, _)| hit).collect();
            }
            let ids = hits.into_iter().take(DEPTH).map(|hit| hit.id).collect();
            results.push((ids, question.supporting_ids.clone()));
        }
        Ok(score(&results))
    }
}

/// Where the corpus is read from when `--corpus` is not given.
pub(super) fn default_corpus() -> PathBuf {
    PathBuf::from("examples/handbook")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn recall_and_reciprocal_rank_follow_their_definitions() {
        let results = vec![
            // Both relevant found, the first at rank 2.
            (ids(&["x", "a", "y", "b"]), ids(&["a", "b"])),
            // One of two relevant, at rank 6: inside recall@20, outside recall@5.
            (ids(&["1", "2", "3", "4", "5", "c"]), ids(&["c", "d"])),
        ];
        let scores = score(&results);
        assert!((scores.recall_at_5 - (1.0 + 0.0) / 2.0).abs() < 1e-9);
        assert!((scores.recall_at_20 - (1.0 + 0.5) / 2.0).abs() < 1e-9);
        assert!((scores.mrr_at_10 - (0.5 + 1.0 / 6.0) / 2.0).abs() < 1e-9);
        assert_eq!(score(&[]), Scores::default());
    }
}
