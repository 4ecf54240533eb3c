//! Reindexing a collection with the store's embedder, online, as the embedded store does.
//!
//! New vectors go to `deeprecall_reindex_staging` a batch at a time, each batch committed on
//! its own, so that a stopped run resumes where it was: a staged vector holds while its
//! document keeps the content it was made from. Meanwhile the collection keeps its old
//! vectors, and replicas embedding with the old embedder go on searching and writing it.
//! Once every document has a staged vector, one transaction, holding the collection's row
//! lock that writers take too, swaps them in, records the new embedder and moves the content
//! version; documents written between the last batch and the swap are embedded first, and the
//! swap is tried again.
//!
//! With the HNSW index, the swapped rows go to the vector backlog (`folded` NULL): the
//! indexers of replicas on the new embedder put them into its graph in the background, and
//! searches rank them exactly until then, so the swap costs no graph insertion under the lock.

use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use super::super::prepare::embed_all;
use super::super::reindex::{self, Batch, Pending, ReindexSteps, Start, Swap};
use super::super::{ReindexProgress, ReindexReport, StoreError};
use super::PostgresStore;
use super::sql::{folded_text, sparsevec_text};

impl PostgresStore {
    pub(super) async fn reindex_collection(
        &self,
        name: &str,
        batch_size: usize,
        progress: ReindexProgress,
    ) -> Result<ReindexReport, StoreError> {
        super::validate_collection_name(name)?;
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT id, embedder, document_count FROM deeprecall_collections \
                 WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| StoreError::CollectionNotFound(name.to_string()))?;
        let steps = Steps {
            store: self,
            collection: name,
            collection_id: row.get(0),
        };
        let start = Start {
            collection: name,
            previous: row.get(1),
            target: self.embedder_id.clone(),
            documents: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
        };
        reindex::run(&steps, start, batch_size, progress).await
    }
}

/// One collection's reindex to the store's embedder.
struct Steps<'a> {
    store: &'a PostgresStore,
    collection: &'a str,
    collection_id: i64,
}

#[async_trait]
impl ReindexSteps for Steps<'_> {
    /// Reads the row ids of the next documents, with the content of those that have no
    /// vector staged for the target from their current content.
    async fn next_batch(&self, after: i64, limit: usize) -> Result<Batch, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                "SELECT d.id, CASE WHEN s.document_id IS NULL THEN d.content END \
                 FROM deeprecall_documents d \
                 LEFT JOIN deeprecall_reindex_staging s ON s.document_id = d.id \
                     AND s.embedder = $2 AND s.content_md5 = md5(d.content) \
                 WHERE d.collection_id = $1 AND d.id > $3 \
                 ORDER BY d.id LIMIT $4",
                &[&self.collection_id, &self.store.embedder_id, &after, &limit],
            )
            .await?;
        let mut batch = Batch {
            read: Vec::with_capacity(rows.len()),
            pending: Pending::new(),
        };
        for row in rows {
            let id: i64 = row.get(0);
            batch.read.push(id);
            if let Some(content) = row.get::<_, Option<String>>(1) {
                batch.pending.push((id, content));
            }
        }
        Ok(batch)
    }

    /// Stages in one statement. A document deleted since it was read stages nothing, and one
    /// rewritten since is staged under the content that was embedded, which the swap then
    /// finds stale.
    async fn stage(&self, pending: Pending) -> Result<u64, StoreError> {
        if pending.is_empty() {
            return Ok(0);
        }
        let store = self.store;
        let (ids, contents): (Vec<i64>, Vec<String>) = pending.into_iter().unzip();
        let embeddings = embed_all(store.embedder.as_ref(), &contents).await?;
        let vectors: Vec<String> = embeddings
            .iter()
            .map(|embedding| sparsevec_text(embedding, store.dimension))
            .collect();
        // Only without the index, as writes do: with it, the indexers fold after the swap.
        let folded: Vec<Option<String>> = embeddings
            .iter()
            .map(|embedding| {
                (!store.indexed).then(|| folded_text(embedding, store.graph_dimension))
            })
            .collect();
        let parameters: [&(dyn ToSql + Sync); 6] = [
            &self.collection_id,
            &store.embedder_id,
            &ids,
            &contents,
            &vectors,
            &folded,
        ];
        store
            .pool
            .get()
            .await?
            .execute(
                "INSERT INTO deeprecall_reindex_staging \
                     (document_id, collection_id, embedder, content_md5, embedding, folded) \
                 SELECT d.id, $1, $2, md5(v.content), v.embedding::sparsevec, v.folded::halfvec \
                 FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) \
                     AS v (id, content, embedding, folded) \
                 JOIN deeprecall_documents d ON d.id = v.id AND d.collection_id = $1 \
                 ON CONFLICT (document_id) DO UPDATE SET embedder = excluded.embedder, \
                     content_md5 = excluded.content_md5, embedding = excluded.embedding, \
                     folded = excluded.folded",
                &parameters,
            )
            .await?;
        Ok(ids.len() as u64)
    }

    async fn swap(&self) -> Result<Swap, StoreError> {
        let store = self.store;
        let (collection_id, target) = (self.collection_id, &store.embedder_id);
        let mut client = store.pool.get().await?;
        let transaction = client.transaction().await?;
        // Writers lock this row before they touch the collection's documents: from here to
        // the commit, nothing changes under the swap.
        let locked = transaction
            .query_opt(
                "SELECT id FROM deeprecall_collections WHERE id = $1 FOR UPDATE",
                &[&collection_id],
            )
            .await?;
        if locked.is_none() {
            // Deleted during the reindex (and maybe created again: another collection).
            return Err(StoreError::CollectionNotFound(self.collection.to_string()));
        }
        let rows = transaction
            .query(
                "SELECT d.id, d.content FROM deeprecall_documents d \
                 WHERE d.collection_id = $1 AND NOT EXISTS ( \
                     SELECT 1 FROM deeprecall_reindex_staging s WHERE s.document_id = d.id \
                     AND s.embedder = $2 AND s.content_md5 = md5(d.content))",
                &[&collection_id, &target],
            )
            .await?;
        if !rows.is_empty() {
            let missing = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
            return Ok(Swap::Missing(missing));
        }
        let folded = if store.indexed { "NULL" } else { "s.folded" };
        transaction
            .execute(
                &format!(
                    "UPDATE deeprecall_documents d SET embedding = s.embedding, folded = {folded} \
                     FROM deeprecall_reindex_staging s \
                     WHERE s.document_id = d.id AND d.collection_id = $1"
                ),
                &[&collection_id],
            )
            .await?;
        let documents: i64 = transaction
            .query_one(
                "UPDATE deeprecall_collections SET embedder = $2, \
                     version = nextval('deeprecall_versions') \
                 WHERE id = $1 RETURNING document_count",
                &[&collection_id, &target],
            )
            .await?
            .get(0);
        transaction
            .execute(
                "DELETE FROM deeprecall_reindex_staging WHERE collection_id = $1",
                &[&collection_id],
            )
            .await?;
        transaction.commit().await?;
        if let Some(indexer) = &store.indexer {
            indexer.wake();
        }
        Ok(Swap::Done(u64::try_from(documents).unwrap_or(0)))
    }
}
