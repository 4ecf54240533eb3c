//! The embedded store: SQLite is the source of truth, vectors live in an in-memory index rebuilt
//! at start, FTS5 gives BM25, and the two rankings are fused by reciprocal rank.
//!
//! Concurrency: one writer connection behind a mutex serialises every write, and a small pool
//! of read-only connections serves searches. A writer takes the collection's state lock for
//! writing just before `COMMIT` and releases it after updating the in-memory index, while a
//! search holds it for reading from its first to its last SQL statement; so a search always
//! sees SQLite and the in-memory index at the same version.

use std::cmp;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Condvar, Mutex, RwLock};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, ToSql, Transaction, TransactionBehavior, params,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::index::VectorIndex;
use super::{
    CollectionInfo, DocumentStore, Filter, Hit, NewDocument, SearchRequest, StoreError,
    WriteOutcome, validate_collection_name,
};
use crate::embed::{EmbedError, Embedder, Embedding};
use crate::text;

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "deeprecall.db";

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Texts per embedder call, which bounds the size of a request to a remote embedder.
const EMBED_BATCH: usize = 256;
/// The usual constant of reciprocal rank fusion (Cormack et al., 2009).
const RRF_K: f64 = 60.0;
const MIN_CANDIDATES: usize = 30;
const CANDIDATES_PER_HIT: usize = 3;
/// Bounds the cost of a keyword query built from a very long search text.
const MAX_MATCH_TERMS: usize = 64;
/// Share of the indexed documents above which a term is too common to rank by.
const COMMON_TERM_SHARE: f64 = 0.10;
/// Below this many indexed documents every term is cheap enough to rank by.
const MIN_DOCUMENTS_TO_PRUNE: usize = 2_000;
const EMBEDDER_ID_KEY: &str = "embedder_id";
/// Largest database, in documents, searched on the calling async worker rather than the
/// blocking pool: a search of 1,000 documents measured about 0.1 ms at p50, the usual bound on
/// the time between two awaits, and the cost grows with the database.
const MAX_DOCUMENTS_TO_SEARCH_WITHOUT_WAITING: usize = 1_000;
/// Documents per write statement: with four parameters each, plus one shared, a statement stays
/// well under SQLite's default limit of 32,766 parameters.
const ROWS_PER_WRITE_STATEMENT: usize = 4_000;

/// Schema migrations; entry `n` moves `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE collections (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    version    INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE documents (
    rowid         INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    doc_id        TEXT NOT NULL,
    content       TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    embedding     BLOB NOT NULL,
    -- A token naming the collection, indexed by FTS5 so that a keyword search is restricted to
    -- one collection inside the full-text index instead of by a lookup per matching row.
    scope         TEXT GENERATED ALWAYS AS ('c' || collection_id) VIRTUAL,
    UNIQUE (collection_id, doc_id)
);

CREATE VIRTUAL TABLE documents_fts USING fts5 (
    content,
    scope,
    content = 'documents',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

-- The scope column must not influence BM25.
INSERT INTO documents_fts (documents_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0)');

CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts (rowid, content, scope)
    VALUES (new.rowid, new.content, 'c' || new.collection_id);
END;

CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, content, scope)
    VALUES ('delete', old.rowid, old.content, 'c' || old.collection_id);
END;

-- Only a change of the indexed columns touches the index: re-embedding rewrites every row.
CREATE TRIGGER documents_fts_update AFTER UPDATE OF content, collection_id ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, content, scope)
    VALUES ('delete', old.rowid, old.content, 'c' || old.collection_id);
    INSERT INTO documents_fts (rowid, content, scope)
    VALUES (new.rowid, new.content, 'c' || new.collection_id);
END;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#];

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// Directory holding `deeprecall.db` and its WAL files; created if missing.
    pub data_dir: PathBuf,
    /// Number of read-only connections serving searches.
    pub read_connections: usize,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            read_connections: 4,
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
    writer: Arc<Mutex<Connection>>,
    readers: ReaderPool,
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
}

impl Collection {
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
        CollectionInfo {
            name: name.to_string(),
            document_count: state.index.len() as u64,
            version: state.version,
        }
    }
}

