//! Tests of what only the embedded store has: its files, its full-text index, its in-memory
//! index and its reader pool. What every store does is in [`crate::store::conformance`], run
//! here through [`fresh`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;

use super::keyword::{keyword_candidates, keyword_query, rankable_terms};
use super::rows::{ROWS_PER_WRITE_STATEMENT, decode_embedding, encode_embedding};
use super::schema::open_reader;
use super::*;
use crate::embed::HashingEmbedder;
use crate::store::conformance::{
    Dense, ScriptedEmbedder, Subject, axis, corpus, doc, doc_with, metadata, request, search_ids,
};

mod conformance {
    crate::store::conformance::conformance_suite!(super::fresh);
}

/// The suite again with dense vectors searched through the HNSW graph from the first
/// document, as a collection past `store.hnsw_min_documents` is.
mod conformance_through_the_graph {
    crate::store::conformance::conformance_suite!(super::fresh_with_graph);
}

async fn fresh(embedder: Arc<dyn Embedder>) -> Subject {
    fresh_in(embedder, EmbeddedStoreConfig::default().hnsw_min_documents).await
}

async fn fresh_with_graph(embedder: Arc<dyn Embedder>) -> Subject {
    fresh_in(embedder, 0).await
}

async fn fresh_in(embedder: Arc<dyn Embedder>, hnsw_min_documents: usize) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedStoreConfig {
        hnsw_min_documents,
        ..config(&dir)
    };
    let store = EmbeddedStore::open(config, embedder).await.unwrap();
    Subject {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

fn config(dir: &TempDir) -> EmbeddedStoreConfig {
    EmbeddedStoreConfig {
        data_dir: dir.path().join("data"),
        read_connections: 2,
        ..EmbeddedStoreConfig::default()
    }
}

async fn open_with(dir: &TempDir, embedder: Arc<dyn Embedder>) -> EmbeddedStore {
    EmbeddedStore::open(config(dir), embedder).await.unwrap()
}

async fn open(dir: &TempDir) -> EmbeddedStore {
    open_with(dir, Arc::new(HashingEmbedder::default())).await
}

/// Checks the full-text index against the documents table.
fn assert_fts_consistent(store: &EmbeddedStore) {
    let connection = Connection::open(store.path()).unwrap();
    connection
        .execute(
            "INSERT INTO documents_fts (documents_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
}

#[tokio::test]
async fn reopening_keeps_documents_and_rebuilds_the_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        store.add_documents("docs", corpus()).await.unwrap();
        store
            .delete_documents("docs", vec!["toulouse".into()])
            .await
            .unwrap();
    }
    let store = open(&dir).await;
    assert_eq!(
        store.collection("docs").await.unwrap(),
        Some(CollectionInfo {
            name: "docs".into(),
            document_count: 2,
            version: 2
        })
    );
    // Misspelt: only the rebuilt vector index can find it.
    let hits = store
        .search(request("docs", "Northwnd Aerospce", 1))
        .await
        .unwrap();
    assert_eq!(hits[0].id, "northwind");
    assert_eq!(hits[0].metadata, metadata(json!({"kind": "company"})));
    let outcome = store
        .add_documents("docs", vec![doc("new", "fresh document")])
        .await
        .unwrap();
    assert_eq!(outcome.collection.version, 3);
    assert_eq!(outcome.collection.document_count, 3);
}

#[test]
fn embeddings_round_trip_through_the_stored_format() {
    let embedding = Embedding {
        indices: vec![0, 7, u32::MAX],
        values: vec![0.5, -0.25, 1e-7],
    };
    let bytes = encode_embedding(&embedding);
    assert_eq!(bytes.len(), 4 + 3 * 8);
    assert_eq!(&bytes[..4], &3u32.to_le_bytes());
    assert_eq!(decode_embedding(&bytes).unwrap(), embedding);
    assert_eq!(
        decode_embedding(&encode_embedding(&Embedding::default())).unwrap(),
        Embedding::default()
    );
    assert!(decode_embedding(&bytes[..10]).is_err());
    assert!(decode_embedding(&[1, 0]).is_err());
}

