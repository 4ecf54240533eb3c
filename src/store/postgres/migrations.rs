//! Versioned, forward-only schema migrations, applied under an advisory lock so that replicas
//! starting together migrate once; and the vector index, built (or dropped) under the same
//! lock.
//!
//! Each migration is numbered and checksummed (SHA-256 of its SQL) in
//! `deeprecall_schema_migrations`. A database migrated by a newer build (a version this build
//! does not know) is refused rather than used; a migration whose SQL changed after it was
//! applied is refused too, since the schema no longer says what the code assumes.

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

use super::super::StoreError;
use super::{HNSW_EF_CONSTRUCTION, HNSW_M};
use crate::config::VectorIndex;

/// `pg_advisory_lock` key of the migrations: "deepreca" in ASCII.
const MIGRATION_LOCK: i64 = 0x6465_6570_7265_6361;

/// The migrations, in order; entry `n` is version `n + 1`. Never edit one that has shipped:
/// add another.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "collections and documents",
        r#"
CREATE EXTENSION IF NOT EXISTS vector;

-- Content versions come from one sequence, so no version is ever used twice, not even by a
-- collection deleted and created again under the same name: an answer cached by any replica
-- against an old version can never match a new one.
CREATE SEQUENCE deeprecall_versions;

CREATE TABLE deeprecall_collections (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    -- Changes with every write: caches on every replica key on it.
    version        bigint NOT NULL,
    document_count bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deeprecall_documents (
    id            bigserial PRIMARY KEY,
    collection_id bigint NOT NULL REFERENCES deeprecall_collections (id) ON DELETE CASCADE,
    doc_id        text NOT NULL,
    content       text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    -- Sparse: the hashing embedder fills few of its dimensions; candidates are re-ranked
    -- by it exactly.
    embedding     sparsevec NOT NULL,
    -- The same vector folded to 256 dense dimensions: what the HNSW index is built on.
    folded        halfvec NOT NULL,
    keywords      tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    UNIQUE (collection_id, doc_id)
);

CREATE INDEX deeprecall_documents_keywords ON deeprecall_documents USING gin (keywords);
-- Pages of an export, in byte order whatever the database's collation.
CREATE INDEX deeprecall_documents_by_id ON deeprecall_documents (collection_id, doc_id COLLATE "C");

CREATE TABLE deeprecall_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
"#,
    ),
    (
        "graph backlog",
        r#"
-- A row enters the HNSW graph (a few milliseconds each) after its write is acknowledged:
-- `folded` stays NULL (pgvector does not index NULL) until an indexer fills it in, and
-- searches rank such rows exactly meanwhile. This index finds them.
ALTER TABLE deeprecall_documents ALTER COLUMN folded DROP NOT NULL;

CREATE INDEX deeprecall_documents_ungraphed ON deeprecall_documents (collection_id, id)
    WHERE folded IS NULL;
"#,
    ),
    (
        "vectors stored in the row",
        r#"
-- A search reads the sparse vector of every row it ranks exactly: the graph's proposals, the
-- backlog, and every keyword match when the graph's vectors are folded. Past about 2 kB a row
-- (a typical chunk with the hashing embedder's vector is 2.3 kB) PostgreSQL moves the largest
-- values to the TOAST table, and each such read then costs an index lookup and another page:
-- about ten times the inner product itself. Rows up to a page stay whole. Rows written before
-- keep their layout until they are written again.
ALTER TABLE deeprecall_documents SET (toast_tuple_target = 8160);
"#,
    ),
    (
        "an embedder per collection",
        r#"
-- Each collection records the embedder that made its vectors, as in the embedded store: one
-- database holds collections of several embedders, each searched and written only by servers
-- embedding as it was, and `deeprecall reindex` moves a collection from one to another.
ALTER TABLE deeprecall_collections ADD COLUMN embedder text NOT NULL DEFAULT '';
UPDATE deeprecall_collections
    SET embedder = COALESCE((SELECT value FROM deeprecall_meta WHERE key = 'embedder_id'), '');
DELETE FROM deeprecall_meta WHERE key = 'embedder_id';

-- Vectors of another embedder, made by a reindex that has not swapped them in yet. A staged
-- vector holds while its document still has the content it was made from (`content_md5`, a
-- change detector compared at the swap, so writes pay nothing for it); a deleted document
-- takes it along.
CREATE TABLE deeprecall_reindex_staging (
    document_id   bigint PRIMARY KEY REFERENCES deeprecall_documents (id) ON DELETE CASCADE,
    collection_id bigint NOT NULL REFERENCES deeprecall_collections (id) ON DELETE CASCADE,
    embedder      text NOT NULL,
    content_md5   text NOT NULL,
    embedding     sparsevec NOT NULL,
    -- Written only without the HNSW index, where writes fold their vectors themselves.
    folded        halfvec
);
CREATE INDEX deeprecall_reindex_staging_collection ON deeprecall_reindex_staging (collection_id);
"#,
    ),
];

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order; empty when the schema was current.
    pub applied: Vec<i64>,
    /// The schema version after the call.
    pub version: i64,
}