/// A document ready to be written: embedded, metadata serialised.
struct PendingDocument {
    doc_id: String,
    content: String,
    metadata: Map<String, Value>,
    metadata_json: String,
    embedding: Embedding,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.data_dir`, migrates the schema, re-embeds every
    /// document if the embedder changed since the last run, and loads the vector indexes.
    pub async fn open(
        config: EmbeddedStoreConfig,
        embedder: Arc<dyn Embedder>,
    ) -> Result<EmbeddedStore, StoreError> {
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

        ensure_current_embeddings(&writer, embedder.as_ref()).await?;

        let collections =
            with_connection(&writer, |connection| load_collections(connection)).await?;
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
                embedder,
                writer,
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
    async fn add_documents(
        &self,
        collection: &str,
        documents: Vec<NewDocument>,
    ) -> Result<WriteOutcome, StoreError> {
        validate_collection_name(collection)?;
        // An empty id is what proto3 sends for "no id"; treating it as one would store a
        // document nobody can address.
        let ids: Vec<String> = documents
            .iter()
            .map(|document| match &document.id {
                Some(id) if !id.is_empty() => id.clone(),
                _ => Uuid::new_v4().to_string(),
            })
            .collect();
        // Within one call the last document with an id wins, so only the winners are written.
        let mut winner: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
        for (position, id) in ids.iter().enumerate() {
            winner.insert(id, position);
        }
        let mut pending = Vec::with_capacity(winner.len());
        for (position, document) in documents.into_iter().enumerate() {
            let id = &ids[position];
            if winner.get(id.as_str()) != Some(&position) {
                continue;
            }
            let metadata_json = serde_json::to_string(&document.metadata)
                .map_err(|err| StoreError::Corrupt(format!("unserialisable metadata: {err}")))?;
            pending.push(PendingDocument {
                doc_id: id.clone(),
                content: document.content,
                metadata: document.metadata,
                metadata_json,
                embedding: Embedding::default(),
            });
        }
        drop(winner);

        let contents: Vec<String> = pending
            .iter()
            .map(|document| document.content.clone())
            .collect();
        let embeddings = embed_all(self.inner.embedder.as_ref(), &contents).await?;
        drop(contents);
        for (document, embedding) in pending.iter_mut().zip(embeddings) {
            document.embedding = embedding;
        }

        let inner = Arc::clone(&self.inner);
        let name = collection.to_string();
        let collection = blocking(move || inner.write_documents(&name, pending)).await?;
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
        blocking(move || inner.delete_documents(&handle, ids)).await
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, StoreError> {
        let SearchRequest {
            collection,
            query,
            top_k,
            filter,
        } = request;
        let handle = self.collection_handle(&collection)?;
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
        let query_embedding = embed_all(self.inner.embedder.as_ref(), &[query])
            .await?
            .pop()
            .unwrap_or_default();
        let search = PreparedSearch {
            query_embedding,
            keyword,
            top_k,
            filter,
        };
        if let Some(hits) = self.inner.try_search_without_waiting(&handle, &search) {
            return hits;
        }
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.search(&handle, &search)).await
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
}

impl Inner {
    fn write_documents(
        &self,
        name: &str,
        documents: Vec<PendingDocument>,
    ) -> Result<CollectionInfo, StoreError> {
        let mut connection = self.writer.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read under the writer lock: only writers add collections, so this cannot go stale.
        let existing = self.collections.read().get(name).cloned();
        let collection_id = match &existing {
            Some(collection) => collection.id,
            None => transaction.query_row(
                "INSERT INTO collections (name, version, created_at) \
                 VALUES (?1, 0, unixepoch()) RETURNING id",
                [name],
                |row| row.get(0),
            )?,
        };

        let rowids = upsert_documents(&transaction, collection_id, &documents)?;
        let version = bump_version(&transaction, collection_id)?;

        let collection = existing.unwrap_or_else(|| {
            Arc::new(Collection::new(
                collection_id,
                name.to_string(),
                CollectionState::default(),
            ))
        });
        let info = {
            let mut state = collection.state.write();
            transaction.commit()?;
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
            Collection::info_of(name, &state)
        };
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
        state.version = version;
        Ok(WriteOutcome {
            ids: deleted.into_iter().map(|(id, _)| id).collect(),
            collection: Collection::info_of(&collection.name, &state),
        })
    }

    /// Searches on the calling thread, which may be an async worker, when that is sure to be
    /// quick and to wait for nothing; returns `None` when it is not, leaving the search to the
    /// blocking pool. Handing a search to the pool and back costs two thread wake-ups, as
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
            top_k,
            filter,
        } = search;
        let candidates = top_k.saturating_mul(CANDIDATES_PER_HIT).max(MIN_CANDIDATES);
        // Outside a transaction every statement takes and releases SQLite's file locks (fcntl
        // calls) on its own; in one, they are taken once. Dropped on an error, it rolls back,
        // which ends a read as well as a commit does.
        let transaction = connection.unchecked_transaction()?;
        let by_vector: Vec<i64> = state
            .index
            .search(query_embedding, candidates, filter)
            .into_iter()
            .map(|(rowid, _)| rowid)
            .collect();
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
        for ranking in [&by_vector, &by_keyword] {
            for (rank, rowid) in ranking.iter().enumerate() {
                *fused.entry(*rowid).or_insert(0.0) += 1.0 / (RRF_K + rank as f64 + 1.0);
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
    top_k: usize,
    filter: Filter,
}

/// Writes the documents and returns their rowids, in the documents' order.
///
/// FTS5 flushes its pending terms into a new index segment whenever a statement opens a
/// savepoint, which every write to `documents` does because its triggers write the full-text
/// index. One statement per document would leave one segment per document, and a keyword
/// search looks each of its terms up in every segment: for a small collection, those lookups
/// are most of the cost of a search. One statement per chunk leaves one segment per chunk.
fn upsert_documents(
    transaction: &Transaction<'_>,
    collection_id: i64,
    documents: &[PendingDocument],
) -> Result<Vec<i64>, StoreError> {
    let mut rowids = Vec::with_capacity(documents.len());
    for chunk in documents.chunks(ROWS_PER_WRITE_STATEMENT) {
        let embeddings: Vec<Vec<u8>> = chunk
            .iter()
            .map(|document| encode_embedding(&document.embedding))
            .collect();
        let mut parameters: Vec<&dyn ToSql> = Vec::with_capacity(1 + 4 * chunk.len());
        parameters.push(&collection_id);
        for (document, embedding) in chunk.iter().zip(&embeddings) {
            parameters.push(&document.doc_id);
            parameters.push(&document.content);
            parameters.push(&document.metadata_json);
            parameters.push(embedding);
        }
        let mut sql = String::from(
            "INSERT INTO documents (collection_id, doc_id, content, metadata, embedding) VALUES ",
        );
        let rows: Vec<String> = (0..chunk.len())
            .map(|row| format!("(?1, {})", numbered_parameters(2 + 4 * row, 4)))
            .collect();
        sql.push_str(&rows.join(", "));
        sql.push_str(
            " ON CONFLICT (collection_id, doc_id) DO UPDATE SET \
             content = excluded.content, metadata = excluded.metadata, \
             embedding = excluded.embedding \
             RETURNING rowid, doc_id",
        );
        // Not cached: the text depends on the chunk's length, and caching it would evict the
        // statements that are reused.
        let mut statement = transaction.prepare(&sql)?;
        let mut written: HashMap<String, i64> = HashMap::with_capacity(chunk.len());
        let mut rows = statement.query(parameters.as_slice())?;
        while let Some(row) = rows.next()? {
            written.insert(row.get(1)?, row.get(0)?);
        }
        for document in chunk {
            let rowid = written.get(&document.doc_id).ok_or_else(|| {
                StoreError::Corrupt(format!("no row written for document {:?}", document.doc_id))
            })?;
            rowids.push(*rowid);
        }
    }
    Ok(rowids)
}

/// Deletes the collection's documents with the given ids, a chunk of ids per statement for the
/// reason given at [`upsert_documents`]. Returns the ids that existed with their rowids, in the
/// order of `ids`, each once.
fn delete_by_id(
    transaction: &Transaction<'_>,
    collection_id: i64,
    ids: Vec<String>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut deleted_rowids: HashMap<String, i64> = HashMap::new();
    for chunk in ids.chunks(ROWS_PER_WRITE_STATEMENT) {
        let mut parameters: Vec<&dyn ToSql> = Vec::with_capacity(1 + chunk.len());
        parameters.push(&collection_id);
        parameters.extend(chunk.iter().map(|id| id as &dyn ToSql));
        let sql = format!(
            "DELETE FROM documents WHERE collection_id = ?1 AND doc_id IN ({}) \
             RETURNING rowid, doc_id",
            numbered_parameters(2, chunk.len())
        );
        let mut statement = transaction.prepare(&sql)?;
        let mut rows = statement.query(parameters.as_slice())?;
        while let Some(row) = rows.next()? {
            deleted_rowids.insert(row.get(1)?, row.get(0)?);
        }
    }
    // Removing on first sight drops repeated ids.
    Ok(ids
        .into_iter()
        .filter_map(|id| {
            let rowid = deleted_rowids.remove(&id)?;
            Some((id, rowid))
        })
        .collect())
}

/// Returns `count` comma-separated numbered parameters from `?first` on: `?2, ?3, ?4`.
fn numbered_parameters(first: usize, count: usize) -> String {
    let parameters: Vec<String> = (first..first + count)
        .map(|number| format!("?{number}"))
        .collect();
    parameters.join(", ")
}

/// Returns the rowids of the best keyword matches in the collection that pass the filter, best
/// first.
///
/// FTS5 would rank them itself under `ORDER BY rank`, but it then prepares a statement for its
/// sorter on every query, which costs more than the ranking does. Ranking here gives the same
/// order: by BM25 with the weights of the table's `rank` setting, ties by rowid, which is the
/// order in which FTS5 returns matches to its (stable) sorter.
fn keyword_candidates(
    connection: &Connection,
    keyword: &KeywordQuery,
    limit: usize,
    index: &VectorIndex,
    filter: &Filter,
    indexed_documents: usize,
) -> Result<Vec<i64>, StoreError> {
    let terms = rankable_terms(connection, keyword, indexed_documents)?;
    let expression = keyword.expression(&terms);
    let mut statement = connection.prepare_cached(
        "SELECT rowid, bm25(documents_fts, 1.0, 0.0) FROM documents_fts \
         WHERE documents_fts MATCH ?1",
    )?;
    let mut matches = Vec::new();
    let mut rows = statement.query([&expression])?;
    while let Some(row) = rows.next()? {
        matches.push(KeywordMatch {
            rowid: row.get(0)?,
            // SQLite turns a NaN into NULL, which sorts first.
            bm25: row.get::<_, Option<f64>>(1)?.unwrap_or(f64::NEG_INFINITY),
        });
    }
    // Heapifying is linear and each pop logarithmic, so only as much of the order as the
    // filter needs is paid for. Rows are checked in rank order until enough pass, so a
    // document in the collection that matches the filter is never lost behind better-ranked
    // ones that do not.
    let mut best_first = BinaryHeap::from(matches);
    let mut rowids = Vec::with_capacity(limit.min(best_first.len()));
    while rowids.len() < limit
        && let Some(candidate) = best_first.pop()
    {
        if index.matches(candidate.rowid, filter) {
            rowids.push(candidate.rowid);
        }
    }
    Ok(rowids)
}

/// A keyword match, ordered so that the greatest is the best: the lowest BM25 (FTS5 negates
/// the score so that ascending order is best first), then the lowest rowid.
#[derive(Debug, Clone, Copy)]
struct KeywordMatch {
    rowid: i64,
    bm25: f64,
}

impl Ord for KeywordMatch {
    fn cmp(&self, other: &Self) -> cmp::Ordering {
        // `partial_cmp` compares as SQLite does (-0.0 equals 0.0); scores are never NaN.
        other
            .bm25
            .partial_cmp(&self.bm25)
            .unwrap_or(cmp::Ordering::Equal)
            .then_with(|| other.rowid.cmp(&self.rowid))
    }
}

impl PartialOrd for KeywordMatch {
    fn partial_cmp(&self, other: &Self) -> Option<cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for KeywordMatch {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == cmp::Ordering::Equal
    }
}

impl Eq for KeywordMatch {}

/// Loads content and metadata of the ranked rowids, keeping the ranking's order. Run inside a
/// transaction, a lookup by rowid per hit costs less than one query for all of them, which
/// needs its rowids serialised to JSON and `json_each` to read them back.
fn fetch_hits(
    connection: &Connection,
    ranked: &[(i64, f64, &str)],
) -> Result<Vec<Hit>, StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT doc_id, content, metadata FROM documents WHERE rowid = ?1")?;
    let mut hits = Vec::with_capacity(ranked.len());
    for (rowid, score, _) in ranked {
        let mut rows = statement.query([rowid])?;
        // Cannot be missing while the caller holds the collection's state; skipped if it is.
        let Some(row) = rows.next()? else {
            continue;
        };
        let metadata = parse_metadata(
            *rowid,
            row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?,
        )?;
        hits.push(Hit {
            id: row.get(0)?,
            content: row.get(1)?,
            metadata,
            score: *score,
        });
    }
    Ok(hits)
}

/// An FTS5 query for one search.
#[derive(Debug, PartialEq)]
struct KeywordQuery {
    collection_id: i64,
    /// The query's content terms, at most [`MAX_MATCH_TERMS`].
    terms: Vec<String>,
    /// True when the expression itself restricts matches to the collection.
    scoped: bool,
}

impl KeywordQuery {
    /// Builds the FTS5 expression matching any of `terms`, each quoted so that nothing in the
    /// query is read as FTS5 syntax.
    fn expression(&self, terms: &[String]) -> String {
        let alternatives: Vec<String> = terms
            .iter()
            .map(|term| format!("\"{}\"", term.replace('"', "\"\"")))
            .collect();
        let alternatives = alternatives.join(" OR ");
        if self.scoped {
            format!(
                "scope : \"c{}\" AND content : ({alternatives})",
                self.collection_id
            )
        } else {
            format!("content : ({alternatives})")
        }
    }
}

/// Takes the query's content terms. Returns `None` when the query has none, which skips the
/// keyword search.
fn keyword_query(collection_id: i64, query: &str, scoped: bool) -> Option<KeywordQuery> {
    let mut terms = text::content_terms(query);
    if terms.is_empty() {
        return None;
    }
    terms.truncate(MAX_MATCH_TERMS);
    Some(KeywordQuery {
        collection_id,
        terms,
        scoped,
    })
}

/// Returns the terms worth ranking by. FTS5 computes BM25 for every matching row before it can
/// sort, so a term found in a large share of the documents makes a query cost as much as the
/// collection is large, while its inverse document frequency, and so its weight in the
/// ranking, is near zero. Such terms are dropped when a rarer one is present; when all are
/// common, only the rarest is kept. Frequencies come from FTS5 itself (so they follow its
/// tokenizer), counted only up to the threshold.
fn rankable_terms(
    connection: &Connection,
    keyword: &KeywordQuery,
    indexed_documents: usize,
) -> Result<Vec<String>, StoreError> {
    if indexed_documents < MIN_DOCUMENTS_TO_PRUNE || keyword.terms.len() < 2 {
        return Ok(keyword.terms.clone());
    }
    let threshold = (indexed_documents as f64 * COMMON_TERM_SHARE) as i64;
    let mut count = connection.prepare_cached(
        "SELECT count(*) FROM \
         (SELECT 1 FROM documents_fts WHERE documents_fts MATCH ?1 LIMIT ?2)",
    )?;
    let mut counted: Vec<(i64, &String)> = Vec::with_capacity(keyword.terms.len());
    for term in &keyword.terms {
        let expression = format!("content : \"{}\"", term.replace('"', "\"\""));
        let documents: i64 =
            count.query_row(params![expression, threshold + 1], |row| row.get(0))?;
        counted.push((documents, term));
    }
    let rare: Vec<String> = counted
        .iter()
        .filter(|(documents, _)| *documents <= threshold)
        .map(|(_, term)| (*term).clone())
        .collect();
    if !rare.is_empty() {
        return Ok(rare);
    }
    Ok(counted
        .iter()
        .min_by_key(|(documents, _)| *documents)
        .map(|(_, term)| vec![(*term).clone()])
        .unwrap_or_default())
}

fn bump_version(transaction: &Transaction<'_>, collection_id: i64) -> Result<u64, StoreError> {
    let version: i64 = transaction.query_row(
        "UPDATE collections SET version = version + 1 WHERE id = ?1 RETURNING version",
        [collection_id],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(version).unwrap_or(0))
}

/// Embeds texts in batches, checking that the embedder kept its contract.
async fn embed_all(
    embedder: &dyn Embedder,
    texts: &[String],
) -> Result<Vec<Embedding>, StoreError> {
    let mut embeddings = Vec::with_capacity(texts.len());
    for batch in texts.chunks(EMBED_BATCH) {
        let batch_embeddings = embedder.embed(batch).await?;
        if batch_embeddings.len() != batch.len() {
            return Err(EmbedError::BadResponse(format!(
                "{} embeddings for {} texts",
                batch_embeddings.len(),
                batch.len()
            ))
            .into());
        }
        embeddings.extend(batch_embeddings.into_iter().map(sanitize));
    }
    Ok(embeddings)
}

/// Puts an embedding in the form the index and the stored format expect: matching lengths,
/// ascending unique indices, finite non-zero values. A non-finite value would turn every
/// score it touches into NaN and hide the document from every search.
fn sanitize(embedding: Embedding) -> Embedding {
    let Embedding { indices, values } = embedding;
    let well_formed = indices.len() == values.len()
        && indices.windows(2).all(|pair| pair[0] < pair[1])
        && values
            .iter()
            .all(|value| value.is_finite() && *value != 0.0);
    if well_formed {
        return Embedding { indices, values };
    }
    let mut pairs: Vec<(u32, f32)> = indices
        .into_iter()
        .zip(values)
        .filter(|(_, value)| value.is_finite())
        .collect();
    pairs.sort_by_key(|(index, _)| *index);
    let mut clean = Embedding::default();
    for (index, value) in pairs {
        match (clean.indices.last(), clean.values.last_mut()) {
            (Some(last), Some(sum)) if *last == index => *sum += value,
            _ => {
                clean.indices.push(index);
                clean.values.push(value);
            }
        }
    }
    let (indices, values) = clean
        .indices
        .into_iter()
        .zip(clean.values)
        .filter(|(_, value)| *value != 0.0)
        .unzip();
    Embedding { indices, values }
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| StoreError::Task(err.to_string()))?
}

async fn with_connection<T, F>(
    connection: &Arc<Mutex<Connection>>,
    work: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    let connection = Arc::clone(connection);
    blocking(move || work(&mut connection.lock())).await
}

/// Reports a failure to open the database. `StoreError` has no I/O variant, and the data
/// directory is part of opening the database, so the error says `SQLITE_CANTOPEN`.
fn open_failure(message: String) -> StoreError {
    StoreError::Database(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(message),
    ))
}

fn configure_writer(connection: &Connection) -> Result<(), StoreError> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable, but readers and the writer block each other.
        tracing::warn!(journal_mode = %mode, "sqlite refused WAL mode");
    }
    // FULL syncs the WAL on every commit: an acknowledged write survives power loss.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build supports ({known})"
        )));
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", version as i64 + 1)?;
        tracing::info!(version = version + 1, "database schema migrated");
    }
    transaction.commit()?;
    Ok(())
}

/// Re-embeds every document if the embedder differs from the one that made the stored vectors.
async fn ensure_current_embeddings(
    writer: &Arc<Mutex<Connection>>,
    embedder: &dyn Embedder,
) -> Result<(), StoreError> {
    let current = embedder.id();
    let (stored, has_documents) = with_connection(writer, |connection| {
        let stored: Option<String> = connection
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [EMBEDDER_ID_KEY],
                |row| row.get(0),
            )
            .optional()?;
        let has_documents: bool =
            connection.query_row("SELECT EXISTS (SELECT 1 FROM documents)", [], |row| {
                row.get(0)
            })?;
        Ok((stored, has_documents))
    })
    .await?;
    if stored.as_deref() == Some(current.as_str()) {
        return Ok(());
    }
    if !has_documents {
        return with_connection(writer, move |connection| {
            write_embedder_id(connection, &current)
        })
        .await;
    }

    tracing::info!(
        previous = stored.as_deref().unwrap_or("unknown"),
        current = %current,
        "embedder changed: re-embedding every document"
    );
    with_connection(writer, |connection| {
        Ok(connection.execute_batch("BEGIN IMMEDIATE")?)
    })
    .await?;
    match reembed_in_transaction(writer, embedder, current).await {
        Ok(count) => {
            with_connection(writer, |connection| Ok(connection.execute_batch("COMMIT")?)).await?;
            tracing::info!(documents = count, "re-embedding done");
            Ok(())
        }
        Err(err) => {
            let rollback = with_connection(writer, |connection| {
                Ok(connection.execute_batch("ROLLBACK")?)
            })
            .await;
            if let Err(rollback_err) = rollback {
                tracing::warn!(error = %rollback_err, "rollback of re-embedding failed");
            }
            Err(err)
        }
    }
}

/// Rewrites every stored vector, a batch at a time, inside the transaction the caller opened;
/// returns the number of documents.
async fn reembed_in_transaction(
    writer: &Arc<Mutex<Connection>>,
    embedder: &dyn Embedder,
    embedder_id: String,
) -> Result<u64, StoreError> {
    let mut after = i64::MIN;
    let mut count = 0u64;
    loop {
        let batch: Vec<(i64, String)> = with_connection(writer, move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT rowid, content FROM documents WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )?;
            let rows = statement
                .query_map(params![after, EMBED_BATCH as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await?;
        let Some((last, _)) = batch.last() else {
            break;
        };
        after = *last;
        let (rowids, contents): (Vec<i64>, Vec<String>) = batch.into_iter().unzip();
        let embeddings = embed_all(embedder, &contents).await?;
        count += rowids.len() as u64;
        with_connection(writer, move |connection| {
            let mut statement = connection
                .prepare_cached("UPDATE documents SET embedding = ?1 WHERE rowid = ?2")?;
            for (rowid, embedding) in rowids.into_iter().zip(embeddings) {
                statement.execute(params![encode_embedding(&embedding), rowid])?;
            }
            Ok(())
        })
        .await?;
    }
    with_connection(writer, move |connection| {
        write_embedder_id(connection, &embedder_id)
    })
    .await?;
    Ok(count)
}

fn write_embedder_id(connection: &Connection, embedder_id: &str) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![EMBEDDER_ID_KEY, embedder_id],
    )?;
    Ok(())
}

/// Builds every collection's in-memory state, streaming the stored vectors and metadata.
fn load_collections(
    connection: &Connection,
) -> Result<BTreeMap<String, Arc<Collection>>, StoreError> {
    let mut states: HashMap<i64, (String, CollectionState)> = HashMap::new();
    {
        let mut statement = connection.prepare("SELECT id, name, version FROM collections")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let version: i64 = row.get(2)?;
            let state = CollectionState {
                version: u64::try_from(version).unwrap_or(0),
                index: VectorIndex::default(),
            };
            states.insert(row.get(0)?, (row.get(1)?, state));
        }
    }
    {
        let mut statement = connection.prepare(
            "SELECT rowid, collection_id, doc_id, metadata, embedding FROM documents ORDER BY rowid",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            let collection_id: i64 = row.get(1)?;
            let Some((_, state)) = states.get_mut(&collection_id) else {
                return Err(StoreError::Corrupt(format!(
                    "document {rowid} belongs to missing collection {collection_id}"
                )));
            };
            let metadata = parse_metadata(
                rowid,
                row.get_ref(3)?.as_str().map_err(rusqlite::Error::from)?,
            )?;
            let embedding =
                decode_embedding(row.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?)
                    .map_err(|reason| {
                        StoreError::Corrupt(format!("vector of document {rowid}: {reason}"))
                    })?;
            state.index.insert(rowid, row.get(2)?, metadata, &embedding);
        }
    }
    Ok(states
        .into_iter()
        .map(|(id, (name, state))| {
            let collection = Arc::new(Collection::new(id, name.clone(), state));
            (name, collection)
        })
        .collect())
}

fn parse_metadata(rowid: i64, json: &str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("metadata of document {rowid}: {err}")))
}

/// Encodes a sparse vector: a little-endian `u32` count, then `(u32 index, f32 value)` pairs.
fn encode_embedding(embedding: &Embedding) -> Vec<u8> {
    let count = embedding.indices.len().min(embedding.values.len());
    let mut bytes = Vec::with_capacity(4 + 8 * count);
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
    for (index, value) in embedding.indices.iter().zip(&embedding.values) {
        bytes.extend_from_slice(&index.to_le_bytes());
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

fn decode_embedding(bytes: &[u8]) -> Result<Embedding, String> {
    let Some((count, pairs)) = bytes.split_first_chunk::<4>() else {
        return Err(format!("{} bytes is too short", bytes.len()));
    };
    let count = u32::from_le_bytes(*count) as usize;
    if Some(pairs.len()) != count.checked_mul(8) {
        return Err(format!("{} bytes for {count} values", bytes.len()));
    }
    let mut embedding = Embedding {
        indices: Vec::with_capacity(count),
        values: Vec::with_capacity(count),
    };
    for pair in pairs.chunks_exact(8) {
        if let (Some(index), Some(value)) = (pair.first_chunk::<4>(), pair.last_chunk::<4>()) {
            embedding.indices.push(u32::from_le_bytes(*index));
            embedding.values.push(f32::from_le_bytes(*value));
        }
    }
    Ok(embedding)
}

/// Read-only connections handed out one search at a time.
struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

impl ReaderPool {
    fn new(connections: Vec<Connection>) -> Self {
        Self {
            idle: Mutex::new(connections),
            returned: Condvar::new(),
        }
    }

    /// Runs `work` with a connection, waiting for one if all are busy.
    fn with<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = {
            let mut idle = self.idle.lock();
            loop {
                if let Some(connection) = idle.pop() {
                    break connection;
                }
                self.returned.wait(&mut idle);
            }
        };
        self.lease(connection, work)
    }

    /// Runs `work` with a connection if one is idle; returns `None` rather than wait.
    fn try_with<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let connection = self.idle.lock().pop()?;
        Some(self.lease(connection, work))
    }

    fn lease<T>(
        &self,
        connection: Connection,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Returns the connection even if `work` panics, so the pool never shrinks.
        let lease = Lease {
            pool: self,
            connection: Some(connection),
        };
        match &lease.connection {
            Some(connection) => work(connection),
            None => Err(StoreError::Task("reader connection lost".to_string())),
        }
    }
}

struct Lease<'a> {
    pool: &'a ReaderPool,
    connection: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.idle.lock().push(connection);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tempfile::TempDir;

    use super::*;
    use crate::embed::HashingEmbedder;

    fn config(dir: &TempDir) -> EmbeddedStoreConfig {
        EmbeddedStoreConfig {
            data_dir: dir.path().join("data"),
            read_connections: 2,
        }
    }

    async fn open_with(dir: &TempDir, embedder: Arc<dyn Embedder>) -> EmbeddedStore {
        EmbeddedStore::open(config(dir), embedder).await.unwrap()
    }

    async fn open(dir: &TempDir) -> EmbeddedStore {
        open_with(dir, Arc::new(HashingEmbedder::default())).await
    }

    fn metadata(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn doc(id: &str, content: &str) -> NewDocument {
        NewDocument {
            id: Some(id.to_string()),
            content: content.to_string(),
            metadata: Map::new(),
        }
    }

    fn doc_with(id: &str, content: &str, meta: Value) -> NewDocument {
        NewDocument {
            metadata: metadata(meta),
            ..doc(id, content)
        }
    }

    fn request(collection: &str, query: &str, top_k: usize) -> SearchRequest {
        SearchRequest {
            collection: collection.to_string(),
            query: query.to_string(),
            top_k,
            filter: Filter::default(),
        }
    }

    async fn search_ids(store: &EmbeddedStore, request: SearchRequest) -> Vec<String> {
        store
            .search(request)
            .await
            .unwrap()
            .into_iter()
            .map(|hit| hit.id)
            .collect()
    }

    fn corpus() -> Vec<NewDocument> {
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
    async fn terms_the_fts_tokenizer_drops_do_not_break_search() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.add_documents("docs", corpus()).await.unwrap();
        for query in ["\u{345}", "\u{345} toulouse", "\u{2167}", "ǅ"] {
            store.search(request("docs", query, 3)).await.unwrap();
        }
    }

    /// Embeds by lookup, so a test decides which documents the vector search finds.
    #[derive(Debug)]
    struct ScriptedEmbedder(HashMap<String, Embedding>);

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

    fn axis(index: u32) -> Embedding {
        Embedding {
            indices: vec![index],
            values: vec![1.0],
        }
    }

    #[tokio::test]
    async fn open_creates_the_data_dir_and_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        assert!(store.path().ends_with("data/deeprecall.db"));
        assert!(store.path().exists());
        assert!(store.collections().await.unwrap().is_empty());
        assert_eq!(store.collection("default").await.unwrap(), None);
    }

    #[tokio::test]
    async fn added_documents_are_found_by_keyword_and_by_similarity() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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
        let hits = search_ids(&store, request("docs", "onoin suop recipes", 1)).await;
        assert_eq!(hits, vec!["soup"]);
    }

    #[tokio::test]
    async fn missing_ids_are_generated() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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
        let hits = search_ids(&store, request("docs", "second", 1)).await;
        assert_eq!(hits, vec![outcome.ids[1].clone()]);
    }

    #[tokio::test]
    async fn re_adding_an_id_replaces_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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
        let hits = search_ids(&store, request("docs", "onion butter simmer", 3)).await;
        assert!(!hits.contains(&"soup".to_string()), "{hits:?}");

        assert_fts_consistent(&store);

        let mut old_filter = request("docs", "soup", 3);
        old_filter.filter = Filter::from_json(&metadata(json!({"kind": "recipe"}))).unwrap();
        assert!(store.search(old_filter).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn duplicate_ids_in_one_call_keep_the_last_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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

    #[tokio::test]
    async fn delete_removes_documents_and_reports_the_ids_that_existed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.add_documents("docs", corpus()).await.unwrap();
        let outcome = store
            .delete_documents("docs", vec!["soup".into(), "nope".into(), "soup".into()])
            .await
            .unwrap();
        assert_eq!(outcome.ids, vec!["soup"]);
        assert_eq!(outcome.collection.document_count, 2);
        let hits = search_ids(&store, request("docs", "onion soup recipe", 5)).await;
        assert!(!hits.contains(&"soup".to_string()), "{hits:?}");

        assert_fts_consistent(&store);

        // The id is free again.
        store
            .add_documents("docs", vec![doc("soup", "Miso soup")])
            .await
            .unwrap();
        let hits = search_ids(&store, request("docs", "miso", 1)).await;
        assert_eq!(hits, vec!["soup"]);
    }

    #[tokio::test]
    async fn version_changes_on_every_write_that_changes_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let version = |outcome: WriteOutcome| outcome.collection.version;
        assert_eq!(
            version(store.add_documents("docs", corpus()).await.unwrap()),
            1
        );
        assert_eq!(
            version(
                store
                    .add_documents("docs", vec![doc("x", "x")])
                    .await
                    .unwrap()
            ),
            2
        );
        assert_eq!(
            version(
                store
                    .delete_documents("docs", vec!["x".into()])
                    .await
                    .unwrap()
            ),
            3
        );
        // Nothing deleted, nothing changed: caches keyed on the version stay valid.
        assert_eq!(
            version(
                store
                    .delete_documents("docs", vec!["x".into()])
                    .await
                    .unwrap()
            ),
            3
        );
        assert_eq!(
            version(store.delete_documents("docs", vec![]).await.unwrap()),
            3
        );
        let other = store.add_documents("other", corpus()).await.unwrap();
        assert_eq!(other.collection.version, 1);
        assert_eq!(store.collection("docs").await.unwrap().unwrap().version, 3);
    }

    #[tokio::test]
    async fn unknown_collections_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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

    #[tokio::test]
    async fn invalid_collection_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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

    #[tokio::test]
    async fn collections_are_listed_by_name_and_searched_separately() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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
            search_ids(&store, request("zeta", "shared words", 5)).await,
            vec!["z"]
        );
        assert_eq!(
            search_ids(&store, request("alpha", "shared words", 5)).await,
            vec!["a1"]
        );
    }

    #[tokio::test]
    async fn filter_applies_before_the_top_k_cut() {
        // With no vectors at all, only the keyword side can find documents.
        for embedder in [
            Arc::new(HashingEmbedder::default()) as Arc<dyn Embedder>,
            Arc::new(ScriptedEmbedder(HashMap::new())),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_with(&dir, embedder).await;
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

            let unfiltered = search_ids(&store, request("docs", "zephyr", 3)).await;
            assert_eq!(unfiltered.len(), 3);
            assert!(!unfiltered.contains(&"rare".to_string()));

            let mut filtered = request("docs", "zephyr", 3);
            filtered.filter = Filter::from_json(&metadata(json!({"team": "rare"}))).unwrap();
            assert_eq!(search_ids(&store, filtered).await, vec!["rare"]);

            let mut none = request("docs", "zephyr", 3);
            none.filter = Filter::from_json(&metadata(json!({"team": "nobody"}))).unwrap();
            assert!(store.search(none).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn keyword_only_and_vector_only_hits_both_appear() {
        let dir = tempfile::tempdir().unwrap();
        let query = "quarterly revenue";
        let mut vectors = HashMap::new();
        vectors.insert(query.to_string(), axis(1));
        // Shares the query's vector but none of its words.
        vectors.insert("sales went up in the third period".to_string(), axis(1));
        // Shares the query's words but points elsewhere.
        vectors.insert("revenue tables, quarterly".to_string(), axis(2));
        vectors.insert("unrelated filler".to_string(), axis(3));
        let store = open_with(&dir, Arc::new(ScriptedEmbedder(vectors))).await;
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

    #[tokio::test]
    async fn queries_without_content_terms_skip_keyword_search() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
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

    #[tokio::test]
    async fn changing_the_embedder_re_embeds_every_document() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir).await;
            store.add_documents("docs", corpus()).await.unwrap();
        }
        let store = open_with(&dir, Arc::new(HashingEmbedder::new(64))).await;
        let connection = Connection::open(store.path()).unwrap();
        let stored_id: String = connection
            .query_row(
                "SELECT value FROM meta WHERE key = 'embedder_id'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(stored_id, "hashing-v1:64");
        let mut statement = connection
            .prepare("SELECT embedding FROM documents")
            .unwrap();
        let blobs: Vec<Vec<u8>> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(blobs.len(), 3);
        for blob in blobs {
            let embedding = decode_embedding(&blob).unwrap();
            assert!(!embedding.indices.is_empty());
            assert!(embedding.indices.iter().all(|index| *index < 64));
        }
        let hits = store
            .search(request("docs", "Northwnd Aerospce", 1))
            .await
            .unwrap();
        assert_eq!(hits[0].id, "northwind");
    }

    #[tokio::test]
    async fn concurrent_writes_and_searches_stay_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let mut tasks = Vec::new();
        for writer in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..10 {
                    let id = format!("w{writer}-{n}");
                    store
                        .add_documents("docs", vec![doc(&id, &format!("report {writer} {n}"))])
                        .await
                        .unwrap();
                    store.search(request("docs", "report", 5)).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let info = store.collection("docs").await.unwrap().unwrap();
        assert_eq!(info.document_count, 40);
        assert_eq!(info.version, 40);
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

    #[test]
    fn sanitize_sorts_merges_and_drops_bad_values() {
        let messy = Embedding {
            indices: vec![5, 1, 5, 3, 9],
            values: vec![0.5, 0.25, 0.5, f32::NAN, 0.0],
        };
        assert_eq!(
            sanitize(messy),
            Embedding {
                indices: vec![1, 5],
                values: vec![0.25, 1.0]
            }
        );
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
        let all_common = rankable_terms(&connection, &query("widget number"), 2_500).unwrap();
        assert_eq!(all_common.len(), 1);
        let small = rankable_terms(&connection, &query("widget saffron"), 100).unwrap();
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
            search_ids(&store, request("small", "gadget", 5)).await,
            vec!["small-0"]
        );
        let hits = search_ids(&store, request("large", "gadget", 50)).await;
        assert_eq!(hits.len(), 40);
        assert!(hits.iter().all(|id| id.starts_with("large-")));
        let mut filtered = request("large", "gadget", 5);
        filtered.filter = Filter::from_json(&metadata(json!({"none": {"$ne": 1}}))).unwrap();
        assert_eq!(search_ids(&store, filtered).await.len(), 5);
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
        let mut replaced = search_ids(&store, request("c", "replaced", 2)).await;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        for connection in busy {
            store.inner.readers.idle.lock().push(connection);
            store.inner.readers.returned.notify_one();
        }
        assert_eq!(waiting.await.unwrap().unwrap(), expected);
    }
}