#[tokio::test]
async fn terms_in_most_documents_are_not_ranked_by_when_rarer_ones_exist() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let documents = (0..2_500)
        .map(|n| {
            let extra = if n % 500 == 0 { " saffron" } else { "" };
            doc(&format!("d{n}"), &format!("widget number {n}{extra}"))
        })
        .collect();
    store.add_documents("c", documents).await.unwrap();
    let connection = Connection::open(store.path()).unwrap();
    let query = |text: &str| keyword_query(1, text, false).unwrap();

    let pruned = rankable_terms(&connection, &query("widget saffron"), 2_500).unwrap();
    assert_eq!(pruned, vec!["saffron"]);
    let among_three = rankable_terms(&connection, &query("widget number saffron"), 2_500);
    assert_eq!(among_three.unwrap(), vec!["saffron"]);
    let all_common = rankable_terms(&connection, &query("widget number"), 2_500).unwrap();
    assert_eq!(all_common.len(), 1);
    let at_the_size = rankable_terms(&connection, &query("widget saffron"), 2_000).unwrap();
    assert_eq!(
        at_the_size,
        vec!["saffron"],
        "pruned from 2,000 documents on"
    );
    let small = rankable_terms(&connection, &query("widget saffron"), 1_999).unwrap();
    assert_eq!(
        small,
        vec!["widget", "saffron"],
        "small collections rank by every term"
    );
}

#[test]
fn keyword_queries_quote_every_term() {
    let expression = |scoped| {
        keyword_query(7, "What is the Zephyr X?", scoped)
            .map(|query| query.expression(&query.terms))
    };
    assert_eq!(
        expression(true).as_deref(),
        Some("scope : \"c7\" AND content : (\"zephyr\" OR \"x\")")
    );
    assert_eq!(
        expression(false).as_deref(),
        Some("content : (\"zephyr\" OR \"x\")")
    );
    assert!(keyword_query(7, "the of", true).is_none());
}

#[tokio::test]
async fn keyword_search_stays_in_a_small_collection_and_a_large_one() {
    // One collection small enough for a scoped FTS5 query, one large enough for an
    // unscoped one; the same word appears in both.
    let dir = tempfile::tempdir().unwrap();
    let mut vectors = HashMap::new();
    vectors.insert("nothing".to_string(), axis(1));
    let store = open_with(&dir, Arc::new(ScriptedEmbedder(vectors))).await;
    let large: Vec<NewDocument> = (0..40)
        .map(|n| doc(&format!("large-{n:02}"), &format!("gadget {n}")))
        .collect();
    store.add_documents("large", large).await.unwrap();
    store
        .add_documents("small", vec![doc("small-0", "gadget manual")])
        .await
        .unwrap();
    assert_eq!(
        search_ids(&store as &dyn DocumentStore, request("small", "gadget", 5)).await,
        vec!["small-0"]
    );
    let hits = search_ids(&store as &dyn DocumentStore, request("large", "gadget", 50)).await;
    assert_eq!(hits.len(), 40);
    assert!(hits.iter().all(|id| id.starts_with("large-")));
    let mut filtered = request("large", "gadget", 5);
    filtered.filter = Filter::from_json(&metadata(json!({"none": {"$ne": 1}}))).unwrap();
    assert_eq!(
        search_ids(&store as &dyn DocumentStore, filtered)
            .await
            .len(),
        5
    );
}

