//! The embedded store: SQLite is the source of truth, vectors live in an in-memory index rebuilt
//! at start, FTS5 gives BM25, and the two rankings are fused by reciprocal rank.
//!
//! Concurrency: one writer connection behind a mutex serialises every write, and a small pool
//! of read-only connections serves searches. A writer takes the collection's state lock for
//! writing just before `COMMIT` and releases it after updating the in-memory index, while a
//! search holds it for reading from its first to its last SQL statement; so a search always
//! sees SQLite and the in-memory index at the same version. Each kind of connection has
//! threads of its own (one for the writer, one per reader), and a call queues for one of them
//! on the async side, so the store's threads are exactly its connections.
//!
//! Files: `schema.rs` opens, migrates and loads the database; `rows.rs` holds the SQL of writes
//! and lookups and the stored vector format; `keyword.rs` the FTS5 side of a search;
//! `readers.rs` the read connections and the connections' threads.

mod graph;
mod keyword;
mod readers;
mod reindex;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use self::graph::{build_graph, build_graph_when_due};
use self::keyword::{KeywordQuery, keyword_candidates, keyword_query};
use self::readers::{ReaderPool, Threads, blocking, with_connection};
use self::rows::{
    bump_version, claim_embedder, delete_by_id, fetch_documents, fetch_hits, list_page,
    upsert_documents,
};
use self::schema::{
    configure_writer, load_collections, load_index, migrate, open_failure, open_reader,
};
use super::index::{Layout, VectorIndex};
use super::prepare::{Fusion, PreparedDocument, candidates_for, embed_query, prepare_documents};
use super::{
    CollectionInfo, DocumentStore, Filter, Hit, NewDocument, ReindexProgress, ReindexReport,
    SearchRequest, StoreError, StoredDocument, WriteOutcome, validate_collection_name,
};
use crate::embed::{Embedder, Embedding};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "deeprecall.db";

/// Largest database, in documents, searched on the calling async worker rather than the
/// blocking pool: a search of 1,000 documents measured about 0.1 ms at p50, the usual bound on
/// the time between two awaits, and the cost grows with the database.
const MAX_DOCUMENTS_TO_SEARCH_WITHOUT_WAITING: usize = 1_000;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// Directory holding `deeprecall.db` and its WAL files; created if missing.
    pub data_dir: PathBuf,
    /// Number of read-only connections serving searches.
    pub read_connections: usize,
    /// The fusion's rank offset; unset takes the embedder's default ([`Fusion`]).
    pub rrf_k: Option<f64>,
    /// The vector ranking's weight against BM25's; unset takes the embedder's default.
    pub vector_weight: Option<f64>,
    /// Live documents from which a collection of dense vectors is searched through its HNSW
    /// graph rather than by a full scan.
    pub hnsw_min_documents: usize,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            read_connections: 4,
            rrf_k: None,
            vector_weight: None,
            hnsw_min_documents: super::index::GRAPH_MIN_DOCUMENTS,
        }
    }
}

/// A [`DocumentStore`] in one SQLite file, with an in-memory vector index.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    embedder: Arc<dyn Embedder>,
    /// How indexes keep the embedder's vectors.
    layout: Layout,
    /// How searches fuse the vector ranking with BM25.
    fusion: Fusion,
    writer: Arc<Mutex<Connection>>,
    /// The writer connection's thread.
    write_threads: Threads,
    readers: ReaderPool,
    /// One thread per read connection.
    read_threads: Threads,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Documents in all collections; only steers how keyword searches are restricted.
    documents: AtomicUsize,
}

struct Collection {
    id: i64,
    name: String,
    state: RwLock<CollectionState>,
}

#[derive(Default)]
struct CollectionState {
    version: u64,
    index: VectorIndex,
    /// Set when another embedder made the collection's vectors: the index is then empty, and
    /// the collection can be neither searched nor written until it is reindexed.
    foreign: Option<Foreign>,
}

