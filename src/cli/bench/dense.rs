//! `deeprecall bench search --dense-dimensions N`: the embedded store's two ways of ranking
//! dense vectors side by side on one corpus, in one run: the full scan and the HNSW graph.
//! Latency of the hybrid search for each, and how many of the scan's vector hits the graph
//! finds (its recall).

use std::sync::Arc;
use std::time::Instant;

use super::store::{RandomDense, load_search_corpus, search_filters};
use super::{BenchArgs, Corpus, percentiles};
use crate::cli::CliError;
use crate::store::embedded::Ranking;
use crate::store::{DocumentStore, EmbeddedStore, EmbeddedStoreConfig, SearchRequest};

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
    let loading = Instant::now();
    load_search_corpus(&store, args.search_documents, args.zipf_offset).await?;
    println!(
        "search (embedded, dense {dimension}, {label}): loaded {} documents in {:.1} s",
        args.search_documents,
        loading.elapsed().as_secs_f64()
    );
    if graph_from != usize::MAX {
        wait_for_graph(&store, dimension, loading).await?;
    }
    Ok((store, data_dir))
}

/// Waits until the store's background builder has installed the collection's graph; the
/// bound only turns a builder that never finishes into an error.
async fn wait_for_graph(
    store: &EmbeddedStore,
    dimension: usize,
    since: Instant,
) -> Result<(), CliError> {
    let waiting = Instant::now();
    while !store.searches_graph("bench") {
        if waiting.elapsed() > std::time::Duration::from_secs(3_600) {
            return Err(CliError::Io(
                "the graph was not built within an hour".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!(
        "search (embedded, dense {dimension}, hnsw): graph ready {:.1} s after the start, {:.1} s \
         after the last write",
        since.elapsed().as_secs_f64(),
        waiting.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) async fn side_by_side(args: &BenchArgs, dimension: usize) -> Result<(), CliError> {
    let (scan, _scan_dir) = loaded(args, dimension, usize::MAX, "scan").await?;
    let (graph, graph_dir) = loaded(args, dimension, 0, "hnsw").await?;
    for (filter_label, filter) in search_filters()? {
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
    // What a restart costs: the rows read back and the graph built again from them.
    drop(graph);
    let reopening = Instant::now();
    let reopened = EmbeddedStore::open(
        EmbeddedStoreConfig {
            data_dir: graph_dir.path().to_path_buf(),
            read_connections: 4,
            hnsw_min_documents: 0,
            ..EmbeddedStoreConfig::default()
        },
        Arc::new(RandomDense { dimension }),
    )
    .await
    .map_err(failed)?;
    println!(
        "search (embedded, dense {dimension}, hnsw): reopened with {} documents in {:.1} s",
        args.search_documents,
        reopening.elapsed().as_secs_f64()
    );
    wait_for_graph(&reopened, dimension, reopening).await?;
    drop(reopened);
    Ok(())
}
