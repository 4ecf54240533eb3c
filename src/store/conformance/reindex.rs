//! Cases of collections embedded by another embedder than the store's, and of reindexing them:
//! every store records each collection's embedder, refuses a collection another embedder made
//! until it is reindexed, and reindexes online. Each case opens one store's data several times,
//! with different embedders, as replicas on different settings (or `deeprecall reindex`)
//! would.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::store::{ReindexProgress, StoreError};

/// Where a store keeps its data, opened as often as a case asks, each time with the embedder
/// given: a directory for the embedded store, a database for PostgreSQL.
pub(crate) trait Place {
    fn open(&self, embedder: Arc<dyn Embedder>) -> impl Future<Output = Arc<dyn DocumentStore>>;
}

/// Expands to one test per reindex case, each in a fresh place from the async `$place`.
macro_rules! reindex_suite {
    ($place:expr) => {
        $crate::store::conformance::reindex_suite!(@cases $place;
            another_embedder_is_refused_without_re_embedding_until_reindexed,
            a_stopped_reindex_resumes_and_embeds_what_was_rewritten_meanwhile,
            a_server_refusing_a_collection_serves_it_once_another_process_reindexed_it,
            a_server_on_the_old_embedder_stops_writing_a_collection_reindexed_away,
            an_emptied_collection_takes_the_new_embedder_on_its_next_write,
            collections_of_two_embedders_live_side_by_side,
        );
    };
    (@cases $place:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::store::conformance::$case($place().await).await;
            }
        )*
    };
}
pub(crate) use reindex_suite;

pub(crate) fn no_progress() -> ReindexProgress {
    Arc::new(|_, _| {})
}

/// The hashing embedder in 64 dimensions, counting the texts it embeds and failing once it
/// has embedded `fail_after` of them.
#[derive(Debug)]
pub(crate) struct Counting {
    inner: HashingEmbedder,
    pub(crate) embedded: AtomicUsize,
    fail_after: usize,
}

