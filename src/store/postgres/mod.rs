//! The PostgreSQL store: documents, collections and their content versions in PostgreSQL,
//! shared by every replica; keyword ranking from a `tsvector` column with a GIN index, vector
//! ranking from pgvector's HNSW index (over the hashing embedder's vectors folded to 256
//! dimensions, or a dense embedder's as they are) re-ranked by the exact `sparsevec` ones,
//! fused by reciprocal rank in one SQL statement.
//!
//! Driver: `tokio-postgres` with a `deadpool-postgres` pool. sqlx would add its own runtime
//! layer, compile-time query checking that needs a database at build time, and a heavier
//! dependency tree, for statements that here are few and mostly built at run time (filters);
//! tokio-postgres is the driver sqlx's Postgres side and most of the ecosystem measure
//! against, and deadpool's pool is a thin, well-understood layer over it.
//!
//! Files: `connect.rs` settings, TLS, the pool and error mapping; `migrations.rs` the schema;
//! `sql.rs` filters, the hybrid statement and vector text; `backlog.rs` the indexer that
//! moves written vectors into the HNSW graph after their writes are acknowledged.

mod backlog;
mod connect;
#[cfg(test)]
mod graph_tests;
mod migrations;
mod reindex;
#[cfg(test)]
mod reindex_tests;
mod sql;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::{ToSql, Type};

pub use self::backlog::BacklogWatch;
use self::backlog::{Graph, Indexer};
pub use self::migrations::{MigrationReport, known_version};
use self::sql::{
    COLLECTION_SIZE, any_term_query, compile_filter, filter_start, folded_text, folds,
    graph_dimension, search_statement, sparsevec_text, through_graph, write_statement,
};
use super::prepare::{Fusion, candidates_for, embed_query, prepare_documents};
use super::{
    CollectionInfo, DocumentStore, Hit, NewDocument, ReindexProgress, ReindexReport, SearchRequest,
    StoreError, StoredDocument, WriteOutcome, validate_collection_name,
};
use crate::config::StoreConfig;
use crate::embed::Embedder;
use crate::text;

/// HNSW graph degree. pgvector's default: 16 links per node keeps recall high at a modest
/// index size; more mostly costs memory and insert time. What the graph is built over is
/// `sql::graph_dimension`'s choice: the hashing embedder's vectors folded, a dense embedder's
/// as they are.
pub(crate) const HNSW_M: usize = 16;
/// Candidates kept while building the graph: pgvector's default, 64, four times `m`; lower
/// values build faster at some cost in recall, which the exact re-ranking cannot recover
/// (it only reorders what the graph proposes).
pub(crate) const HNSW_EF_CONSTRUCTION: usize = 64;
/// Candidates kept while searching a dense embedder's graph (`hnsw.ef_search`, pgvector's
/// default 40), unless `store.hnsw_ef_search` says otherwise. A search asks the index for 90
/// candidates at top-10 (three per hit, three times over for the re-ranking), and with
/// pgvector 0.8's iterative scans (`hnsw.iterative_scan = relaxed_order`) the scan continues
/// past `ef_search` until enough rows pass the collection and metadata filters, so 100 buys
/// recall for the common case without making every search visit a large share of the graph.
/// Without iterative scans (pgvector 0.7) a selective filter may leave fewer than `top_k`
/// vector candidates; the keyword ranking is unaffected.
pub(crate) const HNSW_EF_SEARCH_DENSE: usize = 100;
/// The same for the hashing embedder's folded graph: its proposals hold about an eighth of
/// the exact top 10 whatever `ef_search` from 40 to 200, and only add to the keyword matches
/// ranked exactly ([`sql::search_statement`]), so pgvector's default is spent on it, not more.
pub(crate) const HNSW_EF_SEARCH_FOLDED: usize = 40;
/// The largest `hnsw.ef_search` pgvector accepts.
pub const MAX_HNSW_EF_SEARCH: usize = 1_000;

/// Returns the `hnsw.ef_search` of the store's sessions: the configured one, or the default
/// for a graph of `graph_dimension` over vectors of `dimension`.
fn ef_search(config: &StoreConfig, dimension: usize, graph_dimension: usize) -> usize {
    config
        .hnsw_ef_search
        .unwrap_or(if folds(dimension, graph_dimension) {
            HNSW_EF_SEARCH_FOLDED
        } else {
            HNSW_EF_SEARCH_DENSE
        })
}
/// Rows per insert statement of a write: large enough that a statement's round trip and
/// planning are a small share of its cost, small enough that one statement (the timeout
/// applies to each) stays far under the statement timeout on a slow database.
const ROWS_PER_INSERT: usize = 500;