/// Returns the newest schema version this build knows.
pub fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Brings the schema to the newest version and creates (or drops) the vector index for
/// `embedder_id`'s graph, all under one session advisory lock: the first replica to take it
/// does the work, and the others find it done.
pub(super) async fn migrate(
    pool: &Pool,
    embedder_id: &str,
    vector_index: VectorIndex,
    graph_dimension: usize,
) -> Result<MigrationReport, StoreError> {
    let mut client = pool.get().await?;
    // DDL on a large table, and waiting for another replica's, may outlast the statement
    // timeout meant for searches.
    client.batch_execute("SET statement_timeout = 0").await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let outcome = migrate_locked(&mut client, embedder_id, vector_index, graph_dimension).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let reset = client.batch_execute("RESET statement_timeout").await;
    if unlocked.is_err() || reset.is_err() {
        // The lock is the session's: closing the connection releases it.
        let _ = deadpool_postgres::Object::take(client);
    }
    outcome
}

async fn migrate_locked(
    client: &mut deadpool_postgres::Object,
    embedder_id: &str,
    vector_index: VectorIndex,
    graph_dimension: usize,
) -> Result<MigrationReport, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS deeprecall_schema_migrations (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let rows = client
        .query(
            "SELECT version, checksum FROM deeprecall_schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let known = known_version();
    let mut current = 0;
    for row in rows {
        let version: i64 = row.get(0);
        let stored: String = row.get(1);
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        let Some((_, sql)) = MIGRATIONS.get((version - 1).max(0) as usize) else {
            return Err(StoreError::Corrupt(format!(
                "unknown migration version {version}"
            )));
        };
        if checksum(sql) != stored {
            return Err(StoreError::Corrupt(format!(
                "migration {version} differs from the one applied to this database"
            )));
        }
        current = current.max(version);
    }
    let mut applied = Vec::new();
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let transaction = client.transaction().await?;
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO deeprecall_schema_migrations (version, name, checksum) \
                 VALUES ($1, $2, $3)",
                &[&version, name, &checksum(sql)],
            )
            .await?;
        transaction.commit().await?;
        tracing::info!(version, name, "database schema migrated");
        applied.push(version);
    }
    ensure_vector_index(client, vector_index, graph_dimension, embedder_id).await?;
    Ok(MigrationReport {
        applied,
        version: known,
    })
}

