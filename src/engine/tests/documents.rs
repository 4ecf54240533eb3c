//! Writes, reads, deletes, the cache and the statistics through the engine, over the embedded
//! store: the limits each call checks (one bad document refuses the whole call), and what each
//! reports back.

use std::time::Duration;

use crate::embed::HashingEmbedder;
use crate::store::{EmbeddedStore, EmbeddedStoreConfig};
use crate::telemetry::Metrics;

use super::*;

const LIMIT: usize = 3;
const MAX_BYTES: usize = 64;

struct Fixture {
    engine: Engine,
    metrics: Metrics,
    _data: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let data = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(
        EmbeddedStoreConfig {
            data_dir: data.path().to_path_buf(),
            ..EmbeddedStoreConfig::default()
        },
        Arc::new(HashingEmbedder::new(256)),
    )
    .await
    .expect("store");
    let metrics = Metrics::new();
    let engine = Engine::with_telemetry(
        parts(
            Arc::new(store),
            Arc::new(ExtractiveModel::default()),
            Arc::new(ExtractiveModel::default()),
        ),
        EngineConfig {
            max_documents_per_call: LIMIT,
            max_document_bytes: MAX_BYTES,
            ..EngineConfig::default()
        },
        EngineTelemetry {
            metrics: metrics.clone(),
            trace_log: None,
        },
    );
    Fixture {
        engine,
        metrics,
        _data: data,
    }
}

fn document(id: &str, content: &str) -> NewDocument {
    NewDocument {
        id: Some(id.to_string()),
        content: content.to_string(),
        metadata: Map::new(),
    }
}

fn ids(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("doc-{index}")).collect()
}

