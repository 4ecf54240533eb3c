//! A collection's HNSW graph, built away from the collection's lock: the graph takes seconds
//! per 10,000 rows, and the collection must keep serving and taking writes meanwhile.

use std::sync::Arc;

use super::Collection;
use crate::store::index::GraphJob;

/// Builds the collection's HNSW graph on a thread of its own once its index has grown to need
/// one: searches scan meanwhile, and writes go on, since the graph is built over a copy of the
/// rows and the rows written during the build are linked when it is installed. A compaction
/// or a reload during the build renumbers the rows; the graph is then built again.
pub(super) fn build_graph_when_due(collection: &Arc<Collection>) {
    let job = collection.state.write().index.graph_job();
    if let Some(job) = job {
        build_graph(collection, job);
    }
}

/// Builds the graph of `job`, which the caller took from the collection's index under its
/// lock, on a thread of its own; see [`build_graph_when_due`].
pub(super) fn build_graph(collection: &Arc<Collection>, job: GraphJob) {
    let builder = Arc::clone(collection);
    let spawned = std::thread::Builder::new()
        .name("store-graph".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let built = job.build();
            let installed = builder.state.write().index.install_graph(built);
            if installed {
                tracing::info!(
                    collection = %builder.name,
                    seconds = started.elapsed().as_secs_f64(),
                    "vector graph built; searches use it from now on"
                );
            } else {
                build_graph_when_due(&builder);
            }
        });
    if let Err(error) = spawned {
        collection.state.write().index.install_graph_failed();
        tracing::warn!(
            collection = %collection.name,
            %error,
            "cannot start the graph builder; searches keep scanning"
        );
    }
}
