//! Reindexing a collection with the store's embedder, online.
//!
//! New vectors go to `reindex_staging` a batch at a time, each batch in a transaction of its
//! own, so that a stopped run resumes where it was: a staged row stays valid until its
//! document is rewritten or deleted (a trigger and a foreign key see to that). Meanwhile the
//! collection keeps its old vectors, and servers embedding with the old embedder go on
//! searching and writing it. Once every document has a staged vector, one transaction swaps
//! them in and records the new embedder; documents written between the last batch and the
//! swap are embedded first, and the swap is tried again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior, params};

use super::super::prepare::embed_all;
use super::super::reindex::{self, Batch, Pending, ReindexSteps, Start, Swap};
use super::super::{ReindexProgress, ReindexReport, StoreError};
use super::rows::encode_embedding;
use super::schema::load_index;
use super::{Collection, EmbeddedStore, Inner};
use crate::embed::Embedding;

impl EmbeddedStore {
    pub(super) async fn reindex_collection(
        &self,
        name: &str,
        batch_size: usize,
        progress: ReindexProgress,
    ) -> Result<ReindexReport, StoreError> {
        let handle = self.collection_handle(name)?;
        let target = self.inner.embedder.id();
        let (previous, documents) = on_writer(&self.inner, {
            let handle = Arc::clone(&handle);
            move |inner| inner.embedder_and_count(&handle)
        })
        .await?;
        let steps = Steps {
            inner: Arc::clone(&self.inner),
            collection: handle,
            target: target.clone(),
        };
        let start = Start {
            collection: name,
            previous,
            target,
            documents,
        };
        reindex::run(&steps, start, batch_size, progress).await
    }
}

async fn on_writer<T, F>(inner: &Arc<Inner>, work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
{
    let worker = Arc::clone(inner);
    inner.write_threads.run(move || work(&worker)).await
}

/// One collection's reindex to `target`, on the store's writer.
struct Steps {
    inner: Arc<Inner>,
    collection: Arc<Collection>,
    target: String,
}

#[async_trait]
impl ReindexSteps for Steps {
    async fn next_batch(&self, after: i64, limit: usize) -> Result<Batch, StoreError> {
        let collection = Arc::clone(&self.collection);
        let target = self.target.clone();
        on_writer(&self.inner, move |inner| {
            inner.next_batch(&collection, &target, after, limit)
        })
        .await
    }

    async fn stage(&self, pending: Pending) -> Result<u64, StoreError> {
        if pending.is_empty() {
            return Ok(0);
        }
        let (rowids, contents): (Vec<i64>, Vec<String>) = pending.into_iter().unzip();
        let embeddings = embed_all(self.inner.embedder.as_ref(), &contents).await?;
        drop(contents);
        let count = rowids.len() as u64;
        let collection_id = self.collection.id;
        let target = self.target.clone();
        on_writer(&self.inner, move |inner| {
            let mut connection = inner.writer.lock();
            stage_rows(&mut connection, collection_id, &target, rowids, embeddings)
        })
        .await?;
        Ok(count)
    }

    async fn swap(&self) -> Result<Swap, StoreError> {
        let collection = Arc::clone(&self.collection);
        let target = self.target.clone();
        on_writer(&self.inner, move |inner| inner.swap(&collection, &target)).await
    }
}

impl Inner {
    fn embedder_and_count(&self, collection: &Collection) -> Result<(String, u64), StoreError> {
        let connection = self.writer.lock();
        let (embedder, documents): (String, i64) = connection.query_row(
            "SELECT embedder, (SELECT count(*) FROM documents WHERE collection_id = ?1) \
             FROM collections WHERE id = ?1",
            [collection.id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((embedder, u64::try_from(documents).unwrap_or(0)))
    }

    /// Returns the rowids of the next `limit` documents after `after`, and those among them
    /// with no vector staged for `target`, with their content.
    fn next_batch(
        &self,
        collection: &Collection,
        target: &str,
        after: i64,
        limit: usize,
    ) -> Result<Batch, StoreError> {
        let connection = self.writer.lock();
        let mut statement = connection.prepare_cached(
            "SELECT d.rowid, CASE WHEN s.rowid IS NULL THEN d.content END \
             FROM documents d \
             LEFT JOIN reindex_staging s ON s.rowid = d.rowid AND s.embedder = ?2 \
             WHERE d.collection_id = ?1 AND d.rowid > ?3 \
             ORDER BY d.rowid LIMIT ?4",
        )?;
        let mut read = Vec::new();
        let mut pending = Vec::new();
        let mut rows = statement.query(params![
            collection.id,
            target,
            after,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
        while let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            read.push(rowid);
            if let Some(content) = row.get::<_, Option<String>>(1)? {
                pending.push((rowid, content));
            }
        }
        Ok(Batch { read, pending })
    }

    /// Swaps the staged vectors in, in one transaction, if every document has one.
    fn swap(&self, collection: &Collection, target: &str) -> Result<Swap, StoreError> {
        let mut connection = self.writer.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let missing: Pending = {
            let mut statement = transaction.prepare_cached(
                "SELECT d.rowid, d.content FROM documents d \
                 WHERE d.collection_id = ?1 AND NOT EXISTS ( \
                     SELECT 1 FROM reindex_staging s WHERE s.rowid = d.rowid AND s.embedder = ?2)",
            )?;
            statement
                .query_map(params![collection.id, target], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?
        };
        if !missing.is_empty() {
            return Ok(Swap::Missing(missing));
        }
        transaction.execute(
            "UPDATE documents SET embedding = ( \
                 SELECT embedding FROM reindex_staging s WHERE s.rowid = documents.rowid) \
             WHERE collection_id = ?1",
            [collection.id],
        )?;
        let version: i64 = transaction.query_row(
            "UPDATE collections SET embedder = ?2, version = version + 1 WHERE id = ?1 \
             RETURNING version",
            params![collection.id, target],
            |row| row.get(0),
        )?;
        transaction.execute(
            "DELETE FROM reindex_staging WHERE collection_id = ?1",
            [collection.id],
        )?;
        let index = load_index(&transaction, collection.id, self.layout)?;
        let documents = index.len() as u64;
        let mut state = collection.state.write();
        transaction.commit()?;
        self.documents
            .fetch_sub(state.index.len(), Ordering::Relaxed);
        self.documents.fetch_add(index.len(), Ordering::Relaxed);
        state.index = index;
        state.foreign = None;
        state.version = u64::try_from(version).unwrap_or(0);
        Ok(Swap::Done(documents))
    }
}

/// Stages vectors in one transaction. A document deleted since it was read stages nothing.
fn stage_rows(
    connection: &mut Connection,
    collection_id: i64,
    target: &str,
    rowids: Vec<i64>,
    embeddings: Vec<Embedding>,
) -> Result<(), StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut statement = transaction.prepare_cached(
            "INSERT OR REPLACE INTO reindex_staging (rowid, collection_id, embedder, embedding) \
             SELECT rowid, ?2, ?3, ?4 FROM documents WHERE rowid = ?1 AND collection_id = ?2",
        )?;
        for (rowid, embedding) in rowids.into_iter().zip(embeddings) {
            statement.execute(params![
                rowid,
                collection_id,
                target,
                encode_embedding(&embedding)
            ])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
#[path = "reindex_tests.rs"]
mod tests;
