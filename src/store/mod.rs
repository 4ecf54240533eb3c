//! Document storage and retrieval.

#[cfg(test)]
mod conformance;
mod dense;
pub mod embedded;
pub mod filter;
mod hnsw;
mod index;
pub mod postgres;
mod prepare;
mod reindex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
pub use filter::{Filter, FilterError};
pub use postgres::PostgresStore;
pub use prepare::Fusion;

use crate::embed::EmbedError;

/// The collection used when a request names none.
pub const DEFAULT_COLLECTION: &str = "default";

/// Longest collection name accepted.
pub const MAX_COLLECTION_NAME_LEN: usize = 64;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The collection does not exist.
    #[error("collection {0:?} does not exist")]
    CollectionNotFound(String),
    /// The collection name is empty, too long, or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid collection name {0:?}: use 1 to 64 letters, digits, '_', '-' or '.'")]
    InvalidCollectionName(String),
    /// A metadata filter could not be understood.
    #[error("invalid filter: {0}")]
    InvalidFilter(#[from] FilterError),
    /// The embedder failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The database failed a statement or could not be opened. Each store turns its driver's
    /// errors into this or [`StoreError::Unavailable`] itself, so this enum names no driver.
    #[error("database failure: {0}")]
    Database(String),
    /// The disk under the database took no more bytes (full, or over a file-size limit or a
    /// quota): the write was not stored, and what was stored before is intact.
    #[error("the disk holding the store is full: {0}")]
    Full(String),
    /// The database cannot be reached, lost the connection, or did not answer in time: the
    /// call may succeed when retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database was migrated by a newer build; this one refuses to touch it.
    #[error(
        "database schema version {found} is newer than this build supports ({known}): \
         run a newer deeprecall"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The collection's vectors were made by another embedder than the store's: it can be
    /// neither searched nor written until it is reindexed.
    #[error(
        "collection {collection:?} was embedded with {stored}, but this server embeds with \
         {configured}: run `deeprecall reindex --collection {collection}` with the new \
         embedder, or configure {stored} again"
    )]
    EmbedderMismatch {
        /// The collection.
        collection: String,
        /// The embedder that made its vectors.
        stored: String,
        /// The embedder the store is configured with.
        configured: String,
    },
    /// The store cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

/// A document to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument {
    /// Id to store it under; `None` generates one.
    pub id: Option<String>,
    /// Text of the document.
    pub content: String,
    /// Free-form metadata; top-level keys can be filtered on.
    pub metadata: Map<String, Value>,
}

/// A document found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Document id.
    pub id: String,
    /// Document text.
    pub content: String,
    /// Document metadata.
    pub metadata: Map<String, Value>,
    /// Reciprocal-rank-fusion score; higher is better.
    pub score: f64,
}

/// A stored document, as read back by id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    /// Document id.
    pub id: String,
    /// Document text.
    pub content: String,
    /// Document metadata.
    pub metadata: Map<String, Value>,
}

/// What to search for.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Collection to search.
    pub collection: String,
    /// Search text.
    pub query: String,
    /// Number of hits wanted.
    pub top_k: usize,
    /// Conditions every hit must meet, applied before ranking is cut to `top_k`.
    pub filter: Filter,
}

/// A collection and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionInfo {
    /// Collection name.
    pub name: String,
    /// Number of documents.
    pub document_count: u64,
    /// Content version: changes on every write to the collection.
    pub version: u64,
}

/// The result of a write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// Ids written, in input order (for deletes: the ids that existed).
    pub ids: Vec<String>,
    /// The collection after the write.
    pub collection: CollectionInfo,
}

/// Reports a reindex's progress: documents that have their new vectors so far, and in all.
pub type ReindexProgress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// What a reindex did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexReport {
    /// The embedder whose vectors were replaced; the store's own when there was nothing to do.
    pub previous_embedder: String,
    /// The store's embedder, which made the new vectors.
    pub embedder: String,
    /// Documents in the collection.
    pub documents: u64,
    /// Documents embedded by this run; a resumed run skips what an earlier one embedded.
    pub embedded: u64,
}

/// Stores documents in named collections and searches them.
#[async_trait]
pub trait DocumentStore: Send + Sync + std::fmt::Debug {
    /// Adds or replaces documents atomically, creating the collection if needed. Returns once
    /// the write is durable.
    async fn add_documents(
        &self,
        collection: &str,
        documents: Vec<NewDocument>,
    ) -> Result<WriteOutcome, StoreError>;

    /// Deletes documents by id; unknown ids are ignored.
    async fn delete_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<WriteOutcome, StoreError>;

    /// Identifies the embedder the store embeds with, and every setting that changes its
    /// vectors: part of a search cache key.
    fn embedder_id(&self) -> String;

    /// Names how the store ranks and fuses, when settings can change it (`store.rrf_k`,
    /// `store.vector_weight`): part of a search cache key, so that replicas sharing a cache
    /// across a change of those settings do not serve each other's hits.
    fn ranking_id(&self) -> String {
        String::new()
    }

    /// Returns the best `top_k` documents for the query among those matching the filter.
    async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, StoreError>;

    /// Returns the collection's state, or `None` if it does not exist.
    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError>;

    /// Returns every collection, by name.
    async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError>;

    /// Deletes a collection and its documents at once; returns its state just before, or
    /// `None` if it did not exist. Durable once it returns.
    async fn delete_collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError>;

    /// Returns up to `limit` documents of the collection in id order, starting after the id
    /// `after` (from the first when `None`): pages for an export that holds one page at a time.
    async fn list_documents(
        &self,
        collection: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredDocument>, StoreError>;

    /// Returns the documents with these ids, in the order asked, each once; ids not in the
    /// collection are left out.
    async fn get_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<Vec<StoredDocument>, StoreError>;

    /// Fails with [`StoreError::EmbedderMismatch`] when another embedder made the collection's
    /// vectors: a query asks before it starts, rather than have each of its searches fail.
    async fn check_searchable(&self, collection: &str) -> Result<(), StoreError> {
        let _ = collection;
        Ok(())
    }

    /// Re-embeds every document of the collection with the store's embedder, `batch_size`
    /// documents at a time, and swaps the new vectors in at once when all are made. Until
    /// then the collection keeps its old vectors, and writes go on; an interrupted run resumes
    /// where it stopped.
    async fn reindex(
        &self,
        collection: &str,
        batch_size: usize,
        progress: ReindexProgress,
    ) -> Result<ReindexReport, StoreError> {
        let _ = (batch_size, progress);
        Err(StoreError::Unsupported(format!(
            "this store cannot reindex collection {collection:?}: it keeps one embedder for \
             every collection"
        )))
    }

    /// Answers whether the store can serve calls now, in one round trip at most: the server
    /// asks it periodically and reports the answer as its readiness. A store in a local file
    /// that opened stays reachable (its rare disk failures show on the calls themselves), so
    /// the default answers yes.
    async fn check_reachable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Checks a collection name: 1 to 64 characters from `[A-Za-z0-9_.-]`.
pub fn validate_collection_name(name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_COLLECTION_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidCollectionName(name.to_string()))
    }
}
