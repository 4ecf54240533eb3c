use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use parking_lot::Mutex;
use tempfile::TempDir;

use super::super::{EmbeddedStore, EmbeddedStoreConfig};
use super::*;
use crate::embed::{EmbedError, Embedder, HashingEmbedder};
use crate::store::conformance::{corpus, doc, request, search_ids};
use crate::store::{DocumentStore, StoreError};

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

/// A store of the corpus in "docs", written with the default hashing embedder.
async fn written_with_default(dir: &TempDir) {
    let store = open_with(dir, Arc::new(HashingEmbedder::default())).await;
    store.add_documents("docs", corpus()).await.unwrap();
}

fn no_progress() -> ReindexProgress {
    Arc::new(|_, _| {})
}

/// The hashing embedder in 64 dimensions, counting the texts it embeds and failing once it
/// has embedded `fail_after` of them.
#[derive(Debug)]
struct Counting {
    inner: HashingEmbedder,
    embedded: AtomicUsize,
    fail_after: usize,
}

impl Counting {
    fn new(fail_after: usize) -> Arc<Self> {
        Arc::new(Counting {
            inner: HashingEmbedder::new(64),
            embedded: AtomicUsize::new(0),
            fail_after,
        })
    }
}

#[async_trait]
impl Embedder for Counting {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        let before = self.embedded.fetch_add(texts.len(), Ordering::SeqCst);
        if before + texts.len() > self.fail_after {
            return Err(EmbedError::Unavailable("embedder down".into()));
        }
        self.inner.embed(texts).await
    }
}

fn mismatch(error: StoreError) -> (String, String) {
    match error {
        StoreError::EmbedderMismatch {
            stored, configured, ..
        } => (stored, configured),
        other => panic!("expected an embedder mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn another_embedder_is_refused_without_re_embedding_until_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    let embedder = Counting::new(usize::MAX);
    let store = open_with(&dir, embedder.clone()).await;
    // Opening embedded nothing: the collection's vectors may have been paid for.
    assert_eq!(embedder.embedded.load(Ordering::SeqCst), 0);

    let refused = store
        .search(request("docs", "Toulouse", 2))
        .await
        .unwrap_err();
    assert_eq!(
        mismatch(refused),
        ("hashing-v1:4096".to_string(), "hashing-v1:64".to_string())
    );
    let refused = store
        .add_documents("docs", vec![doc("new", "A new document.")])
        .await
        .unwrap_err();
    mismatch(refused);
    // Refused before embedding anything.
    assert_eq!(embedder.embedded.load(Ordering::SeqCst), 0);
    let info = store.collection("docs").await.unwrap().unwrap();
    assert_eq!(info.document_count, 3, "the documents are still counted");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let progress: ReindexProgress = {
        let seen = Arc::clone(&seen);
        Arc::new(move |done, total| seen.lock().push((done, total)))
    };
    let report = store.reindex("docs", 2, progress).await.unwrap();
    assert_eq!(report.previous_embedder, "hashing-v1:4096");
    assert_eq!(report.embedder, "hashing-v1:64");
    assert_eq!((report.documents, report.embedded), (3, 3));
    assert_eq!(seen.lock().last(), Some(&(3, 3)));
    assert!(
        seen.lock().contains(&(2, 3)),
        "progress by batch: {:?}",
        seen.lock()
    );

    let hits = search_ids(&store, request("docs", "Northwnd Aerospce", 1)).await;
    assert_eq!(hits, ["northwind"]);
    let after = store.collection("docs").await.unwrap().unwrap();
    assert!(
        after.version > info.version,
        "a reindex invalidates cached answers"
    );
    store
        .add_documents("docs", vec![doc("new", "A new document.")])
        .await
        .unwrap();

    // Reopened, the collection is this embedder's and nothing is embedded again.
    drop(store);
    let embedder = Counting::new(usize::MAX);
    let store = open_with(&dir, embedder.clone()).await;
    assert_eq!(
        search_ids(&store, request("docs", "Garonne river", 1)).await,
        ["toulouse"]
    );
    let report = store.reindex("docs", 2, no_progress()).await.unwrap();
    assert_eq!(report.embedded, 0);
    assert_eq!(report.previous_embedder, report.embedder);
}

#[tokio::test]
async fn a_stopped_reindex_resumes_and_embeds_what_was_rewritten_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    {
        // The embedder fails after the first batch of two documents.
        let store = open_with(&dir, Counting::new(2)).await;
        let error = store.reindex("docs", 2, no_progress()).await.unwrap_err();
        assert!(matches!(error, StoreError::Embed(_)), "{error:?}");
        // Still the old vectors: nothing was swapped.
        mismatch(
            store
                .search(request("docs", "Toulouse", 1))
                .await
                .unwrap_err(),
        );
    }
    // A document rewritten behind the reindex's back, as a server still on the old embedder
    // would: its staged vector no longer fits.
    let connection =
        rusqlite::Connection::open(dir.path().join("data").join(super::super::DATABASE_FILE))
            .unwrap();
    connection
        .execute(
            "UPDATE documents SET content = 'Toulouse hosts an aircraft museum.' \
             WHERE doc_id = 'northwind'",
            [],
        )
        .unwrap();

    let embedder = Counting::new(usize::MAX);
    let store = open_with(&dir, embedder.clone()).await;
    let report = store.reindex("docs", 2, no_progress()).await.unwrap();
    // The third document, and the rewritten one: not the other staged one.
    assert_eq!(report.embedded, 2);
    assert_eq!(embedder.embedded.load(Ordering::SeqCst), 2);
    let hits = search_ids(&store, request("docs", "aircraft museum", 1)).await;
    assert_eq!(hits, ["northwind"]);
    let staged: i64 = connection
        .query_row("SELECT count(*) FROM reindex_staging", [], |row| row.get(0))
        .unwrap();
    assert_eq!(staged, 0, "the staged vectors are gone once swapped in");
}

#[tokio::test]
async fn a_server_refusing_a_collection_serves_it_once_another_process_reindexed_it() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    let server = open_with(&dir, Arc::new(HashingEmbedder::new(64))).await;
    mismatch(
        server
            .search(request("docs", "Toulouse", 1))
            .await
            .unwrap_err(),
    );

    let reindexer = open_with(&dir, Arc::new(HashingEmbedder::new(64))).await;
    reindexer.reindex("docs", 10, no_progress()).await.unwrap();

    assert_eq!(
        search_ids(&server, request("docs", "Garonne river", 1)).await,
        ["toulouse"]
    );
    assert_eq!(
        server
            .collection("docs")
            .await
            .unwrap()
            .unwrap()
            .document_count,
        3
    );
}