fn refused_field<T: std::fmt::Debug>(outcome: Result<T, EngineError>) -> String {
    match outcome {
        Err(EngineError::InvalidArgument { field, .. }) => field,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

fn documents_gauge(metrics: &Metrics, collection: &str) -> Option<String> {
    let line = format!("deeprecall_documents{{collection=\"{collection}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|rendered| rendered.strip_prefix(line.as_str()).map(str::to_string))
}

#[tokio::test]
async fn a_write_is_checked_whole_and_one_bad_document_refuses_it_all() {
    let Fixture { engine, .. } = fixture().await;
    let fine = || document("fine", "Zephyr blenders are made in Porto.");
    let with_metadata = |metadata: Value| NewDocument {
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        ..fine()
    };
    let cases: Vec<(Vec<NewDocument>, &str)> = vec![
        (vec![], "documents"),
        ((0..=LIMIT).map(|_| fine()).collect(), "documents"),
        (
            vec![fine(), document("blank", " \n\t")],
            "documents[1].content",
        ),
        (
            vec![document("long", &"x".repeat(MAX_BYTES + 1))],
            "documents[0].content",
        ),
        (
            vec![fine(), document("nul", "a\0b")],
            "documents[1].content",
        ),
        (
            vec![with_metadata(json!({"team": "a\0b"}))],
            "documents[0].metadata.team",
        ),
        (
            vec![with_metadata(json!({"note": "x".repeat(MAX_BYTES)}))],
            "documents[0].metadata",
        ),
        (
            vec![fine(), document("cite[me]", "text")],
            "documents[1].id",
        ),
    ];
    for (documents, expected) in cases {
        let field = refused_field(engine.add_documents(None, documents).await);
        assert_eq!(field, expected);
    }
    // Nothing of the refused calls was written.
    assert!(engine.list_collections().await.expect("listed").is_empty());

    let at_the_limits: Vec<NewDocument> = (0..LIMIT)
        .map(|index| document(&format!("doc-{index}"), &"y".repeat(MAX_BYTES)))
        .collect();
    let written = engine
        .add_documents(None, at_the_limits)
        .await
        .expect("at the limits");
    assert_eq!(written.ids, ids(LIMIT));
    assert_eq!(written.collection.document_count, LIMIT as u64);
    let listed = engine.list_collections().await.expect("listed");
    assert_eq!(listed, vec![written.collection]);
}

#[tokio::test]
async fn writes_and_deletes_set_the_collection_gauge() {
    let Fixture {
        engine, metrics, ..
    } = fixture().await;
    let documents = (0..LIMIT)
        .map(|index| document(&format!("doc-{index}"), "Klaxon is in Porto."))
        .collect();
    engine
        .add_documents(Some("gauged"), documents)
        .await
        .expect("written");
    assert_eq!(documents_gauge(&metrics, "gauged").as_deref(), Some("3"));
    engine
        .delete_documents(Some("gauged"), vec!["doc-0".into()])
        .await
        .expect("deleted");
    assert_eq!(documents_gauge(&metrics, "gauged").as_deref(), Some("2"));
    engine
        .delete_collection("gauged")
        .await
        .expect("collection deleted");
    assert_eq!(documents_gauge(&metrics, "gauged").as_deref(), Some("0"));
}

#[tokio::test]
async fn reads_and_deletes_check_their_ids() {
    let Fixture { engine, .. } = fixture().await;
    let documents = (0..LIMIT)
        .map(|index| document(&format!("doc-{index}"), &format!("Passage number {index}.")))
        .collect();
    engine
        .add_documents(None, documents)
        .await
        .expect("written");

    assert_eq!(
        refused_field(engine.get_documents(None, vec![]).await),
        "ids"
    );
    assert_eq!(
        refused_field(engine.get_documents(None, ids(LIMIT + 1)).await),
        "ids"
    );
    assert_eq!(
        refused_field(
            engine
                .get_documents(None, vec!["ok".into(), "bell\u{7}".into()])
                .await
        ),
        "ids[1]"
    );
    let mut asked = ids(LIMIT);
    asked.reverse();
    let read = engine
        .get_documents(None, asked.clone())
        .await
        .expect("read");
    let read: Vec<String> = read.into_iter().map(|document| document.id).collect();
    assert_eq!(read, asked);

    assert_eq!(
        refused_field(engine.delete_documents(None, vec![]).await),
        "ids"
    );
    assert_eq!(
        refused_field(engine.delete_documents(None, ids(LIMIT + 1)).await),
        "ids"
    );
    assert_eq!(
        refused_field(engine.delete_documents(None, vec!["[x]".into()]).await),
        "ids[0]"
    );
    let deleted = engine
        .delete_documents(None, ids(LIMIT))
        .await
        .expect("deleted");
    assert_eq!(deleted.ids, ids(LIMIT));
    assert_eq!(deleted.collection.document_count, 0);
}

/// Writes a small corpus and answers one question over it, so that both caches hold entries.
async fn answered_once(engine: &Engine) -> QueryResult {
    let documents = vec![
        document("zephyr", "The Zephyr blender is made by Klaxon."),
        document("klaxon", "Klaxon is based in Porto."),
    ];
    engine
        .add_documents(None, documents)
        .await
        .expect("written");
    let (result, _) = run_collecting(engine, question("Who makes the Zephyr blender?")).await;
    assert!(!result.cached);
    result
}

#[tokio::test]
async fn clearing_the_cache_counts_results_and_searches() {
    let Fixture { engine, .. } = fixture().await;
    let result = answered_once(&engine).await;
    let searches = u64::from(result.usage.search_calls);
    assert!(searches > 0);
    assert_eq!(
        refused_field(engine.clear_cache(Some("bad name!")).await),
        "collection"
    );
    assert_eq!(
        engine
            .clear_cache(Some("elsewhere"))
            .await
            .expect("cleared"),
        0
    );
    assert_eq!(
        engine.clear_cache(Some("default")).await.expect("cleared"),
        1 + searches
    );
    assert_eq!(engine.clear_cache(None).await.expect("cleared"), 0);
}

#[tokio::test]
async fn deleting_a_collection_reports_its_documents_and_cache_entries() {
    let Fixture { engine, .. } = fixture().await;
    let result = answered_once(&engine).await;
    let searches = u64::from(result.usage.search_calls);
    assert_eq!(
        refused_field(engine.delete_collection("").await),
        "collection"
    );
    assert_eq!(
        refused_field(engine.delete_collection("bad name!").await),
        "collection"
    );
    assert!(matches!(
        engine.delete_collection("elsewhere").await,
        Err(EngineError::Store(StoreError::CollectionNotFound(_)))
    ));
    let deleted = engine.delete_collection("default").await.expect("deleted");
    assert_eq!(
        deleted,
        DeletedCollection {
            documents: 2,
            cache_entries: 1 + searches,
        }
    );
    assert!(engine.list_collections().await.expect("listed").is_empty());
}

#[tokio::test]
async fn statistics_count_queries_cache_hits_and_usage_per_account() {
    let Fixture { engine, .. } = fixture().await;
    let first = answered_once(&engine).await;
    let (again, _) = run_collecting(&engine, question("Who makes the Zephyr blender?")).await;
    assert!(again.cached);
    let stats = engine.stats().await.expect("stats");
    assert_eq!(stats.model, "extractive");
    assert_eq!(stats.cache_backend, "memory");
    assert_eq!(stats.collections.len(), 1);
    assert_eq!(stats.collections[0].document_count, 2);
    assert_eq!(stats.usage.queries, 2);
    assert_eq!(stats.usage.cached_queries, 1);
    assert_eq!(
        stats.usage.search_calls,
        u64::from(first.usage.search_calls)
    );
    assert_eq!(stats.usage.llm_calls, u64::from(first.usage.llm_calls()));
    assert_eq!(stats.usage.models, first.usage.models);
    assert_eq!(
        stats.accounts,
        vec![(ANONYMOUS_ACCOUNT.to_string(), stats.usage.clone())]
    );
    assert_eq!(stats.result_cache.hits, 1);
    assert!(stats.search_cache.entries > 0);
}

#[tokio::test]
async fn the_store_is_reported_reachable() {
    let Fixture { engine, .. } = fixture().await;
    tokio::time::timeout(Duration::from_secs(10), engine.check_store())
        .await
        .expect("answered")
        .expect("reachable");
}

#[tokio::test]
async fn an_unreachable_store_is_reported_so() {
    let store = MemoryStore {
        unreachable: Some("connection refused".into()),
        ..MemoryStore::default()
    };
    let engine = engine_with(Arc::new(store), Arc::new(ExtractiveModel::default()));
    match engine.check_store().await {
        Err(EngineError::Store(StoreError::Unavailable(why))) => {
            assert_eq!(why, "connection refused")
        }
        other => panic!("expected the store unavailable, got {other:?}"),
    }
}
