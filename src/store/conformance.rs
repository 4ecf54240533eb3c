//! The store conformance suite: what every [`DocumentStore`] must do, written once and run
//! against each store. A store's tests expand [`conformance_suite!`] with a function that opens
//! a fresh, empty store over a given embedder.
//!
//! Rankings differ between stores (BM25 in FTS5, `ts_rank` in PostgreSQL; an exact vector
//! search, an approximate one), so the cases assert what a caller relies on: what is found,
//! what a filter admits, what a write changes, and clear winners, never exact scores from one
//! store's ranking function.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    CollectionInfo, DocumentStore, Filter, NewDocument, SearchRequest, StoreError, WriteOutcome,
};
use crate::embed::{EmbedError, Embedder, Embedding, HashingEmbedder};

/// A store under test, and whatever must live as long as it (a directory, a database).
pub(crate) struct Subject {
    pub(crate) store: Arc<dyn DocumentStore>,
    pub(crate) _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// Opens a fresh, empty store over the embedder.
pub(crate) trait Open {
    fn open(&self, embedder: Arc<dyn Embedder>) -> impl Future<Output = Subject>;
}

impl<F, Fut> Open for F
where
    F: Fn(Arc<dyn Embedder>) -> Fut,
    Fut: Future<Output = Subject>,
{
    fn open(&self, embedder: Arc<dyn Embedder>) -> impl Future<Output = Subject> {
        self(embedder)
    }
}

/// Expands to one test per case, each opening its store with `$open`.
macro_rules! conformance_suite {
    ($open:expr) => {
        $crate::store::conformance::conformance_suite!(@cases $open;
            terms_the_fts_tokenizer_drops_do_not_break_search,
            added_documents_are_found_by_keyword_and_by_similarity,
            missing_ids_are_generated,
            re_adding_an_id_replaces_the_document,
            duplicate_ids_in_one_call_keep_the_last_document,
            delete_removes_documents_and_reports_the_ids_that_existed,
            version_changes_on_every_write_that_changes_content,
            deleting_a_collection_removes_it_with_its_documents,
            documents_are_read_back_by_id_in_the_order_asked,
            documents_are_listed_in_pages_by_id,
            unknown_collections_are_errors,
            invalid_collection_names_are_rejected,
            collections_are_listed_by_name_and_searched_separately,
            filter_applies_before_the_top_k_cut,
            every_filter_operator_admits_what_the_filter_matches,
            filter_values_are_data_whatever_they_hold,
            keyword_only_and_vector_only_hits_both_appear,
            queries_without_content_terms_skip_keyword_search,
            concurrent_writes_and_searches_stay_consistent,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::store::conformance::$case($open).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

pub(crate) fn hashing() -> Arc<dyn Embedder> {
    Arc::new(HashingEmbedder::default())
}

pub(crate) async fn search_ids(store: &dyn DocumentStore, request: SearchRequest) -> Vec<String> {
    store
        .search(request)
        .await
        .unwrap()
        .into_iter()
        .map(|hit| hit.id)
        .collect()
}

pub(crate) fn metadata(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

pub(crate) fn doc(id: &str, content: &str) -> NewDocument {
    NewDocument {
        id: Some(id.to_string()),
        content: content.to_string(),
        metadata: Map::new(),
    }
}

pub(crate) fn doc_with(id: &str, content: &str, meta: Value) -> NewDocument {
    NewDocument {
        metadata: metadata(meta),
        ..doc(id, content)
    }
}

pub(crate) fn request(collection: &str, query: &str, top_k: usize) -> SearchRequest {
    SearchRequest {
        collection: collection.to_string(),
        query: query.to_string(),
        top_k,
        filter: Filter::default(),
    }
}

pub(crate) fn corpus() -> Vec<NewDocument> {
    vec![
        doc_with(
            "northwind",
            "Northwind Aerospace is headquartered in Toulouse and builds the Zephyr X.",
            json!({"kind": "company"}),
        ),
        doc_with(
            "toulouse",
            "Toulouse is a city in southern France on the Garonne river.",
            json!({"kind": "city"}),
        ),
        doc_with(
            "soup",
            "The onion soup recipe needs butter, onions and a slow simmer.",
            json!({"kind": "recipe"}),
        ),
    ]
}

#[derive(Debug)]
pub(crate) struct ScriptedEmbedder(pub(crate) HashMap<String, Embedding>);

#[async_trait]
impl Embedder for ScriptedEmbedder {
    fn id(&self) -> String {
        "scripted".to_string()
    }

    fn dimension(&self) -> usize {
        8
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        Ok(texts
            .iter()
            .map(|text| self.0.get(text).cloned().unwrap_or_default())
            .collect())
    }
}

pub(crate) fn axis(index: u32) -> Embedding {
    Embedding {
        indices: vec![index],
        values: vec![1.0],
    }
}

pub(crate) async fn terms_the_fts_tokenizer_drops_do_not_break_search(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    // Characters a full-text tokenizer drops or folds leave the query's other words working.
    for query in ["\u{345} garonne", "garonne \u{2167}", "ǅ garonne"] {
        let hits = search_ids(store, request("docs", query, 3)).await;
        assert_eq!(
            hits.first().map(String::as_str),
            Some("toulouse"),
            "{query:?}"
        );
    }
    for query in ["\u{345}", "\u{2167}", "ǅ"] {
        let hits = store.search(request("docs", query, 3)).await;
        assert!(hits.is_ok(), "{query:?}: {hits:?}");
    }
}

pub(crate) async fn added_documents_are_found_by_keyword_and_by_similarity(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let outcome = store.add_documents("docs", corpus()).await.unwrap();
    assert_eq!(outcome.ids, vec!["northwind", "toulouse", "soup"]);
    assert_eq!(
        outcome.collection,
        CollectionInfo {
            name: "docs".into(),
            document_count: 3,
            version: 1
        }
    );

    let hits = store
        .search(request("docs", "Where is Northwind headquartered?", 2))
        .await
        .unwrap();
    assert_eq!(hits[0].id, "northwind");
    assert_eq!(hits[0].metadata, metadata(json!({"kind": "company"})));
    assert!(hits[0].content.contains("Zephyr X"));
    assert!(hits.len() <= 2);
    assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));

    // Misspelt words share no keyword but many character n-grams.
    let hits = search_ids(store, request("docs", "onoin suop recipes", 1)).await;
    assert_eq!(hits, vec!["soup"]);
}

pub(crate) async fn missing_ids_are_generated(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let documents = vec![
        NewDocument {
            id: None,
            content: "first".into(),
            metadata: Map::new(),
        },
        NewDocument {
            id: Some(String::new()),
            content: "second".into(),
            metadata: Map::new(),
        },
    ];
    let outcome = store.add_documents("docs", documents).await.unwrap();
    assert_eq!(outcome.ids.len(), 2);
    assert_ne!(outcome.ids[0], outcome.ids[1]);
    for id in &outcome.ids {
        assert!(Uuid::parse_str(id).is_ok(), "{id}");
    }
    assert_eq!(outcome.collection.document_count, 2);
    let hits = search_ids(store, request("docs", "second", 1)).await;
    assert_eq!(hits, vec![outcome.ids[1].clone()]);
}

pub(crate) async fn re_adding_an_id_replaces_the_document(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    let outcome = store
        .add_documents(
            "docs",
            vec![doc_with(
                "soup",
                "Gazpacho is served cold.",
                json!({"kind": "cold"}),
            )],
        )
        .await
        .unwrap();
    assert_eq!(outcome.collection.document_count, 3);

    let hits = store.search(request("docs", "gazpacho", 3)).await.unwrap();
    assert_eq!(hits[0].id, "soup");
    assert_eq!(hits[0].content, "Gazpacho is served cold.");
    assert_eq!(hits[0].metadata, metadata(json!({"kind": "cold"})));
    let hits = search_ids(store, request("docs", "onion butter simmer", 3)).await;
    assert!(!hits.contains(&"soup".to_string()), "{hits:?}");

    let mut old_filter = request("docs", "soup", 3);
    old_filter.filter = Filter::from_json(&metadata(json!({"kind": "recipe"}))).unwrap();
    assert!(store.search(old_filter).await.unwrap().is_empty());
}

pub(crate) async fn duplicate_ids_in_one_call_keep_the_last_document(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let outcome = store
        .add_documents(
            "docs",
            vec![
                doc("a", "apples are red"),
                doc("b", "bananas are yellow"),
                doc("a", "avocados are green"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcome.ids, vec!["a", "b", "a"]);
    assert_eq!(outcome.collection.document_count, 2);
    let hits = store.search(request("docs", "avocados", 5)).await.unwrap();
    assert_eq!(hits[0].id, "a");
    assert_eq!(hits[0].content, "avocados are green");
    let hits = store
        .search(request("docs", "apples red", 5))
        .await
        .unwrap();
    assert!(
        hits.iter().all(|hit| !hit.content.contains("apples")),
        "{hits:?}"
    );
}

pub(crate) async fn delete_removes_documents_and_reports_the_ids_that_existed(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    let outcome = store
        .delete_documents("docs", vec!["soup".into(), "nope".into(), "soup".into()])
        .await
        .unwrap();
    assert_eq!(outcome.ids, vec!["soup"]);
    assert_eq!(outcome.collection.document_count, 2);
    let hits = search_ids(store, request("docs", "onion soup recipe", 5)).await;
    assert!(!hits.contains(&"soup".to_string()), "{hits:?}");

    // The id is free again.
    store
        .add_documents("docs", vec![doc("soup", "Miso soup")])
        .await
        .unwrap();
    let hits = search_ids(store, request("docs", "miso", 1)).await;
    assert_eq!(hits, vec!["soup"]);
}

pub(crate) async fn version_changes_on_every_write_that_changes_content(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let version = |outcome: WriteOutcome| outcome.collection.version;
    let first = version(store.add_documents("docs", corpus()).await.unwrap());
    assert!(first >= 1);
    let second = version(
        store
            .add_documents("docs", vec![doc("x", "x")])
            .await
            .unwrap(),
    );
    assert!(second > first);
    let third = version(
        store
            .delete_documents("docs", vec!["x".into()])
            .await
            .unwrap(),
    );
    assert!(third > second);
    // Nothing deleted, nothing changed: caches keyed on the version stay valid.
    let unchanged = version(
        store
            .delete_documents("docs", vec!["x".into()])
            .await
            .unwrap(),
    );
    assert_eq!(unchanged, third);
    assert_eq!(
        version(store.delete_documents("docs", vec![]).await.unwrap()),
        third
    );
    let other = store.add_documents("other", corpus()).await.unwrap();
    assert!(other.collection.version >= 1);
    assert_eq!(
        store.collection("docs").await.unwrap().unwrap().version,
        third,
        "a write to another collection leaves this one's version"
    );
}

pub(crate) async fn deleting_a_collection_removes_it_with_its_documents(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    store
        .add_documents("kept", vec![doc("toulouse", "Toulouse again")])
        .await
        .unwrap();
    let before = store.collection("docs").await.unwrap().unwrap();
    let deleted = store.delete_collection("docs").await.unwrap();
    assert_eq!(deleted, Some(before.clone()));
    assert_eq!(store.collection("docs").await.unwrap(), None);
    assert!(matches!(
        store.search(request("docs", "toulouse", 3)).await,
        Err(StoreError::CollectionNotFound(_))
    ));
    assert_eq!(store.delete_collection("docs").await.unwrap(), None);
    let names: Vec<String> = store
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, vec!["kept"]);
    assert_eq!(
        search_ids(store, request("kept", "toulouse", 3)).await,
        vec!["toulouse"]
    );

    // Created again, it starts empty, and nothing of the old one comes back.
    let again = store
        .add_documents("docs", vec![doc("fresh", "a fresh start")])
        .await
        .unwrap();
    assert_eq!(again.collection.document_count, 1);
    assert_eq!(
        search_ids(store, request("docs", "northwind toulouse soup fresh", 10)).await,
        vec!["fresh"]
    );
}

pub(crate) async fn documents_are_read_back_by_id_in_the_order_asked(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    let ids = |list: &[&str]| list.iter().map(|id| id.to_string()).collect::<Vec<_>>();
    let documents = store
        .get_documents("docs", ids(&["soup", "missing", "northwind", "soup"]))
        .await
        .unwrap();
    let read: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(read, vec!["soup", "northwind"]);
    assert!(documents[0].content.starts_with("The onion soup"));
    assert_eq!(documents[1].metadata, metadata(json!({"kind": "company"})));
    assert!(
        store
            .get_documents("docs", Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.get_documents("missing", ids(&["soup"])).await,
        Err(StoreError::CollectionNotFound(_))
    ));
}

pub(crate) async fn documents_are_listed_in_pages_by_id(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let mut documents: Vec<NewDocument> = (0..25)
        .map(|n| doc_with(&format!("id-{n:02}"), &format!("text {n}"), json!({"n": n})))
        .collect();
    // Byte order: upper case before lower case, whatever the database's collation says.
    documents.push(doc("Zulu", "upper"));
    documents.push(doc("alpha", "lower"));
    store.add_documents("docs", documents).await.unwrap();
    store
        .add_documents("other", vec![doc("id-99", "elsewhere")])
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_documents("docs", after.clone(), 10)
            .await
            .unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.id.clone());
        listed.extend(page);
    }
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    let mut expected: Vec<String> = (0..25).map(|n| format!("id-{n:02}")).collect();
    expected.insert(0, "alpha".into());
    expected.insert(0, "Zulu".into());
    assert_eq!(ids, expected);
    assert_eq!(listed[2].content, "text 0");
    assert_eq!(listed[2].metadata, metadata(json!({"n": 0})));
    assert!(matches!(
        store.list_documents("missing", None, 10).await,
        Err(StoreError::CollectionNotFound(_))
    ));
}

pub(crate) async fn unknown_collections_are_errors(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    assert!(matches!(
        store.search(request("missing", "toulouse", 3)).await,
        Err(StoreError::CollectionNotFound(name)) if name == "missing"
    ));
    assert!(matches!(
        store.delete_documents("missing", vec!["a".into()]).await,
        Err(StoreError::CollectionNotFound(_))
    ));
    assert_eq!(store.collection("missing").await.unwrap(), None);
}

pub(crate) async fn invalid_collection_names_are_rejected(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    for name in ["", "has space", "semi;colon", &"x".repeat(65)] {
        assert!(matches!(
            store.add_documents(name, corpus()).await,
            Err(StoreError::InvalidCollectionName(_))
        ));
        assert!(matches!(
            store.search(request(name, "a", 1)).await,
            Err(StoreError::InvalidCollectionName(_))
        ));
    }
    assert!(store.collections().await.unwrap().is_empty());
}

pub(crate) async fn collections_are_listed_by_name_and_searched_separately(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store
        .add_documents("zeta", vec![doc("z", "shared words here")])
        .await
        .unwrap();
    store
        .add_documents("alpha", vec![doc("a1", "shared words"), doc("a2", "more")])
        .await
        .unwrap();
    let names: Vec<(String, u64)> = store
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|info| (info.name, info.document_count))
        .collect();
    assert_eq!(names, vec![("alpha".into(), 2), ("zeta".into(), 1)]);
    assert_eq!(
        search_ids(store, request("zeta", "shared words", 5)).await,
        vec!["z"]
    );
    assert_eq!(
        search_ids(store, request("alpha", "shared words", 5)).await,
        vec!["a1"]
    );
}

pub(crate) async fn filter_applies_before_the_top_k_cut(open: impl Open) {
    // With no vectors at all, only the keyword side can find documents.
    for embedder in [
        Arc::new(HashingEmbedder::default()) as Arc<dyn Embedder>,
        Arc::new(ScriptedEmbedder(HashMap::new())),
    ] {
        let subject = open.open(embedder).await;
        let store = subject.store.as_ref();
        let mut documents: Vec<NewDocument> = (0..50)
            .map(|n| {
                doc_with(
                    &format!("common-{n:02}"),
                    &format!("Zephyr zephyr zephyr flight report {n}"),
                    json!({"team": "common"}),
                )
            })
            .collect();
        documents.push(doc_with(
            "rare",
            "A long unrelated memo about budgets, hiring, offices, parking, lunches and \
             travel policy, which mentions the zephyr once near the end.",
            json!({"team": "rare"}),
        ));
        store.add_documents("docs", documents).await.unwrap();

        let unfiltered = search_ids(store, request("docs", "zephyr", 3)).await;
        assert_eq!(unfiltered.len(), 3);
        assert!(!unfiltered.contains(&"rare".to_string()));

        let mut filtered = request("docs", "zephyr", 3);
        filtered.filter = Filter::from_json(&metadata(json!({"team": "rare"}))).unwrap();
        assert_eq!(search_ids(store, filtered).await, vec!["rare"]);

        let mut none = request("docs", "zephyr", 3);
        none.filter = Filter::from_json(&metadata(json!({"team": "nobody"}))).unwrap();
        assert!(store.search(none).await.unwrap().is_empty());
    }
}

pub(crate) async fn keyword_only_and_vector_only_hits_both_appear(open: impl Open) {
    let query = "quarterly revenue";
    let mut vectors = HashMap::new();
    vectors.insert(query.to_string(), axis(1));
    // Shares the query's vector but none of its words.
    vectors.insert("sales went up in the third period".to_string(), axis(1));
    // Shares the query's words but points elsewhere.
    vectors.insert("revenue tables, quarterly".to_string(), axis(2));
    vectors.insert("unrelated filler".to_string(), axis(3));
    let subject = open.open(Arc::new(ScriptedEmbedder(vectors))).await;
    let store = subject.store.as_ref();
    store
        .add_documents(
            "docs",
            vec![
                doc("semantic", "sales went up in the third period"),
                doc("keyword", "revenue tables, quarterly"),
                doc("filler", "unrelated filler"),
            ],
        )
        .await
        .unwrap();
    let hits = store.search(request("docs", query, 5)).await.unwrap();
    let ids: Vec<&str> = hits.iter().map(|hit| hit.id.as_str()).collect();
    // Equal fused scores: one first place each, ordered by id.
    assert_eq!(ids, vec!["keyword", "semantic"]);
    assert_eq!(hits[0].score, hits[1].score);
    assert!((hits[0].score - 1.0 / 61.0).abs() < 1e-12);
}

pub(crate) async fn queries_without_content_terms_skip_keyword_search(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    store.add_documents("docs", corpus()).await.unwrap();
    assert!(
        store
            .search(request("docs", "", 3))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search(request("docs", "the of and", 3))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search(request("docs", "toulouse", 0))
            .await
            .unwrap()
            .is_empty()
    );
    // FTS5 syntax in the query is only text.
    let hits = store
        .search(request("docs", "\"toulouse\" OR NEAR(x y) * ^ col:\"", 3))
        .await
        .unwrap();
    assert!(!hits.is_empty());
}

/// Under concurrent writers every write is counted, gets a version of its own, and the
/// collection ends at the newest version: a version committed later is never lower than one
/// committed before it, which is what lets a cached result keyed on a version never be
/// served after a write.
pub(crate) async fn concurrent_writes_and_searches_stay_consistent(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = Arc::clone(&subject.store);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for n in 0..10 {
                let id = format!("w{writer}-{n}");
                let written = store
                    .add_documents("docs", vec![doc(&id, &format!("report {writer} {n}"))])
                    .await
                    .unwrap();
                versions.push(written.collection.version);
                store.search(request("docs", "report", 5)).await.unwrap();
            }
            versions
        }));
    }
    let mut versions = std::collections::BTreeSet::new();
    for task in tasks {
        let written = task.await.unwrap();
        // One writer's versions rise with its writes.
        assert!(
            written.windows(2).all(|pair| pair[0] < pair[1]),
            "{written:?}"
        );
        versions.extend(written);
    }
    assert_eq!(versions.len(), 40, "a version per write: {versions:?}");
    let info = store.collection("docs").await.unwrap().unwrap();
    assert_eq!(info.document_count, 40);
    assert_eq!(Some(&info.version), versions.last());
}