#[tokio::test]
async fn a_server_on_the_old_embedder_stops_writing_a_collection_reindexed_away() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    let old = open_with(&dir, Arc::new(HashingEmbedder::default())).await;
    let reindexer = open_with(&dir, Arc::new(HashingEmbedder::new(64))).await;
    reindexer.reindex("docs", 10, no_progress()).await.unwrap();

    let refused = old
        .add_documents("docs", vec![doc("late", "Written with the old embedder.")])
        .await
        .unwrap_err();
    assert_eq!(
        mismatch(refused),
        ("hashing-v1:64".to_string(), "hashing-v1:4096".to_string())
    );
    // And from then on it refuses the collection's searches too.
    mismatch(
        old.search(request("docs", "Toulouse", 1))
            .await
            .unwrap_err(),
    );
}

#[tokio::test]
async fn an_emptied_collection_takes_the_new_embedder_on_its_next_write() {
    let dir = tempfile::tempdir().unwrap();
    written_with_default(&dir).await;
    let store = open_with(&dir, Arc::new(HashingEmbedder::new(64))).await;
    store
        .delete_documents(
            "docs",
            vec!["northwind".into(), "toulouse".into(), "soup".into()],
        )
        .await
        .unwrap();
    store
        .add_documents("docs", vec![doc("fresh", "Fresh text about Lyon.")])
        .await
        .unwrap();
    assert_eq!(
        search_ids(&store, request("docs", "Lyon", 1)).await,
        ["fresh"]
    );
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
    assert_eq!(embedder.embedded.load(Ordering::SeqCst), 4);
    let hits = search_ids(&store, request("docs", "late note delta", 1)).await;
    assert_eq!(hits, ["late"]);
}