/// A [`DocumentStore`] in PostgreSQL with pgvector, shared by any number of replicas.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    embedder: Arc<dyn Embedder>,
    /// What each collection records as the embedder of its vectors: a collection another
    /// embedder made is neither searched nor written until it is reindexed.
    embedder_id: String,
    dimension: usize,
    /// Dimensions of the vectors the HNSW graph is built over (`sql::graph_dimension`).
    graph_dimension: usize,
    /// Whether searches ask the HNSW index (and writes leave their rows to the indexer).
    indexed: bool,
    /// Moves written vectors into the graph; None without the index, or where the caller
    /// drives the backlog itself.
    indexer: Option<Arc<Indexer>>,
    /// How searches fuse the vector ranking with BM25.
    fusion: Fusion,
    /// The search statement for a filter shape, through the graph or not, is the same text
    /// whatever the values, so it is built once per shape (and planned for each search).
    statements: Arc<parking_lot::Mutex<HashMap<StatementShape, Arc<str>>>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("embedder", &self.embedder)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, migrates the schema and checks the embedder. While the database cannot be
    /// reached, retries with exponential backoff and jitter up to
    /// `connect_retry_max_seconds` between attempts, for as long as the caller waits: a
    /// replica started before its database waits for it instead of crashing in a loop. Other
    /// failures (a schema newer than this build, bad settings) return at once.
    ///
    /// With the HNSW index, the store runs `vector_index_workers` indexer tasks (see
    /// `backlog.rs`) until the last clone of it is dropped.
    pub async fn connect(
        config: &StoreConfig,
        embedder: Arc<dyn Embedder>,
    ) -> Result<PostgresStore, StoreError> {
        let mut store = Self::connect_without_indexer(config, embedder).await?;
        if store.indexed && config.vector_index_workers > 0 {
            store.indexer = Some(Arc::new(Indexer::spawn(
                &store.pool,
                config.vector_index_workers,
                store.graph(),
                backlog::POLL,
            )));
        }
        Ok(store)
    }

    /// [`PostgresStore::connect`] without the indexer: writes wait in the vector backlog
    /// (searched exactly) until another store's indexer, or [`PostgresStore::graph_batch`],
    /// moves them into the graph.
    pub(crate) async fn connect_without_indexer(
        config: &StoreConfig,
        embedder: Arc<dyn Embedder>,
    ) -> Result<PostgresStore, StoreError> {
        let fusion = Fusion::for_embedder(embedder.as_ref(), config.rrf_k, config.vector_weight);
        let dimension = embedder.dimension();
        let graph_dimension = graph_dimension(dimension, embedder.dense());
        let pool = connect::pool(config, ef_search(config, dimension, graph_dimension))?;
        let embedder_id = embedder.id();
        let max_wait = Duration::try_from_secs_f64(config.connect_retry_max_seconds.max(0.1))
            .unwrap_or(Duration::from_secs(30));
        let mut wait = Duration::from_millis(200).min(max_wait);
        loop {
            match migrations::migrate(&pool, &embedder_id, config.vector_index, graph_dimension)
                .await
            {
                Ok(report) => {
                    tracing::info!(
                        schema_version = report.version,
                        migrated = report.applied.len(),
                        embedder = %embedder_id,
                        pool_size = config.pool_size,
                        "postgres store open"
                    );
                    break;
                }
                Err(StoreError::Unavailable(reason)) => {
                    let pause = wait.mul_f64(0.5 + fastrand::f64() / 2.0);
                    tracing::warn!(
                        %reason,
                        retry_in_ms = pause.as_millis() as u64,
                        "cannot reach the database; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    wait = wait.saturating_mul(2).min(max_wait);
                }
                Err(other) => return Err(other),
            }
        }
        Ok(PostgresStore {
            pool,
            embedder,
            embedder_id,
            dimension,
            graph_dimension,
            indexed: config.vector_index == crate::config::VectorIndex::Hnsw,
            indexer: None,
            fusion,
            statements: Arc::default(),
        })
    }

    /// Brings the database's schema to this build's version once, without serving: what
    /// `deeprecall migrate` runs ahead of a rollout.
    pub async fn migrate(
        config: &StoreConfig,
        embedder: &dyn Embedder,
    ) -> Result<MigrationReport, StoreError> {
        let graph_dimension = graph_dimension(embedder.dimension(), embedder.dense());
        // Nothing is searched through this pool.
        let pool = connect::pool(config, HNSW_EF_SEARCH_DENSE)?;
        migrations::migrate(&pool, &embedder.id(), config.vector_index, graph_dimension).await
    }

    /// This store, ranking vectors exactly instead of through the HNSW index (which stays):
    /// what the benchmark measures the index's recall against.
    pub(crate) fn ranking_exactly(&self) -> PostgresStore {
        PostgresStore {
            indexed: false,
            indexer: None,
            statements: Arc::default(),
            ..self.clone()
        }
    }

    /// Moves up to `limit` vectors from the backlog into the graph, as the indexer does;
    /// returns how many moved.
    #[cfg(test)]
    pub(crate) async fn graph_batch(&self, limit: i64) -> Result<u64, StoreError> {
        backlog::graph_batch(&self.pool, limit, &self.graph()).await
    }

    /// The graph this store's indexers build: its embedder's collections, at its dimension.
    fn graph(&self) -> Graph {
        Graph {
            dimension: self.graph_dimension,
            embedder_id: self.embedder_id.clone(),
        }
    }

    /// Fails with [`StoreError::EmbedderMismatch`] when the collection holds documents
    /// another embedder made the vectors of.
    async fn refuse_foreign(&self, collection: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT embedder FROM deeprecall_collections \
                 WHERE name = $1 AND document_count > 0 AND embedder <> $2",
            )
            .await?;
        match client
            .query_opt(&statement, &[&collection, &self.embedder_id])
            .await?
        {
            Some(row) => Err(self.mismatch(collection, row.get(0))),
            None => Ok(()),
        }
    }

    fn mismatch(&self, collection: &str, stored: String) -> StoreError {
        StoreError::EmbedderMismatch {
            collection: collection.to_string(),
            stored: if stored.is_empty() {
                "an unrecorded embedder".to_string()
            } else {
                stored
            },
            configured: self.embedder_id.clone(),
        }
    }

    fn statement_for(&self, filter_sql: &str, through_graph: bool) -> Arc<str> {
        let key = (through_graph, filter_sql.to_string());
        let mut statements = self.statements.lock();
        if let Some(statement) = statements.get(&key) {
            return Arc::clone(statement);
        }
        // Filter shapes are bounded by what callers send; past a bound, start over rather than
        // grow without limit.
        if statements.len() >= 1_024 {
            statements.clear();
        }
        let statement: Arc<str> = search_statement(
            self.dimension,
            self.graph_dimension,
            filter_sql,
            through_graph,
            self.fusion.vector_weight,
        )
        .into();
        statements.insert(key, Arc::clone(&statement));
        statement
    }
}