/// Number of segments in the full-text index: every segment has at least one row in the
/// `_idx` table, keyed by its id.
fn full_text_segments(store: &EmbeddedStore) -> i64 {
    let connection = Connection::open(store.path()).unwrap();
    connection
        .query_row(
            "SELECT count(DISTINCT segid) FROM documents_fts_idx",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_write_adds_one_full_text_segment_however_many_documents_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let documents = (0..200)
        .map(|n| doc(&format!("d{n}"), &format!("report number {n}")))
        .collect();
    store.add_documents("c", documents).await.unwrap();
    assert_eq!(full_text_segments(&store), 1);
    let ids = (0..50).map(|n| format!("d{n}")).collect();
    store.delete_documents("c", ids).await.unwrap();
    assert_eq!(full_text_segments(&store), 2);
    assert_fts_consistent(&store);
}

#[tokio::test]
async fn writes_of_several_statements_keep_ids_and_rowids_paired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let count = ROWS_PER_WRITE_STATEMENT + 10;
    let documents = (0..count)
        .map(|n| doc(&format!("d{n}"), &format!("item{n}")))
        .collect();
    store.add_documents("c", documents).await.unwrap();
    // Replacements on both sides of the first statement's end, and a new document.
    let boundary = ROWS_PER_WRITE_STATEMENT;
    let replacements = vec![
        doc(&format!("d{}", boundary - 1), "replaced before"),
        doc("fresh", "fresh document"),
        doc(&format!("d{boundary}"), "replaced after"),
    ];
    let outcome = store.add_documents("c", replacements).await.unwrap();
    assert_eq!(outcome.collection.document_count, count as u64 + 1);
    // Both hold the only keyword match and the nearest vectors.
    let mut replaced = search_ids(&store as &dyn DocumentStore, request("c", "replaced", 2)).await;
    replaced.sort();
    assert_eq!(
        replaced,
        vec![format!("d{}", boundary - 1), format!("d{boundary}")]
    );

    {
        let handle = store.collection_handle("c").unwrap();
        let state = handle.state.read();
        let connection = Connection::open(store.path()).unwrap();
        let mut statement = connection
            .prepare("SELECT rowid, doc_id FROM documents")
            .unwrap();
        let stored: Vec<(i64, String)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored.len(), count + 1);
        for (rowid, doc_id) in stored {
            assert_eq!(state.index.get(rowid).unwrap().doc_id, doc_id);
        }
    }

    // Deletes spanning statements, with an unknown and a repeated id, report each id that
    // existed once, in the order asked.
    let existing: Vec<String> = (0..count).rev().map(|n| format!("d{n}")).collect();
    let mut ids = existing.clone();
    ids.insert(1, "missing".into());
    ids.push(format!("d{}", count - 1));
    let outcome = store.delete_documents("c", ids).await.unwrap();
    assert_eq!(outcome.ids, existing);
    assert_eq!(outcome.collection.document_count, 1);
    assert_fts_consistent(&store);
}

#[tokio::test]
async fn keyword_candidates_keep_the_order_of_fts5_rank() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    // Three words from five, so BM25 ties abound; FTS5 breaks them by rowid.
    let words = ["amber", "birch", "cedar", "delta", "ember"];
    let documents = (0..120)
        .map(|n| {
            let content = format!(
                "{} {} {}",
                words[n % 5],
                words[(n / 5) % 5],
                words[(n / 25) % 5]
            );
            doc_with(&format!("d{n:03}"), &content, json!({"even": n % 2 == 0}))
        })
        .collect();
    store.add_documents("c", documents).await.unwrap();
    store
        .add_documents("other", vec![doc("o", "amber birch cedar")])
        .await
        .unwrap();

    let handle = store.collection_handle("c").unwrap();
    let state = handle.state.read();
    let connection = open_reader(store.path()).unwrap();
    let indexed = store.inner.documents.load(Ordering::Relaxed);
    let even = Filter::from_json(&metadata(json!({"even": true}))).unwrap();
    let mut by_rank = connection
        .prepare("SELECT rowid FROM documents_fts WHERE documents_fts MATCH ?1 ORDER BY rank")
        .unwrap();
    for text in ["amber", "amber birch", "cedar delta ember", "birch unknown"] {
        for scoped in [false, true] {
            let keyword = keyword_query(handle.id, text, scoped).unwrap();
            let ranked: Vec<i64> = by_rank
                .query_map([keyword.expression(&keyword.terms)], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for filter in [&Filter::default(), &even] {
                for limit in [1, 7, 30, 500] {
                    let expected: Vec<i64> = ranked
                        .iter()
                        .copied()
                        .filter(|rowid| state.index.matches(*rowid, filter))
                        .take(limit)
                        .collect();
                    let actual = keyword_candidates(
                        &connection,
                        &keyword,
                        limit,
                        &state.index,
                        filter,
                        indexed,
                    )
                    .unwrap();
                    assert!(!actual.is_empty());
                    assert_eq!(actual, expected, "{text:?}, scoped {scoped}, limit {limit}");
                }
            }
        }
    }
}

