use std::sync::atomic::AtomicUsize;

use tempfile::TempDir;

use super::super::{EmbeddedStore, EmbeddedStoreConfig};
use super::*;
use crate::embed::{Embedder, HashingEmbedder};
use crate::store::DocumentStore;
use crate::store::conformance::{Counting, Place, corpus, no_progress, request, search_ids};

mod suite {
    crate::store::conformance::reindex_suite!(super::place);
}

fn config(dir: &TempDir) -> EmbeddedStoreConfig {
    EmbeddedStoreConfig {
        data_dir: dir.path().join("data"),
        read_connections: 1,
        ..EmbeddedStoreConfig::default()
    }
}

async fn open_with(dir: &TempDir, embedder: Arc<dyn Embedder>) -> EmbeddedStore {
    EmbeddedStore::open(config(dir), embedder).await.unwrap()
}

/// A directory, each store over it opened on the same database file.
struct Directory(TempDir);

impl Place for Directory {
    async fn open(&self, embedder: Arc<dyn Embedder>) -> Arc<dyn DocumentStore> {
        Arc::new(open_with(&self.0, embedder).await)
    }
}

async fn place() -> Directory {
    Directory(tempfile::tempdir().unwrap())
}

/// A store of the corpus in "docs", written with the default hashing embedder.
async fn written_with_default(dir: &TempDir) {
    let store = open_with(dir, Arc::new(HashingEmbedder::default())).await;
    store.add_documents("docs", corpus()).await.unwrap();
}

#[tokio::test]
async fn the_staged_vectors_are_gone_once_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    {
        // Stopped after the first batch: two vectors staged.
        let store = open_with(&dir, Counting::new(2)).await;
        store.reindex("docs", 2, no_progress()).await.unwrap_err();
    }
    let connection =
        rusqlite::Connection::open(dir.path().join("data").join(super::super::DATABASE_FILE))
            .unwrap();
    let staged = || -> i64 {
        connection
            .query_row("SELECT count(*) FROM reindex_staging", [], |row| row.get(0))
            .unwrap()
    };
    assert_eq!(staged(), 2);
    let store = open_with(&dir, Counting::new(usize::MAX)).await;
    store.reindex("docs", 2, no_progress()).await.unwrap();
    assert_eq!(staged(), 0);
}

#[tokio::test]
async fn a_document_written_between_the_last_batch_and_the_swap_is_embedded_before_it() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    let path = dir.path().join("data").join(super::super::DATABASE_FILE);
    let embedder = Counting::new(usize::MAX);
    let store = open_with(&dir, embedder.clone()).await;
    // A writer in another process adds a document after the last batch was read, behind the
    // batches' cursor (a rowid below theirs), so that only the swap's check can find it.
    let written = Arc::new(AtomicUsize::new(0));
    let progress: ReindexProgress = {
        let written = Arc::clone(&written);
        Arc::new(move |done, total| {
            if done == total && written.fetch_add(1, Ordering::SeqCst) == 0 {
                let connection = rusqlite::Connection::open(&path).unwrap();
                connection
                    .busy_timeout(std::time::Duration::from_secs(5))
                    .unwrap();
                connection
                    .execute(
                        "INSERT INTO documents \
                         (rowid, collection_id, doc_id, content, metadata, embedding) \
                         SELECT 0, id, 'late', 'A late note about the Garonne delta.', '{}', ?1 \
                         FROM collections WHERE name = 'docs'",
                        [super::super::rows::encode_embedding(&Embedding::default())],
                    )
                    .unwrap();
            }
        })
    };
    let report = store.reindex("docs", 10, progress).await.unwrap();
    assert_eq!((report.documents, report.embedded), (4, 4));
    assert_eq!(embedder.count(), 4);
    let hits = search_ids(&store, request("docs", "late note delta", 1)).await;
    assert_eq!(hits, ["late"]);
}
