//! The SQL of writes and lookups, and the stored format of vectors and metadata.

use std::collections::HashMap;

use rusqlite::{Connection, ToSql, Transaction, params};
use serde_json::{Map, Value};

use super::super::prepare::PreparedDocument;
use super::super::{Hit, StoreError, StoredDocument};
use crate::embed::Embedding;

/// Documents per write statement: with four parameters each, plus one shared, a statement stays
/// well under SQLite's default limit of 32,766 parameters.
pub(super) const ROWS_PER_WRITE_STATEMENT: usize = 4_000;

/// SQLite's errors become the store's: the driver's types stay in this module's tree.
impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        if is_out_of_space(&error) {
            StoreError::Full(error.to_string())
        } else {
            StoreError::Database(error.to_string())
        }
    }
}

/// Whether SQLite failed because the disk took no more bytes. A full disk is `SQLITE_FULL`
/// when the write that hit it was short; a write refused outright (`ENOSPC` is also reported
/// as full, but `EFBIG`, a file-size limit, and `EDQUOT`, a quota, are not) comes back as
/// `SQLITE_IOERR_WRITE`. A failed write rolls the transaction back either way, so what was
/// committed before stays as it was.
fn is_out_of_space(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => {
            failure.code == rusqlite::ErrorCode::DiskFull
                || failure.extended_code == rusqlite::ffi::SQLITE_IOERR_WRITE
        }
        _ => false,
    }
}

/// Writes the documents and returns their rowids, in the documents' order.
///
/// FTS5 flushes its pending terms into a new index segment whenever a statement opens a
/// savepoint, which every write to `documents` does because its triggers write the full-text
/// index. One statement per document would leave one segment per document, and a keyword
/// search looks each of its terms up in every segment: for a small collection, those lookups
/// are most of the cost of a search. One statement per chunk leaves one segment per chunk.
pub(super) fn upsert_documents(
    transaction: &Transaction<'_>,
    collection_id: i64,
    documents: &[PreparedDocument],
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
pub(super) fn delete_by_id(
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

/// Loads content and metadata of the ranked rowids, keeping the ranking's order. Run inside a
/// transaction, a lookup by rowid per hit costs less than one query for all of them, which
/// needs its rowids serialised to JSON and `json_each` to read them back.
pub(super) fn fetch_hits(
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

/// Returns the embedder of the collection's vectors, after recording `embedder_id` as it when
/// the collection holds no documents: an empty collection has no vectors to keep apart.
pub(super) fn claim_embedder(
    transaction: &Transaction<'_>,
    collection_id: i64,
    embedder_id: &str,
) -> Result<String, StoreError> {
    transaction.execute(
        "UPDATE collections SET embedder = ?2 \
         WHERE id = ?1 AND embedder <> ?2 \
           AND NOT EXISTS (SELECT 1 FROM documents WHERE collection_id = ?1)",
        params![collection_id, embedder_id],
    )?;
    Ok(transaction.query_row(
        "SELECT embedder FROM collections WHERE id = ?1",
        [collection_id],
        |row| row.get(0),
    )?)
}

pub(super) fn bump_version(
    transaction: &Transaction<'_>,
    collection_id: i64,
) -> Result<u64, StoreError> {
    let version: i64 = transaction.query_row(
        "UPDATE collections SET version = version + 1 WHERE id = ?1 RETURNING version",
        [collection_id],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(version).unwrap_or(0))
}

pub(super) fn parse_metadata(rowid: i64, json: &str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("metadata of document {rowid}: {err}")))
}

/// Encodes a sparse vector: a little-endian `u32` count, then `(u32 index, f32 value)` pairs.
pub(super) fn encode_embedding(embedding: &Embedding) -> Vec<u8> {
    let count = embedding.indices.len().min(embedding.values.len());
    let mut bytes = Vec::with_capacity(4 + 8 * count);
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
    for (index, value) in embedding.indices.iter().zip(&embedding.values) {
        bytes.extend_from_slice(&index.to_le_bytes());
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

pub(super) fn decode_embedding(bytes: &[u8]) -> Result<Embedding, String> {
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

/// Reads the collection's documents with these ids, in the order asked, each once.
pub(super) fn fetch_documents(
    connection: &Connection,
    collection_id: i64,
    ids: &[String],
) -> Result<Vec<StoredDocument>, StoreError> {
    let transaction = connection.unchecked_transaction()?;
    let mut statement = transaction.prepare_cached(
        "SELECT rowid, content, metadata FROM documents WHERE collection_id = ?1 AND doc_id = ?2",
    )?;
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut documents = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let mut rows = statement.query(rusqlite::params![collection_id, id])?;
        if let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            let metadata = parse_metadata(
                rowid,
                row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?,
            )?;
            documents.push(StoredDocument {
                id: id.clone(),
                content: row.get(1)?,
                metadata,
            });
        }
    }
    drop(statement);
    transaction.commit()?;
    Ok(documents)
}

/// Reads one page of the collection's documents in id order (SQLite's `BINARY` collation:
/// byte order), after `after`.
pub(super) fn list_page(
    connection: &Connection,
    collection_id: i64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredDocument>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT rowid, doc_id, content, metadata FROM documents \
         WHERE collection_id = ?1 AND (?2 IS NULL OR doc_id > ?2) ORDER BY doc_id LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = statement.query(rusqlite::params![collection_id, after, limit])?;
    let mut documents = Vec::new();
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let metadata = parse_metadata(
            rowid,
            row.get_ref(3)?.as_str().map_err(rusqlite::Error::from)?,
        )?;
        documents.push(StoredDocument {
            id: row.get(1)?,
            content: row.get(2)?,
            metadata,
        });
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn a_disk_that_takes_no_more_bytes_is_a_full_store_and_other_failures_are_not() {
        assert!(matches!(
            StoreError::from(failure(rusqlite::ffi::SQLITE_FULL)),
            StoreError::Full(_)
        ));
        assert!(matches!(
            StoreError::from(failure(rusqlite::ffi::SQLITE_IOERR_WRITE)),
            StoreError::Full(_)
        ));
        assert!(matches!(
            StoreError::from(failure(rusqlite::ffi::SQLITE_IOERR_READ)),
            StoreError::Database(_)
        ));
        assert!(matches!(
            StoreError::from(failure(rusqlite::ffi::SQLITE_CORRUPT)),
            StoreError::Database(_)
        ));
    }
}