/// What tells search statements apart: through the graph or not, and the filter's SQL.
type StatementShape = (bool, String);

/// A search's statement and its parameters, in the statement's order.
struct SearchQuery {
    statement: Arc<str>,
    collection: String,
    collection_id: i64,
    vector: String,
    by_vector: bool,
    candidates: i64,
    keywords: String,
    rrf_k: f64,
    limit: i64,
    embedder_id: String,
    /// Through the graph only ([`through_graph`]).
    folded_query: Option<String>,
    filter: Vec<String>,
}

/// The types of [`search_statement`]'s parameters up to `$8`; the rest are text.
const PARAMETER_TYPES: [Type; 8] = [
    Type::INT8,
    Type::TEXT,
    Type::BOOL,
    Type::INT8,
    Type::TEXT,
    Type::FLOAT8,
    Type::INT8,
    Type::TEXT,
];

impl SearchQuery {
    fn parameters(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![
            &self.collection_id,
            &self.vector,
            &self.by_vector,
            &self.candidates,
            &self.keywords,
            &self.rrf_k,
            &self.limit,
            &self.embedder_id,
        ];
        if let Some(folded_query) = &self.folded_query {
            parameters.push(folded_query);
        }
        parameters.extend(self.filter.iter().map(|p| p as &(dyn ToSql + Sync)));
        parameters
    }

