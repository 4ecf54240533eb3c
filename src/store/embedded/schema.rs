//! Opening the database: connection settings, migrations, re-embedding after an embedder
//! change, and loading every collection's in-memory index.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::super::StoreError;
use super::super::index::VectorIndex;
use super::super::prepare::embed_all;
use super::readers::with_connection;
use super::rows::{decode_embedding, encode_embedding, parse_metadata};
use super::{Collection, CollectionState};
use crate::embed::Embedder;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const EMBEDDER_ID_KEY: &str = "embedder_id";
/// Texts re-embedded per round trip to the writer when the embedder changed.
const REEMBED_BATCH: usize = 256;

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

/// Re-embeds every document if the embedder differs from the one that made the stored vectors.
pub(super) async fn ensure_current_embeddings(
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
                .query_map(params![after, REEMBED_BATCH as i64], |row| {
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
pub(super) fn load_collections(
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
