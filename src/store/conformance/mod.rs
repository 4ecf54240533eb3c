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

mod collections;
mod reindex;
mod search;
mod writes;

pub(crate) use self::collections::*;
pub(crate) use self::reindex::*;
pub(crate) use self::search::*;
pub(crate) use self::writes::*;

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
            a_store_names_its_embedder_and_its_ranking,
            filter_applies_before_the_top_k_cut,
            every_filter_operator_admits_what_the_filter_matches,
            filter_values_are_data_whatever_they_hold,
            keyword_only_and_vector_only_hits_both_appear,
            a_dense_embedders_ranking_outweighs_keyword_overlap,
            dense_vectors_rank_filter_and_forget_like_sparse_ones,
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

/// Another embedder's vectors, declared dense as a neural embedder's are: the store keeps them
/// in its dense layout and fuses their ranking as a semantic one's.
#[derive(Debug)]
pub(crate) struct Dense<E>(pub(crate) E);

#[async_trait]
impl<E: Embedder> Embedder for Dense<E> {
    fn id(&self) -> String {
        format!("dense-{}", self.0.id())
    }

    fn dimension(&self) -> usize {
        self.0.dimension()
    }

    fn dense(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        self.0.embed(texts).await
    }
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