/// Creates the HNSW index over vectors of `graph_dimension` if missing, or, with
/// [`VectorIndex::Exact`], drops it; any other vector index goes once no row is in its graph.
///
/// Before creating it, rows of this embedder's collections whose graph vector has another
/// dimension (written by a build that folded differently, or under `exact` for another
/// embedder) go back to the backlog: the indexers fold them again in the background, and
/// searches rank them exactly meanwhile, so a start does not wait for a whole collection to be
/// folded. Other embedders' collections keep their rows and their index: replicas still
/// embedding that way serve them (a rollout, a collection not reindexed yet).
async fn ensure_vector_index(
    client: &deadpool_postgres::Object,
    vector_index: VectorIndex,
    graph_dimension: usize,
    embedder_id: &str,
) -> Result<(), StoreError> {
    let current = match vector_index {
        VectorIndex::Hnsw => {
            let name = graph_index_name(graph_dimension);
            let exists: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_indexes \
                     WHERE tablename = 'deeprecall_documents' AND indexname = $1)",
                    &[&name],
                )
                .await?
                .get(0);
            if !exists {
                let dimension = graph_dimension as i32;
                let refolded = client
                    .execute(
                        "UPDATE deeprecall_documents SET folded = NULL \
                         WHERE folded IS NOT NULL AND vector_dims(folded) <> $1 \
                         AND collection_id IN ( \
                             SELECT id FROM deeprecall_collections WHERE embedder = $2)",
                        &[&dimension, &embedder_id],
                    )
                    .await?;
                if refolded > 0 {
                    tracing::info!(
                        documents = refolded,
                        dimension = graph_dimension,
                        "documents left for the indexers to fold again"
                    );
                }
                // Partial on the dimension: the build also reads the row versions the UPDATE
                // above just replaced, and casting those to this dimension would fail it.
                let sql = format!(
                    "CREATE INDEX IF NOT EXISTS {name} ON deeprecall_documents \
                     USING hnsw ((folded::halfvec({graph_dimension})) halfvec_ip_ops) \
                     WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) \
                     WHERE vector_dims(folded) = {graph_dimension}"
                );
                client.batch_execute(&sql).await?;
            }
            Some(name)
        }
        VectorIndex::Exact => None,
    };
    let others = client
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'deeprecall_documents' \
             AND indexname LIKE 'deeprecall\\_documents\\_folded\\_%'",
            &[],
        )
        .await?;
    for row in others {
        let name: String = row.get(0);
        let Some(current) = &current else {
            drop_index(client, &name).await?;
            continue;
        };
        if &name == current {
            continue;
        }
        let in_use = match graph_index_dimension(&name) {
            Some(dimension) => client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM deeprecall_documents \
                     WHERE folded IS NOT NULL AND vector_dims(folded) = $1)",
                    &[&dimension],
                )
                .await?
                .get(0),
            None => false,
        };
        if !in_use {
            drop_index(client, &name).await?;
        }
    }
    Ok(())
}

/// The name of the HNSW index over graph vectors of `dimension`: one per dimension, each
/// partial on it, so that collections of embedders with different dimensions share the table.
fn graph_index_name(dimension: usize) -> String {
    format!("deeprecall_documents_folded_{dimension}")
}

/// The dimension an index named by [`graph_index_name`] is built over.
fn graph_index_dimension(name: &str) -> Option<i32> {
    name.strip_prefix("deeprecall_documents_folded_")?
        .parse()
        .ok()
}

async fn drop_index(client: &deadpool_postgres::Object, name: &str) -> Result<(), StoreError> {
    // The name comes from the catalogue and matched the index names' pattern.
    client
        .batch_execute(&format!(
            "DROP INDEX IF EXISTS \"{}\"",
            name.replace('"', "")
        ))
        .await?;
    Ok(())
}

#[cfg(test)]
pub(super) fn lock_key() -> i64 {
    MIGRATION_LOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_is_recorded_by_the_sha_256_of_its_text() {
        assert_eq!(
            checksum(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            checksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let texts: std::collections::HashSet<String> =
            MIGRATIONS.iter().map(|(_, sql)| checksum(sql)).collect();
        assert_eq!(texts.len(), MIGRATIONS.len(), "each shipped text its own");
    }
}