    /// The parameters with their types, for a statement planned for them alone
    /// (`query_typed`).
    fn typed_parameters(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.parameters()
            .into_iter()
            .enumerate()
            .map(|(at, parameter)| {
                let type_ = PARAMETER_TYPES.get(at).cloned().unwrap_or(Type::TEXT);
                (parameter, type_)
            })
            .collect()
    }
}

impl PostgresStore {
    /// Reads the collection's size, chooses whether to search it through the graph, and builds
    /// the statement and
    /// parameters for the query, embedded beforehand so that no connection waits on the
    /// embedder.
    async fn search_query(
        &self,
        client: &deadpool_postgres::Object,
        request: SearchRequest,
        query_embedding: &crate::embed::Embedding,
    ) -> Result<SearchQuery, StoreError> {
        let SearchRequest {
            collection,
            query,
            top_k,
            filter,
        } = request;
        let size = client.prepare_cached(COLLECTION_SIZE).await?;
        let Some(row) = client.query_opt(&size, &[&collection]).await? else {
            return Err(StoreError::CollectionNotFound(collection));
        };
        let (collection_id, documents): (i64, i64) = (row.get(0), row.get(1));
        let all_documents = row.get::<_, Option<i64>>(2).unwrap_or(documents);
        let candidates = candidates_for(top_k);
        let through_graph = through_graph(
            self.indexed,
            folds(self.dimension, self.graph_dimension),
            candidates,
            documents,
            all_documents,
        );
        let mut terms = text::content_terms(&query);
        terms.truncate(64);
        let compiled = compile_filter(&filter, filter_start(through_graph));
        Ok(SearchQuery {
            statement: self.statement_for(&compiled.sql, through_graph),
            collection,
            collection_id,
            vector: sparsevec_text(query_embedding, self.dimension),
            by_vector: !query_embedding.indices.is_empty(),
            candidates: candidates as i64,
            keywords: any_term_query(&terms),
            rrf_k: self.fusion.k,
            limit: top_k as i64,
            embedder_id: self.embedder_id.clone(),
            folded_query: through_graph.then(|| folded_text(query_embedding, self.graph_dimension)),
            filter: compiled.parameters,
        })
    }
}

fn info(name: &str, version: i64, document_count: i64) -> CollectionInfo {
    CollectionInfo {
        name: name.to_string(),
        document_count: u64::try_from(document_count).unwrap_or(0),
        version: u64::try_from(version).unwrap_or(0),
    }
}

#[async_trait]
impl DocumentStore for PostgresStore {
    fn embedder_id(&self) -> String {
        self.embedder_id.clone()
    }

    fn ranking_id(&self) -> String {
        self.fusion.id()
    }