pub(crate) async fn every_filter_operator_admits_what_the_filter_matches(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let metadata_of = [
        json!({"team": "platform", "year": 2020, "tag": ["a", "b"], "live": true}),
        json!({"team": "search", "year": 2023.5, "tag": "c", "owner": null}),
        json!({"team": "platform", "year": "2021", "tag": ["c", "d"]}),
        json!({"year": 2024, "score": 9_007_199_254_740_993_u64}),
        json!({"team": "Platform", "year": -1, "day": "2024-02-01"}),
        json!({"team": "ops", "day": "2024-01-01", "score": 1.5, "live": false}),
        json!({}),
    ];
    let documents: Vec<NewDocument> = metadata_of
        .iter()
        .enumerate()
        .map(|(n, meta)| doc_with(&format!("d{n}"), &format!("ledger entry {n}"), meta.clone()))
        .collect();
    let all: Vec<(String, Map<String, Value>)> = documents
        .iter()
        .map(|document| {
            (
                document.id.clone().unwrap_or_default(),
                document.metadata.clone(),
            )
        })
        .collect();
    store.add_documents("docs", documents).await.unwrap();
    let filters = [
        json!({"team": "platform"}),
        json!({"team": {"$eq": "platform"}}),
        json!({"team": {"$ne": "platform"}}),
        json!({"team": {"$in": ["search", "ops", 3]}}),
        json!({"team": {"$in": []}}),
        json!({"tag": "a"}),
        json!({"tag": {"$ne": "c"}}),
        json!({"tag": {"$in": ["d", "x"]}}),
        json!({"year": {"$gte": 2020, "$lt": 2024}}),
        json!({"year": {"$gt": 2020}}),
        json!({"year": {"$lte": 2020}}),
        json!({"year": 2020.0}),
        json!({"year": {"$gt": "2020"}}),
        json!({"day": {"$gt": "2024-01-01"}}),
        json!({"day": {"$lte": "2024-01-01"}}),
        json!({"team": {"$gt": "Z"}}),
        json!({"owner": null}),
        json!({"owner": {"$ne": null}}),
        json!({"live": true}),
        json!({"live": {"$ne": true}}),
        json!({"score": 9_007_199_254_740_993_u64}),
        json!({"score": 9_007_199_254_740_992_u64}),
        json!({"score": {"$gt": 1}}),
        json!({"$and": [{"team": "platform"}, {"year": {"$lt": 2021}}]}),
        json!({"missing": {"$ne": 1}}),
        json!({"missing": 1}),
        // Four conditions at once.
        json!({"team": {"$ne": "x"}, "year": {"$gte": 0, "$lt": 3000}, "tag": {"$ne": "zz"}}),
    ];
    for filter_json in filters {
        let filter = Filter::from_json(&metadata(filter_json.clone())).unwrap();
        let mut expected: Vec<String> = all
            .iter()
            .filter(|(_, meta)| filter.matches(meta))
            .map(|(id, _)| id.clone())
            .collect();
        expected.sort();
        let mut search = request("docs", "ledger entry", 50);
        search.filter = filter;
        let mut found = search_ids(store, search).await;
        found.sort();
        assert_eq!(found, expected, "filter {filter_json}");
    }
}

