//! Opening the database: connection settings, migrations, and loading every collection's
//! in-memory index.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::super::StoreError;
use super::super::index::{Layout, VectorIndex};
use super::rows::{decode_embedding, parse_metadata};
use super::{Collection, CollectionState, Foreign};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; entry `n` moves `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    r#"
-- Each collection records the embedder that made its vectors; until now one embedder, kept in
-- meta, made them all.
ALTER TABLE collections ADD COLUMN embedder TEXT NOT NULL DEFAULT '';
UPDATE collections SET embedder = COALESCE((SELECT value FROM meta WHERE key = 'embedder_id'), '');

-- Vectors of another embedder, made by a reindex that has not swapped them in yet. A row
-- goes with its document, and with its content: a document rewritten meanwhile is embedded
-- again.
CREATE TABLE reindex_staging (
    rowid         INTEGER PRIMARY KEY REFERENCES documents (rowid) ON DELETE CASCADE,
    collection_id INTEGER NOT NULL,
    embedder      TEXT NOT NULL,
    embedding     BLOB NOT NULL
);
CREATE INDEX reindex_staging_collection ON reindex_staging (collection_id);
CREATE TRIGGER reindex_staging_stale AFTER UPDATE OF content ON documents
WHEN old.content IS NOT new.content BEGIN
    DELETE FROM reindex_staging WHERE rowid = new.rowid;
END;
"#,
];

/// Reports a failure to open the database, such as a data directory that cannot be created.
pub(super) fn open_failure(message: String) -> StoreError {
    StoreError::Database(message)
}

pub(super) fn configure_writer(connection: &Connection) -> Result<(), StoreError> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable, but readers and the writer block each other.
        tracing::warn!(journal_mode = %mode, "sqlite refused WAL mode");
    }
    // FULL syncs the WAL on every commit: an acknowledged write survives power loss. NORMAL
    // would survive a crash of the process (the OS still holds the WAL) but not of the
    // machine, which no test here can bring about: the unit test
    // `every_connection_syncs_fully` pins the setting instead.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // A reader never commits, so this changes nothing today; it keeps "every connection is
    // FULL" true, which a test checks, should a reader ever write.
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", version as i64 + 1)?;
        tracing::info!(version = version + 1, "database schema migrated");
    }
    transaction.commit()?;
    Ok(())
}

/// Builds every collection's in-memory state, streaming the stored vectors and metadata. A
/// collection embedded by another embedder than `embedder_id` keeps no index: its vectors are
/// of no use to this store's queries.
pub(super) fn load_collections(
    connection: &Connection,
    embedder_id: &str,
    layout: Layout,
) -> Result<BTreeMap<String, Arc<Collection>>, StoreError> {
    let mut states: HashMap<i64, (String, CollectionState)> = HashMap::new();
    {
        let mut statement = connection.prepare(
            "SELECT c.id, c.name, c.version, c.embedder, \
                    (SELECT count(*) FROM documents d WHERE d.collection_id = c.id) \
             FROM collections c",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let version: i64 = row.get(2)?;
            let embedder: String = row.get(3)?;
            let documents: i64 = row.get(4)?;
            let state = CollectionState {
                version: u64::try_from(version).unwrap_or(0),
                index: VectorIndex::with_layout(layout),
                foreign: foreign_embedder(embedder, embedder_id, documents),
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
            if state.foreign.is_some() {
                continue;
            }
            insert_row(&mut state.index, row)?;
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

/// Builds the index of one collection from its stored vectors.
pub(super) fn load_index(
    connection: &Connection,
    collection_id: i64,
    layout: Layout,
) -> Result<VectorIndex, StoreError> {
    let mut index = VectorIndex::with_layout(layout);
    let mut statement = connection.prepare_cached(
        "SELECT rowid, collection_id, doc_id, metadata, embedding FROM documents \
         WHERE collection_id = ?1 ORDER BY rowid",
    )?;
    let mut rows = statement.query([collection_id])?;
    while let Some(row) = rows.next()? {
        insert_row(&mut index, row)?;
    }
    Ok(index)
}

/// Adds a `rowid, collection_id, doc_id, metadata, embedding` row to an index.
fn insert_row(index: &mut VectorIndex, row: &rusqlite::Row<'_>) -> Result<(), StoreError> {
    let rowid: i64 = row.get(0)?;
    let metadata = parse_metadata(
        rowid,
        row.get_ref(3)?.as_str().map_err(rusqlite::Error::from)?,
    )?;
    let embedding = decode_embedding(row.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?)
        .map_err(|reason| StoreError::Corrupt(format!("vector of document {rowid}: {reason}")))?;
    index.insert(rowid, row.get(2)?, metadata, &embedding);
    Ok(())
}

/// Returns the collection's embedder when it is not `current`. A collection without documents
/// has no vectors to be foreign: it takes the current embedder on its next write.
fn foreign_embedder(stored: String, current: &str, documents: i64) -> Option<Foreign> {
    (stored != current && documents > 0).then(|| Foreign {
        embedder: if stored.is_empty() {
            "an unrecorded embedder".to_string()
        } else {
            stored
        },
        documents: usize::try_from(documents).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_is_foreign_when_another_embedder_made_its_documents() {
        assert!(foreign_embedder("hashing".into(), "hashing", 5).is_none());
        assert!(
            foreign_embedder("other".into(), "hashing", 0).is_none(),
            "an empty collection takes the current embedder on its next write"
        );
        let foreign = foreign_embedder("other".into(), "hashing", 1).expect("foreign");
        assert_eq!((foreign.embedder.as_str(), foreign.documents), ("other", 1));
        let unrecorded = foreign_embedder(String::new(), "hashing", 3).expect("foreign");
        assert_eq!(unrecorded.embedder, "an unrecorded embedder");
    }
}