/// What `EmbeddedStore::search` hands to the store for a hashing embedder and a small
/// collection (an unscoped keyword query).
fn prepared(collection_id: i64, text: &str, filter: Filter) -> PreparedSearch {
    PreparedSearch {
        query_embedding: HashingEmbedder::default().embed_text(text),
        keyword: keyword_query(collection_id, text, false),
        by_vector: true,
        top_k: 3,
        filter,
    }
}

#[tokio::test]
async fn searching_without_waiting_and_on_the_blocking_pool_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_documents("docs", corpus()).await.unwrap();
    let handle = store.collection_handle("docs").unwrap();
    let cities = Filter::from_json(&metadata(json!({"kind": "city"}))).unwrap();
    for (text, filter) in [
        ("Where is Northwind headquartered?", Filter::default()),
        ("Toulouse", Filter::default()),
        ("Toulouse", cities),
        ("onoin suop", Filter::default()),
    ] {
        let search = prepared(handle.id, text, filter);
        let now = store
            .inner
            .try_search_without_waiting(&handle, &search)
            .expect("an idle connection and an unlocked collection")
            .unwrap();
        let pooled = store.inner.search(&handle, &search).unwrap();
        assert!(!now.is_empty(), "{text:?}");
        assert_eq!(now, pooled, "{text:?}");
    }
}

#[tokio::test]
async fn searches_that_would_wait_go_to_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_documents("docs", corpus()).await.unwrap();
    let expected = store.search(request("docs", "Toulouse", 2)).await.unwrap();
    let handle = store.collection_handle("docs").unwrap();
    let search = prepared(handle.id, "Toulouse", Filter::default());

    {
        let _writing = handle.state.write();
        assert!(
            store
                .inner
                .try_search_without_waiting(&handle, &search)
                .is_none()
        );
    }

    let documents = store.inner.documents.load(Ordering::Relaxed);
    store.inner.documents.store(
        MAX_DOCUMENTS_TO_SEARCH_WITHOUT_WAITING + 1,
        Ordering::Relaxed,
    );
    assert!(
        store
            .inner
            .try_search_without_waiting(&handle, &search)
            .is_none()
    );
    store.inner.documents.store(documents, Ordering::Relaxed);

    // With every reader busy, a search waits for one on the blocking pool.
    let busy = std::mem::take(&mut *store.inner.readers.idle.lock());
    assert!(
        store
            .inner
            .try_search_without_waiting(&handle, &search)
            .is_none()
    );
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.search(request("docs", "Toulouse", 2)).await }
    });
    // The search is blocked once it waits for a reader; the bound only ends a hang.
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.inner.readers.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the search waits for a reader connection");
    assert!(!waiting.is_finished());
    for connection in busy {
        store.inner.readers.idle.lock().push(connection);
        store.inner.readers.returned.notify_one();
    }
    assert_eq!(waiting.await.unwrap().unwrap(), expected);
}

#[tokio::test]
async fn searches_beyond_the_reader_count_queue_for_a_reader_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_documents("docs", corpus()).await.unwrap();
    let readers = store.inner.readers.idle.lock().len();
    // Every reader busy, and more documents than a search takes without waiting, so that
    // each search goes to the blocking pool.
    let busy = std::mem::take(&mut *store.inner.readers.idle.lock());
    store.inner.documents.store(
        MAX_DOCUMENTS_TO_SEARCH_WITHOUT_WAITING + 1,
        Ordering::Relaxed,
    );
    let searches: Vec<_> = (0..readers + 6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.search(request("docs", "Toulouse", 2)).await })
        })
        .collect();
    // One search per reader holds a reader thread waiting for its connection; the others
    // queue for a thread. The bound only ends a hang.
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.inner.readers.waiting() < readers || store.inner.read_threads.queued() < 6 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the searches queue");
    assert_eq!(store.inner.readers.waiting(), readers);
    for connection in busy {
        store.inner.readers.idle.lock().push(connection);
        store.inner.readers.returned.notify_one();
    }
    for search in searches {
        assert!(!search.await.unwrap().unwrap().is_empty());
    }
}