/// A collection's vectors made by another embedder than the store's.
struct Foreign {
    /// Id of the embedder that made them.
    embedder: String,
    /// Documents in the collection, which the empty index does not count.
    documents: usize,
}

impl Collection {
    /// Forgets the index once the collection turns out to hold another embedder's vectors.
    fn mark_foreign(&self, embedder: &str, documents: &AtomicUsize) {
        let mut state = self.state.write();
        let count = match &state.foreign {
            Some(foreign) => foreign.documents,
            None => state.index.len(),
        };
        documents.fetch_sub(state.index.len(), Ordering::Relaxed);
        // Nothing searches it while foreign; a reload builds it anew in the store's layout.
        state.index = VectorIndex::default();
        state.foreign = Some(Foreign {
            embedder: embedder.to_string(),
            documents: count,
        });
    }

    fn new(id: i64, name: String, state: CollectionState) -> Self {
        Self {
            id,
            name,
            state: RwLock::new(state),
        }
    }

    fn info(&self) -> CollectionInfo {
        let state = self.state.read();
        Self::info_of(&self.name, &state)
    }

    fn info_of(name: &str, state: &CollectionState) -> CollectionInfo {
        let documents = match &state.foreign {
            Some(foreign) => foreign.documents,
            None => state.index.len(),
        };
        CollectionInfo {
            name: name.to_string(),
            document_count: documents as u64,
            version: state.version,
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.data_dir`, migrates the schema, and loads the
    /// vector indexes of the collections `embedder` made. Nothing is re-embedded: a collection
    /// of another embedder is refused until `reindex` re-embeds it, since its vectors may have
    /// been paid for.
    pub async fn open(
        config: EmbeddedStoreConfig,
        embedder: Arc<dyn Embedder>,
    ) -> Result<EmbeddedStore, StoreError> {
        let fusion = Fusion::for_embedder(embedder.as_ref(), config.rrf_k, config.vector_weight);
        let data_dir = config.data_dir;
        let path = data_dir.join(DATABASE_FILE);
        let writer = blocking({
            let path = path.clone();
            move || {
                std::fs::create_dir_all(&data_dir).map_err(|err| {
                    open_failure(format!(
                        "cannot create data directory {}: {err}",
                        data_dir.display()
                    ))
                })?;
                let mut connection = Connection::open(&path)?;
                configure_writer(&connection)?;
                migrate(&mut connection)?;
                Ok(connection)
            }
        })
        .await?;
        let writer = Arc::new(Mutex::new(writer));
        let embedder_id = embedder.id();
        let layout = layout_for(embedder.as_ref(), config.hnsw_min_documents);
        let collections = with_connection(&writer, move |connection| {
            load_collections(connection, &embedder_id, layout)
        })
        .await?;
        for collection in collections.values() {
            build_graph_when_due(collection);
            if let Some(foreign) = &collection.state.read().foreign {
                tracing::warn!(
                    collection = %collection.name,
                    stored = %foreign.embedder,
                    configured = %embedder.id(),
                    "collection embedded by another embedder: refused until reindexed"
                );
            }
        }
        let readers = blocking({
            let path = path.clone();
            let count = config.read_connections.max(1);
            move || {
                (0..count)
                    .map(|_| open_reader(&path))
                    .collect::<Result<Vec<_>, _>>()
            }
        })
        .await?;

        let documents: usize = collections
            .values()
            .map(|collection| collection.state.read().index.len())
            .sum();
        tracing::info!(
            path = %path.display(),
            collections = collections.len(),
            documents,
            embedder = %embedder.id(),
            "document store open"
        );
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path,
                layout,
                fusion,
                embedder,
                writer,
                write_threads: Threads::start("store-writer", 1)?,
                read_threads: Threads::start("store-reader", readers.len())?,
                readers: ReaderPool::new(readers),
                collections: RwLock::new(collections),
                documents: AtomicUsize::new(documents),
            }),
        })
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Fails with [`StoreError::EmbedderMismatch`] while another embedder's vectors fill the
    /// collection. A reindex in another process may have swapped in this store's since: the
    /// stored embedder is read again first, and a collection now in this store's embedder has
    /// its index loaded.
    async fn refuse_foreign(&self, handle: &Arc<Collection>) -> Result<(), StoreError> {
        if handle.state.read().foreign.is_none() {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let handle = Arc::clone(handle);
        self.inner
            .write_threads
            .run(move || inner.reload_if_reindexed(&handle))
            .await
    }

    /// Returns true once the collection's dense searches go through its HNSW graph (the
    /// benchmark waits for it).
    pub(crate) fn searches_graph(&self, collection: &str) -> bool {
        self.collection_handle(collection)
            .is_ok_and(|handle| handle.state.read().index.searches_graph())
    }

    /// Searches by one ranking or both: the retrieval benchmark compares them, a query always
    /// fuses both.
    pub(crate) async fn search_ranked(
        &self,
        request: SearchRequest,
        ranking: Ranking,
    ) -> Result<Vec<Hit>, StoreError> {
        let SearchRequest {
            collection,
            query,
            top_k,
            filter,
        } = request;
        let handle = self.collection_handle(&collection)?;
        self.refuse_foreign(&handle).await?;
        if top_k == 0 {
            return Ok(Vec::new());
        }
        // Restricting matches to the collection inside FTS5 walks a doclist as long as the
        // collection, which only pays off when other collections hold most of the documents;
        // otherwise the in-memory rowid map rejects other collections' rows for free. A writer
        // holds the state through its commit's fsync: rather than block an async worker on
        // it, a collection being written is searched unscoped, which finds the same hits.
        let in_collection = handle
            .state
            .try_read()
            .map_or(usize::MAX, |state| state.index.len());
        let scoped = in_collection.saturating_mul(2) < self.inner.documents.load(Ordering::Relaxed);
        let keyword = keyword_query(handle.id, &query, scoped);
        let query_embedding = embed_query(self.inner.embedder.as_ref(), query).await?;
        let search = PreparedSearch {
            query_embedding,
            keyword: keyword.filter(|_| ranking != Ranking::Vector),
            by_vector: ranking != Ranking::Keyword,
            top_k,
            filter,
        };
        if let Some(hits) = self.inner.try_search_without_waiting(&handle, &search) {
            return hits;
        }
        let inner = Arc::clone(&self.inner);
        self.inner
            .read_threads
            .run(move || inner.search(&handle, &search))
            .await
    }

    fn collection_handle(&self, name: &str) -> Result<Arc<Collection>, StoreError> {
        validate_collection_name(name)?;
        self.inner
            .collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::CollectionNotFound(name.to_string()))
    }
}

/// Dense rows for an embedder that fills every dimension, posting lists for one that does not.
fn layout_for(embedder: &dyn Embedder, graph_from: usize) -> Layout {
    if embedder.dense() {
        Layout::Dense {
            dimension: embedder.dimension(),
            graph_from,
        }
    } else {
        Layout::Sparse
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("embedder", &self.inner.embedder)
            .field("collections", &self.inner.collections.read().len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DocumentStore for EmbeddedStore {
    fn embedder_id(&self) -> String {
        self.inner.embedder.id()
    }

    fn ranking_id(&self) -> String {
        self.inner.fusion.id()
    }

    async fn add_documents(
        &self,
        collection: &str,
        documents: Vec<NewDocument>,
    ) -> Result<WriteOutcome, StoreError> {
        validate_collection_name(collection)?;
        // Before embedding: vectors for a collection that cannot take them would be paid for
        // in vain.
        if let Ok(handle) = self.collection_handle(collection) {
            self.refuse_foreign(&handle).await?;
        }
        let (ids, prepared) = prepare_documents(self.inner.embedder.as_ref(), documents).await?;
        let inner = Arc::clone(&self.inner);
        let name = collection.to_string();
        let collection = self
            .inner
            .write_threads
            .run(move || inner.write_documents(&name, prepared))
            .await?;
        Ok(WriteOutcome { ids, collection })
    }

    async fn delete_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<WriteOutcome, StoreError> {
        let handle = self.collection_handle(collection)?;
        if ids.is_empty() {
            return Ok(WriteOutcome {
                ids,
                collection: handle.info(),
            });
        }
        let inner = Arc::clone(&self.inner);
        self.inner
            .write_threads
            .run(move || inner.delete_documents(&handle, ids))
            .await
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, StoreError> {
        self.search_ranked(request, Ranking::Hybrid).await
    }

    async fn check_searchable(&self, collection: &str) -> Result<(), StoreError> {
        let handle = self.collection_handle(collection)?;
        self.refuse_foreign(&handle).await
    }

    async fn reindex(
        &self,
        collection: &str,
        batch_size: usize,
        progress: ReindexProgress,
    ) -> Result<ReindexReport, StoreError> {
        self.reindex_collection(collection, batch_size, progress)
            .await
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        Ok(self
            .inner
            .collections
            .read()
            .get(name)
            .map(|collection| collection.info()))
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        Ok(self
            .inner
            .collections
            .read()
            .values()
            .map(|collection| collection.info())
            .collect())
    }

    async fn delete_collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        let handle = match self.collection_handle(name) {
            Ok(handle) => handle,
            Err(StoreError::CollectionNotFound(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        let inner = Arc::clone(&self.inner);
        self.inner
            .write_threads
            .run(move || inner.delete_collection(&handle).map(Some))
            .await
    }

    async fn list_documents(
        &self,
        collection: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredDocument>, StoreError> {
        let handle = self.collection_handle(collection)?;
        let inner = Arc::clone(&self.inner);
        self.inner
            .read_threads
            .run(move || {
                inner
                    .readers
                    .with(|connection| list_page(connection, handle.id, after.as_deref(), limit))
            })
            .await
    }

    async fn get_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<Vec<StoredDocument>, StoreError> {
        let handle = self.collection_handle(collection)?;
        let inner = Arc::clone(&self.inner);
        self.inner
            .read_threads
            .run(move || {
                inner
                    .readers
                    .with(|connection| fetch_documents(connection, handle.id, &ids))
            })
            .await
    }
}

impl Inner {
    fn mismatch(&self, collection: &str, stored: &str) -> StoreError {
        StoreError::EmbedderMismatch {
            collection: collection.to_string(),
            stored: stored.to_string(),
            configured: self.embedder.id(),
        }
    }

    /// See [`EmbeddedStore::refuse_foreign`].
    fn reload_if_reindexed(&self, collection: &Arc<Collection>) -> Result<(), StoreError> {
        let connection = self.writer.lock();
        let stored: Option<(String, i64)> = connection
            .query_row(
                "SELECT embedder, version FROM collections WHERE id = ?1",
                [collection.id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((stored, version)) = stored else {
            return Err(StoreError::CollectionNotFound(collection.name.clone()));
        };
        if stored != self.embedder.id() {
            return Err(self.mismatch(&collection.name, &stored));
        }
        let index = load_index(&connection, collection.id, self.layout)?;
        let mut state = collection.state.write();
        self.documents.fetch_add(index.len(), Ordering::Relaxed);
        state.index = index;
        state.foreign = None;
        state.version = u64::try_from(version).unwrap_or(0);
        let job = state.index.graph_job();
        drop(state);
        if let Some(job) = job {
            build_graph(collection, job);
        }
        tracing::info!(collection = %collection.name, "reindexed collection loaded");
        Ok(())
    }

    fn write_documents(
        &self,
        name: &str,
        documents: Vec<PreparedDocument>,
    ) -> Result<CollectionInfo, StoreError> {
        let mut connection = self.writer.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read under the writer lock: only writers add collections, so this cannot go stale.
        let existing = self.collections.read().get(name).cloned();
        let embedder_id = self.embedder.id();
        let collection_id = match &existing {
            Some(collection) => {
                // Authoritative inside the write transaction, whatever another process did.
                let stored = claim_embedder(&transaction, collection.id, &embedder_id)?;
                if stored != embedder_id {
                    drop(transaction);
                    collection.mark_foreign(&stored, &self.documents);
                    return Err(self.mismatch(name, &stored));
                }
                collection.id
            }
            None => transaction.query_row(
                "INSERT INTO collections (name, version, created_at, embedder) \
                 VALUES (?1, 0, unixepoch(), ?2) RETURNING id",
                params![name, embedder_id],
                |row| row.get(0),
            )?,
        };

        let rowids = upsert_documents(&transaction, collection_id, &documents)?;
        let version = bump_version(&transaction, collection_id)?;

        let collection = existing.unwrap_or_else(|| {
            Arc::new(Collection::new(
                collection_id,
                name.to_string(),
                CollectionState {
                    index: VectorIndex::with_layout(self.layout),
                    ..CollectionState::default()
                },
            ))
        });
        // The graph's job is taken under the write's own lock: no second lock per write.
        let (info, graph_job) = {
            let mut state = collection.state.write();
            transaction.commit()?;
            // An emptied collection of another embedder took this one with this write.
            state.foreign = None;
            let before = state.index.len();
            for (document, rowid) in documents.into_iter().zip(rowids) {
                state.index.insert(
                    rowid,
                    document.doc_id,
                    document.metadata,
                    &document.embedding,
                );
            }
            state.version = version;
            self.documents
                .fetch_add(state.index.len().saturating_sub(before), Ordering::Relaxed);
            (Collection::info_of(name, &state), state.index.graph_job())
        };
        if let Some(job) = graph_job {
            build_graph(&collection, job);
        }
        self.collections
            .write()
            .entry(name.to_string())
            .or_insert(collection);
        Ok(info)
    }

    /// Deletes by id. The version changes only if a document was deleted: the version stands for
    /// the collection's content, and a delete of unknown ids leaves it, and every answer cached
    /// against it, valid.
    fn delete_documents(
        &self,
        collection: &Collection,
        ids: Vec<String>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut connection = self.writer.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = delete_by_id(&transaction, collection.id, ids)?;
        if deleted.is_empty() {
            return Ok(WriteOutcome {
                ids: Vec::new(),
                collection: collection.info(),
            });
        }
        let version = bump_version(&transaction, collection.id)?;

        let mut state = collection.state.write();
        transaction.commit()?;
        let removed = deleted
            .iter()
            .filter(|(_, rowid)| state.index.remove(*rowid))
            .count();
        self.documents.fetch_sub(removed, Ordering::Relaxed);
        if let Some(foreign) = &mut state.foreign {
            foreign.documents = foreign.documents.saturating_sub(deleted.len());
            if foreign.documents == 0 {
                // No vectors left to keep apart: the next write takes the store's embedder.
                state.foreign = None;
            }
        }
        state.version = version;
        Ok(WriteOutcome {
            ids: deleted.into_iter().map(|(id, _)| id).collect(),
            collection: Collection::info_of(&collection.name, &state),
        })
    }

    /// Deletes the collection's rows and forgets its index, in one transaction.
    fn delete_collection(&self, collection: &Collection) -> Result<CollectionInfo, StoreError> {
        let mut connection = self.writer.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute(
            "DELETE FROM documents WHERE collection_id = ?1",
            [collection.id],
        )?;
        transaction.execute("DELETE FROM collections WHERE id = ?1", [collection.id])?;
        let mut state = collection.state.write();
        transaction.commit()?;
        let info = Collection::info_of(&collection.name, &state);
        self.documents
            .fetch_sub(state.index.len(), Ordering::Relaxed);
        state.index = VectorIndex::with_layout(self.layout);
        // A writer that looks the collection up after this creates it anew.
        self.collections.write().remove(&collection.name);
        Ok(info)
    }

    /// Searches on the calling thread, which may be an async worker, when that is sure to be
    /// quick and to wait for nothing; returns `None` when it is not, leaving the search to a
    /// reader thread. Handing a search to a thread and back costs two thread wake-ups, as
    /// much as a whole search of a small collection.
    fn try_search_without_waiting(
        &self,
        collection: &Collection,
        search: &PreparedSearch,
    ) -> Option<Result<Vec<Hit>, StoreError>> {
        // The keyword side walks posting lists of the whole database, not only the collection.
        if self.documents.load(Ordering::Relaxed) > MAX_DOCUMENTS_TO_SEARCH_WITHOUT_WAITING {
            return None;
        }
        // A writer holds the lock across its commit's fsync.
        let state = collection.state.try_read()?;
        self.readers
            .try_with(|connection| self.search_in(connection, &state, search))
    }

    /// Searches on the blocking pool, waiting for a reader connection and the collection.
    fn search(
        &self,
        collection: &Collection,
        search: &PreparedSearch,
    ) -> Result<Vec<Hit>, StoreError> {
        self.readers.with(|connection| {
            let state = collection.state.read();
            self.search_in(connection, &state, search)
        })
    }

    /// Runs a search in one read transaction, while the caller holds the collection's state.
    fn search_in(
        &self,
        connection: &Connection,
        state: &CollectionState,
        search: &PreparedSearch,
    ) -> Result<Vec<Hit>, StoreError> {
        let PreparedSearch {
            query_embedding,
            keyword,
            by_vector,
            top_k,
            filter,
        } = search;
        let candidates = candidates_for(*top_k);
        // Outside a transaction every statement takes and releases SQLite's file locks (fcntl
        // calls) on its own; in one, they are taken once. Dropped on an error, it rolls back,
        // which ends a read as well as a commit does.
        let transaction = connection.unchecked_transaction()?;
        let by_vector: Vec<i64> = if *by_vector {
            state
                .index
                .search(query_embedding, candidates, filter)
                .into_iter()
                .map(|(rowid, _)| rowid)
                .collect()
        } else {
            Vec::new()
        };
        let by_keyword = match keyword {
            Some(keyword) => {
                let indexed = self.documents.load(Ordering::Relaxed);
                keyword_candidates(
                    &transaction,
                    keyword,
                    candidates,
                    &state.index,
                    filter,
                    indexed,
                )?
            }
            None => Vec::new(),
        };

        let mut fused: HashMap<i64, f64> =
            HashMap::with_capacity(by_vector.len() + by_keyword.len());
        for (vector, ranking) in [(true, &by_vector), (false, &by_keyword)] {
            for (rank, rowid) in ranking.iter().enumerate() {
                *fused.entry(*rowid).or_insert(0.0) += self.fusion.score(vector, rank);
            }
        }
        let mut ranked: Vec<(i64, f64, &str)> = fused
            .into_iter()
            .filter_map(|(rowid, score)| {
                let entry = state.index.get(rowid)?;
                Some((rowid, score, entry.doc_id.as_str()))
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.2.cmp(b.2)));
        ranked.truncate(*top_k);

        let hits = fetch_hits(&transaction, &ranked)?;
        transaction.commit()?;
        Ok(hits)
    }
}

/// A search with its query embedded and its keyword query built: everything but the I/O.
struct PreparedSearch {
    query_embedding: Embedding,
    keyword: Option<KeywordQuery>,
    by_vector: bool,
    top_k: usize,
    filter: Filter,
}

/// Which rankings a search fuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ranking {
    /// Vectors and BM25, fused by reciprocal rank: what every query does.
    Hybrid,
    /// BM25 alone.
    Keyword,
    /// Vectors alone.
    Vector,
}