    async fn check_searchable(&self, collection: &str) -> Result<(), StoreError> {
        self.refuse_foreign(collection).await
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

    async fn check_reachable(&self) -> Result<(), StoreError> {
        // A pooled connection that died is recycled on `get`, so this reaches the server.
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn add_documents(
        &self,
        collection: &str,
        documents: Vec<NewDocument>,
    ) -> Result<WriteOutcome, StoreError> {
        validate_collection_name(collection)?;
        // Before embedding: vectors for a collection that cannot take them would be paid for
        // in vain. The lock below decides; this spares the embedding in the common case.
        self.refuse_foreign(collection).await?;
        let (ids, prepared) = prepare_documents(self.embedder.as_ref(), documents).await?;
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        // The collection's row is created if missing, then locked by the UPDATE that moves its
        // version: writers to one collection take turns, and each write moves the version
        // exactly once, to a value drawn after the lock is held. A single upsert drew the new
        // version before waiting for the lock, so under concurrent writers the version the
        // last writer committed could be lower than one committed before it.
        let row = loop {
            transaction
                .execute(
                    "INSERT INTO deeprecall_collections (name, version, embedder) \
                     VALUES ($1, 0, $2) ON CONFLICT (name) DO NOTHING",
                    &[&collection, &self.embedder_id],
                )
                .await?;
            // An emptied collection takes this store's embedder; one holding another
            // embedder's documents keeps it, and the write is refused below.
            let locked = transaction
                .query_opt(
                    "UPDATE deeprecall_collections SET version = nextval('deeprecall_versions'), \
                     embedder = CASE WHEN document_count = 0 THEN $2 ELSE embedder END \
                     WHERE name = $1 RETURNING id, version, embedder",
                    &[&collection, &self.embedder_id],
                )
                .await?;
            // None: the collection was deleted between the two statements; create it again.
            if let Some(row) = locked {
                break row;
            }
        };
        let collection_id: i64 = row.get(0);
        let version: i64 = row.get(1);
        let stored: String = row.get(2);
        if stored != self.embedder_id {
            // Dropping the transaction rolls the version back.
            return Err(self.mismatch(collection, stored));
        }
        let insert = transaction
            .prepare_cached(&write_statement(self.indexed))
            .await?;
        // Which ids are new is read before the upsert, under the collection's row lock, so no
        // other writer can change the answer. `xmax = 0` on the upsert's rows was used before
        // and is no reliable test (PostgreSQL sets xmax for row locks too): under concurrent
        // writers the count fell short of the documents stored.
        let count_existing = transaction
            .prepare_cached(
                "SELECT count(*) FROM deeprecall_documents \
                 WHERE collection_id = $1 AND doc_id = ANY($2::text[])",
            )
            .await?;
        let mut inserted: i64 = 0;
        for chunk in prepared.chunks(ROWS_PER_INSERT) {
            let doc_ids: Vec<&str> = chunk.iter().map(|d| d.doc_id.as_str()).collect();
            let contents: Vec<&str> = chunk.iter().map(|d| d.content.as_str()).collect();
            let metadata: Vec<&str> = chunk.iter().map(|d| d.metadata_json.as_str()).collect();
            let embeddings: Vec<String> = chunk
                .iter()
                .map(|d| sparsevec_text(&d.embedding, self.dimension))
                .collect();
            // Only without the index: with it, the indexer folds the stored vectors later.
            let folded: Vec<String> = if self.indexed {
                Vec::new()
            } else {
                chunk
                    .iter()
                    .map(|d| folded_text(&d.embedding, self.graph_dimension))
                    .collect()
            };
            let existing: i64 = transaction
                .query_one(&count_existing, &[&collection_id, &doc_ids])
                .await?
                .get(0);
            inserted += chunk.len() as i64 - existing;
            let mut parameters: Vec<&(dyn ToSql + Sync)> =
                vec![&collection_id, &doc_ids, &contents, &metadata, &embeddings];
            if !self.indexed {
                parameters.push(&folded);
            }
            transaction.execute(&insert, &parameters).await?;
        }
        let document_count: i64 = transaction
            .query_one(
                "UPDATE deeprecall_collections SET document_count = document_count + $2 \
                 WHERE id = $1 RETURNING document_count",
                &[&collection_id, &inserted],
            )
            .await?
            .get(0);
        // Acknowledged only once committed (and, with PostgreSQL's default
        // synchronous_commit, flushed to its WAL).
        transaction.commit().await?;
        if let Some(indexer) = &self.indexer {
            indexer.wake();
        }
        Ok(WriteOutcome {
            ids,
            collection: info(collection, version, document_count),
        })
    }

    async fn delete_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<WriteOutcome, StoreError> {
        validate_collection_name(collection)?;
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let Some(row) = transaction
            .query_opt(
                "SELECT id, version, document_count FROM deeprecall_collections \
                 WHERE name = $1 FOR UPDATE",
                &[&collection],
            )
            .await?
        else {
            return Err(StoreError::CollectionNotFound(collection.to_string()));
        };
        let collection_id: i64 = row.get(0);
        let unchanged = info(collection, row.get(1), row.get(2));
        if ids.is_empty() {
            return Ok(WriteOutcome {
                ids,
                collection: unchanged,
            });
        }
        let deleted: Vec<String> = transaction
            .query(
                "DELETE FROM deeprecall_documents WHERE collection_id = $1 AND doc_id = ANY($2) \
                 RETURNING doc_id",
                &[&collection_id, &ids],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if deleted.is_empty() {
            // Nothing changed, so the version, and every answer cached against it, stays.
            return Ok(WriteOutcome {
                ids: Vec::new(),
                collection: unchanged,
            });
        }
        let row = transaction
            .query_one(
                "UPDATE deeprecall_collections SET version = nextval('deeprecall_versions'), \
                 document_count = document_count - $2 WHERE id = $1 \
                 RETURNING version, document_count",
                &[&collection_id, &(deleted.len() as i64)],
            )
            .await?;
        transaction.commit().await?;
        // The ids that existed, in the order asked, each once.
        let mut existed: std::collections::HashSet<String> = deleted.into_iter().collect();
        let ids = ids.into_iter().filter(|id| existed.remove(id)).collect();
        Ok(WriteOutcome {
            ids,
            collection: info(collection, row.get(0), row.get(1)),
        })
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, StoreError> {
        validate_collection_name(&request.collection)?;
        let query_embedding = embed_query(self.embedder.as_ref(), request.query.clone()).await?;
        let client = self.pool.get().await?;
        let search = self
            .search_query(&client, request, &query_embedding)
            .await?;
        // An unnamed statement, planned for these parameters (`search_statement`).
        let rows = client
            .query_typed(&search.statement, &search.typed_parameters())
            .await?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            if row.get::<_, Option<i64>>(0).is_none() {
                return Err(StoreError::CollectionNotFound(search.collection.clone()));
            }
            if let Some(stored) = row.get::<_, Option<String>>(5) {
                return Err(self.mismatch(&search.collection, stored));
            }
            let Some(id) = row.get::<_, Option<String>>(1) else {
                continue;
            };
            let metadata = match row.get::<_, Option<serde_json::Value>>(3) {
                Some(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            hits.push(Hit {
                id,
                content: row.get::<_, Option<String>>(2).unwrap_or_default(),
                metadata,
                score: row.get::<_, Option<f64>>(4).unwrap_or_default(),
            });
        }
        Ok(hits)
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT version, document_count FROM deeprecall_collections WHERE name = $1",
            )
            .await?;
        Ok(client
            .query_opt(&statement, &[&name])
            .await?
            .map(|row| info(name, row.get(0), row.get(1))))
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, version, document_count FROM deeprecall_collections \
                 ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| info(row.get::<_, &str>(0), row.get(1), row.get(2)))
            .collect())
    }

    async fn delete_collection(&self, name: &str) -> Result<Option<CollectionInfo>, StoreError> {
        validate_collection_name(name)?;
        let client = self.pool.get().await?;
        // The documents go with it (ON DELETE CASCADE), in the same statement's transaction.
        let row = client
            .query_opt(
                "DELETE FROM deeprecall_collections WHERE name = $1 \
                 RETURNING version, document_count",
                &[&name],
            )
            .await?;
        Ok(row.map(|row| info(name, row.get(0), row.get(1))))
    }

    async fn list_documents(
        &self,
        collection: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredDocument>, StoreError> {
        validate_collection_name(collection)?;
        let client = self.pool.get().await?;
        let Some(row) = client
            .query_opt(
                "SELECT id FROM deeprecall_collections WHERE name = $1",
                &[&collection],
            )
            .await?
        else {
            return Err(StoreError::CollectionNotFound(collection.to_string()));
        };
        let collection_id: i64 = row.get(0);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Byte order, as in the embedded store, whatever the database's collation.
        let rows = client
            .query(
                "SELECT doc_id, content, metadata FROM deeprecall_documents \
                 WHERE collection_id = $1 AND ($2::text IS NULL OR doc_id COLLATE \"C\" > $2) \
                 ORDER BY doc_id COLLATE \"C\" LIMIT $3",
                &[&collection_id, &after, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| StoredDocument {
                id: row.get(0),
                content: row.get(1),
                metadata: match row.get::<_, serde_json::Value>(2) {
                    serde_json::Value::Object(map) => map,
                    _ => serde_json::Map::new(),
                },
            })
            .collect())
    }

    async fn get_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<Vec<StoredDocument>, StoreError> {
        validate_collection_name(collection)?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.id, d.doc_id, d.content, d.metadata \
                 FROM deeprecall_collections c \
                 LEFT JOIN deeprecall_documents d \
                     ON d.collection_id = c.id AND d.doc_id = ANY($2) \
                 WHERE c.name = $1",
                &[&collection, &ids],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::CollectionNotFound(collection.to_string()));
        }
        let mut found: HashMap<String, StoredDocument> = HashMap::with_capacity(rows.len());
        for row in rows {
            let Some(id) = row.get::<_, Option<String>>(1) else {
                continue;
            };
            let metadata = match row.get::<_, Option<serde_json::Value>>(3) {
                Some(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            let content = row.get::<_, Option<String>>(2).unwrap_or_default();
            found.insert(
                id.clone(),
                StoredDocument {
                    id,
                    content,
                    metadata,
                },
            );
        }
        // In the order asked, each once.
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }
}