impl Counting {
    pub(crate) fn new(fail_after: usize) -> Arc<Self> {
        Arc::new(Counting {
            inner: HashingEmbedder::new(64),
            embedded: AtomicUsize::new(0),
            fail_after,
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.embedded.load(Ordering::SeqCst)
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

/// The stored and configured embedders an [`StoreError::EmbedderMismatch`] names.
pub(crate) fn mismatch(error: StoreError) -> (String, String) {
    match error {
        StoreError::EmbedderMismatch {
            stored, configured, ..
        } => (stored, configured),
        other => panic!("expected an embedder mismatch, got {other:?}"),
    }
}

fn other_hashing() -> Arc<dyn Embedder> {
    Arc::new(HashingEmbedder::new(64))
}

/// The corpus in "docs", written with the default hashing embedder.
async fn written_with_default(place: &impl Place) {
    let store = place.open(hashing()).await;
    store.add_documents("docs", corpus()).await.unwrap();
}

pub(crate) async fn another_embedder_is_refused_without_re_embedding_until_reindexed(
    place: impl Place,
) {
    written_with_default(&place).await;
    let embedder = Counting::new(usize::MAX);
    let store = place.open(embedder.clone()).await;
    // Opening embedded nothing: the collection's vectors may have been paid for.
    assert_eq!(embedder.count(), 0);
    let refused = store
        .add_documents("docs", vec![doc("new", "A new document.")])
        .await
        .unwrap_err();
    mismatch(refused);
    // Refused before embedding the documents.
    assert_eq!(embedder.count(), 0);
    // What a query asks before it starts.
    mismatch(store.check_searchable("docs").await.unwrap_err());

    let refused = store
        .search(request("docs", "Toulouse", 2))
        .await
        .unwrap_err();
    assert_eq!(
        mismatch(refused),
        ("hashing-v1:4096".to_string(), "hashing-v1:64".to_string())
    );
    let embedded_by_the_search = embedder.count();
    let info = store.collection("docs").await.unwrap().unwrap();
    assert_eq!(info.document_count, 3, "the documents are still counted");

    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let progress: ReindexProgress = {
        let seen = Arc::clone(&seen);
        Arc::new(move |done, total| seen.lock().push((done, total)))
    };
    let report = store.reindex("docs", 2, progress).await.unwrap();
    assert_eq!(report.previous_embedder, "hashing-v1:4096");
    assert_eq!(report.embedder, "hashing-v1:64");
    assert_eq!((report.documents, report.embedded), (3, 3));
    assert_eq!(embedder.count(), embedded_by_the_search + 3);
    assert_eq!(seen.lock().last(), Some(&(3, 3)));
    assert!(
        seen.lock().contains(&(2, 3)),
        "progress by batch: {:?}",
        seen.lock()
    );

    store.check_searchable("docs").await.unwrap();
    let hits = search_ids(store.as_ref(), request("docs", "Northwnd Aerospce", 1)).await;
    assert_eq!(hits, ["northwind"]);
    let after = store.collection("docs").await.unwrap().unwrap();
    assert_eq!(after.document_count, 3);
    assert!(
        after.version > info.version,
        "a reindex invalidates cached answers"
    );
    store
        .add_documents("docs", vec![doc("new", "A new document.")])
        .await
        .unwrap();

    // Opened again, the collection is this embedder's and nothing is embedded again.
    drop(store);
    let embedder = Counting::new(usize::MAX);
    let store = place.open(embedder.clone()).await;
    assert_eq!(
        search_ids(store.as_ref(), request("docs", "Garonne river", 1)).await,
        ["toulouse"]
    );
    let report = store.reindex("docs", 2, no_progress()).await.unwrap();
    assert_eq!(report.embedded, 0);
    assert_eq!(report.previous_embedder, report.embedder);
    assert_eq!(embedder.count(), 1, "only the query was embedded");
}

pub(crate) async fn a_stopped_reindex_resumes_and_embeds_what_was_rewritten_meanwhile(
    place: impl Place,
) {
    written_with_default(&place).await;
    {
        // The embedder fails after the first batch of two documents.
        let store = place.open(Counting::new(2)).await;
        let error = store.reindex("docs", 2, no_progress()).await.unwrap_err();
        assert!(matches!(error, StoreError::Embed(_)), "{error:?}");
    }
    // Still the old vectors: nothing was swapped.
    mismatch(
        place
            .open(other_hashing())
            .await
            .search(request("docs", "Toulouse", 1))
            .await
            .unwrap_err(),
    );
    // A document of the first batch rewritten by a server still on the old embedder: its
    // staged vector no longer fits. Rewritten with the same text, another keeps its own.
    let old = place.open(hashing()).await;
    old.add_documents(
        "docs",
        vec![
            doc("northwind", "Toulouse hosts an aircraft museum."),
            corpus().remove(1),
        ],
    )
    .await
    .unwrap();

    let embedder = Counting::new(usize::MAX);
    let store = place.open(embedder.clone()).await;
    let report = store.reindex("docs", 2, no_progress()).await.unwrap();
    // The third document, and the rewritten one: not the other staged one.
    assert_eq!(report.embedded, 2);
    assert_eq!(embedder.count(), 2);
    let hits = search_ids(store.as_ref(), request("docs", "aircraft museum", 1)).await;
    assert_eq!(hits, ["northwind"]);
    let hits = search_ids(store.as_ref(), request("docs", "onion soup", 1)).await;
    assert_eq!(hits, ["soup"]);
}

pub(crate) async fn a_server_refusing_a_collection_serves_it_once_another_process_reindexed_it(
    place: impl Place,
) {
    written_with_default(&place).await;
    let server = place.open(other_hashing()).await;
    mismatch(
        server
            .search(request("docs", "Toulouse", 1))
            .await
            .unwrap_err(),
    );

    let reindexer = place.open(other_hashing()).await;
    reindexer.reindex("docs", 10, no_progress()).await.unwrap();

    assert_eq!(
        search_ids(server.as_ref(), request("docs", "Garonne river", 1)).await,
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

pub(crate) async fn a_server_on_the_old_embedder_stops_writing_a_collection_reindexed_away(
    place: impl Place,
) {
    written_with_default(&place).await;
    let old = place.open(hashing()).await;
    let reindexer = place.open(other_hashing()).await;
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
    assert_eq!(
        reindexer
            .get_documents("docs", vec!["late".into()])
            .await
            .unwrap(),
        []
    );
}

pub(crate) async fn an_emptied_collection_takes_the_new_embedder_on_its_next_write(
    place: impl Place,
) {
    written_with_default(&place).await;
    let store = place.open(other_hashing()).await;
    // Deleting needs no vectors: a foreign collection can be emptied.
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
        search_ids(store.as_ref(), request("docs", "Lyon", 1)).await,
        ["fresh"]
    );
    // Now the old embedder's servers are the ones refused.
    let old = place.open(hashing()).await;
    mismatch(old.search(request("docs", "Lyon", 1)).await.unwrap_err());
}

pub(crate) async fn collections_of_two_embedders_live_side_by_side(place: impl Place) {
    let first = place.open(hashing()).await;
    first.add_documents("docs", corpus()).await.unwrap();
    let second = place.open(other_hashing()).await;
    second
        .add_documents(
            "notes",
            vec![doc("lyon", "Lyon sits where the Rhone meets the Saone.")],
        )
        .await
        .unwrap();
    assert_eq!(
        search_ids(second.as_ref(), request("notes", "Rhone Saone", 1)).await,
        ["lyon"]
    );
    mismatch(
        second
            .search(request("docs", "Garonne", 1))
            .await
            .unwrap_err(),
    );

    // Opened again with the first embedder, both collections are there, each as it was.
    drop(first);
    let first = place.open(hashing()).await;
    for store in [&first, &second] {
        let names: Vec<String> = store
            .collections()
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.name)
            .collect();
        assert_eq!(names, ["docs", "notes"]);
    }
    assert_eq!(
        search_ids(first.as_ref(), request("docs", "Garonne river", 1)).await,
        ["toulouse"]
    );
    mismatch(
        first
            .search(request("notes", "Rhone", 1))
            .await
            .unwrap_err(),
    );
    first
        .add_documents("docs", vec![doc("lyon", "Lyon is north of Toulouse.")])
        .await
        .unwrap();
    assert_eq!(
        search_ids(first.as_ref(), request("docs", "north Lyon", 1)).await,
        ["lyon"]
    );
    assert_eq!(
        search_ids(second.as_ref(), request("notes", "Rhone Saone", 1)).await,
        ["lyon"]
    );
}