/// `synchronous=FULL` is what makes an acknowledged write survive a power cut. Losing it
/// shows in no test that kills the process (the OS still holds an unsynced WAL and writes it
/// out), and cutting the machine's power is beyond a test, so the setting itself is checked on
/// every connection the store holds.
#[tokio::test]
async fn every_connection_syncs_fully() {
    const FULL: i64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let synchronous = |connection: &Connection| -> i64 {
        connection
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap()
    };
    let writer = store.inner.writer.lock();
    assert_eq!(synchronous(&writer), FULL, "writer");
    // FULL is also SQLite's default: what shows that the writer was configured at all is
    // the rest of its settings.
    let pragma = |name: &str| -> String {
        writer
            .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
            .map(|value| match value {
                rusqlite::types::Value::Integer(number) => number.to_string(),
                rusqlite::types::Value::Text(text) => text,
                other => format!("{other:?}"),
            })
            .unwrap()
    };
    assert_eq!(pragma("journal_mode"), "wal");
    assert_eq!(pragma("foreign_keys"), "1");
    assert_eq!(pragma("busy_timeout"), "5000");
    drop(writer);
    let readers = store.inner.readers.idle.lock();
    assert_eq!(readers.len(), 2);
    for reader in readers.iter() {
        assert_eq!(synchronous(reader), FULL, "reader");
    }
}

#[tokio::test]
async fn replacing_and_deleting_keep_the_full_text_index_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_documents("docs", corpus()).await.unwrap();
    store
        .add_documents("docs", vec![doc("soup", "Gazpacho is served cold.")])
        .await
        .unwrap();
    assert_fts_consistent(&store);
    store
        .delete_documents("docs", vec!["soup".into(), "toulouse".into()])
        .await
        .unwrap();
    assert_fts_consistent(&store);
}

#[tokio::test]
async fn a_search_by_one_ranking_leaves_out_what_only_the_other_finds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_documents("docs", corpus()).await.unwrap();
    // Misspelt: only the vectors' character n-grams match.
    let misspelt = request("docs", "onoin suop recipys", 3);
    let by_vector = store
        .search_ranked(misspelt.clone(), Ranking::Vector)
        .await
        .unwrap();
    assert_eq!(by_vector[0].id, "soup");
    let by_keyword = store
        .search_ranked(misspelt.clone(), Ranking::Keyword)
        .await
        .unwrap();
    assert!(by_keyword.is_empty(), "{by_keyword:?}");
    // Only the keyword ranking: every hit holds one of the words.
    let exact = request("docs", "Garonne", 3);
    let by_keyword = store.search_ranked(exact, Ranking::Keyword).await.unwrap();
    let ids: Vec<&str> = by_keyword.iter().map(|hit| hit.id.as_str()).collect();
    assert_eq!(ids, ["toulouse"]);
}

#[tokio::test]
async fn a_dense_collection_searches_its_graph_once_the_builder_installed_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedStoreConfig {
        hnsw_min_documents: 0,
        ..config(&dir)
    };
    let embedder = Arc::new(Dense(HashingEmbedder::new(64)));
    let store = EmbeddedStore::open(config.clone(), embedder.clone())
        .await
        .unwrap();
    assert!(!store.searches_graph("c"), "no such collection yet");
    store.add_documents("c", corpus()).await.unwrap();
    // The builder runs in the background; the bound only turns a hang into a failure.
    let graph_installed = |store: &EmbeddedStore| {
        let store = store.clone();
        tokio::time::timeout(Duration::from_secs(60), async move {
            while !store.searches_graph("c") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    graph_installed(&store)
        .await
        .expect("the graph was installed");
    drop(store);
    // A reopened store builds the graphs of the collections it loads.
    let reopened = EmbeddedStore::open(config, embedder).await.unwrap();
    graph_installed(&reopened)
        .await
        .expect("the graph was built again");

    let small_dir = tempfile::tempdir().unwrap();
    let small = open_with(&small_dir, Arc::new(Dense(HashingEmbedder::new(64)))).await;
    small.add_documents("c", corpus()).await.unwrap();
    assert!(
        !small.searches_graph("c"),
        "a collection below the size for a graph is scanned"
    );
}
