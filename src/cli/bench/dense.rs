//! `deeprecall bench search --dense-dimensions N`: the embedded store's two ways of ranking
//! dense vectors side by side on one corpus, in one run: the full scan and the HNSW graph.
//! Latency of the hybrid search for each, and how many of the scan's vector hits the graph
//! finds (its recall).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Map;

use super::store::RandomDense;
use super::{BenchArgs, Corpus, percentiles};
use crate::cli::CliError;
use crate::store::embedded::Ranking;
use crate::store::{
    DocumentStore, EmbeddedStore, EmbeddedStoreConfig, Filter, NewDocument, SearchRequest,
};

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Io(error.to_string())
}

/// A store on its own directory, loaded with the bench corpus, searching through the graph
/// from `graph_from` documents.
async fn loaded(
    args: &BenchArgs,
    dimension: usize,
    graph_from: usize,
    label: &str,
) -> Result<(EmbeddedStore, tempfile::TempDir), CliError> {
    let data_dir = tempfile::tempdir().map_err(failed)?;
    let store = EmbeddedStore::open(
        EmbeddedStoreConfig {
            data_dir: data_dir.path().to_path_buf(),
            read_connections: 4,
            hnsw_min_documents: graph_from,
            ..EmbeddedStoreConfig::default()
        },
        Arc::new(RandomDense { dimension }),
    )
    .await
    .map_err(failed)?;
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
        store.add_documents("bench", batch).await.map_err(failed)?;
        index = end;
    }
    println!(
        "search (embedded, dense {dimension}, {label}): loaded {} documents in {:.1} s",
        args.search_documents,
        loading.elapsed().as_secs_f64()
    );
    Ok((store, data_dir))
}

pub(super) async fn side_by_side(args: &BenchArgs, dimension: usize) -> Result<(), CliError> {
    let (scan, _scan_dir) = loaded(args, dimension, usize::MAX, "scan").await?;
    let (graph, _graph_dir) = loaded(args, dimension, 0, "hnsw").await?;
    let filtered = Filter::from_json(
        serde_json::json!({"group": {"$in": [1, 2, 3]}})
            .as_object()
            .unwrap_or(&Map::new()),
    )
    .map_err(|error| CliError::Usage(error.to_string()))?;
    for (filter_label, filter) in [("unfiltered", Filter::default()), ("filtered", filtered)] {
        let mut corpus = Corpus::new(23, args.zipf_offset);
        let queries: Vec<String> = (0..args.samples).map(|_| corpus.query()).collect();
        let request = |query: &String| SearchRequest {
            collection: "bench".into(),
            query: query.clone(),
            top_k: args.top_k,
            filter: filter.clone(),
        };
        for (label, store) in [("scan", &scan), ("hnsw", &graph)] {
            let mut latencies = Vec::with_capacity(queries.len());
            for query in &queries {
                let started = Instant::now();
                store.search(request(query)).await.map_err(failed)?;
                latencies.push(started.elapsed());
            }
            println!(
                "search (embedded, dense {dimension}, {label}): hybrid top-{} over {} documents, \
                 {filter_label}: {}",
                args.top_k,
                args.search_documents,
                percentiles(&mut latencies)
            );
        }
        let (mut found, mut expected) = (0usize, 0usize);
        for query in &queries {
            let truth = scan
                .search_ranked(request(query), Ranking::Vector)
                .await
                .map_err(failed)?;
            let approximate = graph
                .search_ranked(request(query), Ranking::Vector)
                .await
                .map_err(failed)?;
            expected += truth.len();
            found += truth
                .iter()
                .filter(|hit| approximate.iter().any(|other| other.id == hit.id))
                .count();
        }
        println!(
            "search (embedded, dense {dimension}): recall@{} of the graph's vector ranking \
             against the scan's, {filter_label}: {:.3}",
            args.top_k,
            found as f64 / expected.max(1) as f64
        );
    }
    Ok(())
}