pub(crate) async fn filter_values_are_data_whatever_they_hold(open: impl Open) {
    let subject = open.open(hashing()).await;
    let store = subject.store.as_ref();
    let hostile = "x'); DROP TABLE documents; --";
    store
        .add_documents(
            "docs",
            vec![
                doc_with("plain", "quarterly ledger", json!({"team": "ops"})),
                doc_with(
                    "odd",
                    "quarterly ledger",
                    json!({"team": hostile, hostile: 1}),
                ),
            ],
        )
        .await
        .unwrap();
    for filter_json in [
        json!({"team": hostile}),
        json!({"team": {"$in": [hostile, "' OR 1=1 --"]}}),
        json!({hostile: {"$gte": 1}}),
    ] {
        let mut search = request("docs", "quarterly ledger", 5);
        search.filter = Filter::from_json(&metadata(filter_json.clone())).unwrap();
        assert_eq!(
            search_ids(store, search).await,
            vec!["odd"],
            "{filter_json}"
        );
    }
    let mut search = request("docs", "quarterly ledger", 5);
    search.filter = Filter::from_json(&metadata(json!({"team": "' OR '1'='1"}))).unwrap();
    assert!(search_ids(store, search).await.is_empty());
    // The search text is data too, for SQL and for full-text syntax alike.
    let hits = search_ids(
        store,
        request("docs", "ledger'; DROP TABLE documents; -- & | !", 5),
    )
    .await;
    assert_eq!(hits.len(), 2);
    assert_eq!(
        store
            .collection("docs")
            .await
            .unwrap()
            .unwrap()
            .document_count,
        2
    );
}
