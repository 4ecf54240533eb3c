//! Collections of several embedders in one database, and reindexing: the cases every store
//! shares ([`crate::store::conformance::reindex_suite`]), with the HNSW index and without it,
//! then what is PostgreSQL's own: the staging table, the backlog a swap leaves, each
//! embedder's graph and indexers.

use std::sync::Arc;

use super::graph_tests::{count, drain};
use super::tests::{fresh_database, settings};
use super::*;
use crate::config::VectorIndex;
use crate::embed::HashingEmbedder;
use crate::store::conformance::{
    Counting, Place, corpus, doc, hashing, mismatch, no_progress, request, search_ids,
};

mod with_the_index {
    crate::store::conformance::reindex_suite!(super::indexed);
}

mod without_the_index {
    crate::store::conformance::reindex_suite!(super::exact);
}

/// A database of the shared test server, each store over it started as a replica would be.
struct Database {
    config: StoreConfig,
}

impl Place for Database {
    async fn open(&self, embedder: Arc<dyn Embedder>) -> Arc<dyn DocumentStore> {
        Arc::new(
            PostgresStore::connect(&self.config, embedder)
                .await
                .unwrap(),
        )
    }
}

async fn indexed() -> Database {
    Database {
        config: settings(fresh_database().await),
    }
}

async fn exact() -> Database {
    Database {
        config: StoreConfig {
            vector_index: VectorIndex::Exact,
            ..settings(fresh_database().await)
        },
    }
}

fn other_hashing() -> Arc<dyn Embedder> {
    Arc::new(HashingEmbedder::new(64))
}

async fn graph_indexes(store: &PostgresStore) -> Vec<String> {
    store
        .pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT indexname FROM pg_indexes \
             WHERE indexname LIKE 'deeprecall_documents_folded%' ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The swap leaves the new vectors in the backlog rather than inserting them into the graph
/// under the collection's lock: searched exactly at once, then put into the new embedder's
/// graph by its indexers; the staged vectors are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_sends_the_new_vectors_to_the_backlog_and_empties_the_staging() {
    let url = fresh_database().await;
    let old = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    old.add_documents("docs", corpus()).await.unwrap();
    assert_eq!(drain(&old).await, 3);

    let new = PostgresStore::connect_without_indexer(&settings(url), other_hashing())
        .await
        .unwrap();
    // Stopped after the first batch: two vectors staged, none swapped in.
    let stopped = PostgresStore {
        embedder: Counting::new(2),
        ..new.clone()
    };
    stopped.reindex("docs", 2, no_progress()).await.unwrap_err();
    let staged = "SELECT count(*) FROM deeprecall_reindex_staging";
    assert_eq!(count(&new, staged).await, 2);
    let waiting = "SELECT count(*) FROM deeprecall_documents WHERE folded IS NULL";
    assert_eq!(count(&new, waiting).await, 0);

    let report = new.reindex("docs", 2, no_progress()).await.unwrap();
    assert_eq!(report.embedded, 1, "the run resumed after the staged batch");
    assert_eq!(count(&new, staged).await, 0);
    assert_eq!(count(&new, waiting).await, 3);
    // The old embedder's indexer leaves them to the new one's.
    assert_eq!(drain(&old).await, 0);
    let misspelt = request("docs", "Northwnd Aerospce", 1);
    assert_eq!(search_ids(&new, misspelt.clone()).await, ["northwind"]);
    assert_eq!(drain(&new).await, 3);
    assert_eq!(
        count(
            &new,
            "SELECT count(*) FROM deeprecall_documents WHERE vector_dims(folded) = 64"
        )
        .await,
        3
    );
    assert_eq!(search_ids(&new, misspelt).await, ["northwind"]);
}

/// Each embedder's collections keep their own graph: a replica started with another embedder
/// neither folds them again nor drops their index, and each indexer takes only its own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_embedders_collections_keep_their_graph_and_their_indexers() {
    let url = fresh_database().await;
    let first = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    first.add_documents("docs", corpus()).await.unwrap();
    assert_eq!(drain(&first).await, 3);

    let second = PostgresStore::connect_without_indexer(&settings(url.clone()), other_hashing())
        .await
        .unwrap();
    second
        .add_documents("notes", vec![doc("lyon", "Lyon sits on the Rhone.")])
        .await
        .unwrap();
    assert_eq!(drain(&first).await, 0, "not the first embedder's row");
    assert_eq!(drain(&second).await, 1);

    // Both started again, in either order: both graphs stay, and nothing goes back to the
    // backlog.
    let first = PostgresStore::connect_without_indexer(&settings(url.clone()), hashing())
        .await
        .unwrap();
    let second = PostgresStore::connect_without_indexer(&settings(url.clone()), other_hashing())
        .await
        .unwrap();
    assert_eq!(
        graph_indexes(&first).await,
        [
            "deeprecall_documents_folded_256",
            "deeprecall_documents_folded_64"
        ]
    );
    let waiting = "SELECT count(*) FROM deeprecall_documents WHERE folded IS NULL";
    assert_eq!(count(&first, waiting).await, 0);
    assert_eq!(
        search_ids(&first, request("docs", "Northwnd Aerospce", 1)).await,
        ["northwind"]
    );
    assert_eq!(
        search_ids(&second, request("notes", "Lyon Rhone", 1)).await,
        ["lyon"]
    );

    // Once the second embedder's last document is gone, its graph goes at the next start.
    second.delete_collection("notes").await.unwrap();
    let first = PostgresStore::connect_without_indexer(&settings(url), hashing())
        .await
        .unwrap();
    assert_eq!(
        graph_indexes(&first).await,
        ["deeprecall_documents_folded_256"]
    );
}

/// A document another process writes after the last batch was read, behind the batches'
/// cursor (a row id below theirs), is found by the swap's own check and embedded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_written_between_the_last_batch_and_the_swap_is_embedded_before_it() {
    let url = fresh_database().await;
    let old = PostgresStore::connect(&settings(url.clone()), hashing())
        .await
        .unwrap();
    old.add_documents("docs", corpus()).await.unwrap();
    let embedder = Counting::new(usize::MAX);
    let store = PostgresStore::connect(&settings(url.clone()), embedder.clone())
        .await
        .unwrap();
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress: ReindexProgress = {
        let written = Arc::clone(&written);
        Arc::new(move |done, total| {
            if done == total && !written.swap(true, std::sync::atomic::Ordering::SeqCst) {
                write_behind_the_cursor(&url);
            }
        })
    };
    let report = store.reindex("docs", 10, progress).await.unwrap();
    assert_eq!((report.documents, report.embedded), (4, 4));
    assert_eq!(embedder.count(), 4);
    let hits = search_ids(&store, request("docs", "late note delta", 1)).await;
    assert_eq!(hits, ["late"]);
    mismatch(
        old.search(request("docs", "late note", 1))
            .await
            .unwrap_err(),
    );
}

/// Inserts a document with row id 0 as a writer on the old embedder would, on a connection
/// of its own: the progress callback that calls it cannot wait on the store's runtime.
fn write_behind_the_cursor(url: &str) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(
                    "INSERT INTO deeprecall_documents \
                         (id, collection_id, doc_id, content, embedding) \
                     SELECT 0, id, 'late', 'A late note about the Garonne delta.', \
                         '{}/4096'::sparsevec \
                     FROM deeprecall_collections WHERE name = 'docs';
                     UPDATE deeprecall_collections SET document_count = document_count + 1, \
                         version = nextval('deeprecall_versions') WHERE name = 'docs';",
                )
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
}
