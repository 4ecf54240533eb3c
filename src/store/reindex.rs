//! The course of a reindex, the same in every store: read the collection a batch at a time,
//! embed and stage what has no vector for the new embedder yet, then swap the staged vectors
//! in at once, embedding first whatever was written since. Each store supplies the steps over
//! its own tables ([`ReindexSteps`]).

use async_trait::async_trait;

use super::{ReindexProgress, ReindexReport, StoreError};

/// Rounds of "embed what was written meanwhile, then swap" before giving up on a collection
/// that writers never leave alone.
const SWAP_ATTEMPTS: usize = 8;

/// Documents waiting for a vector: their row ids and contents.
pub(crate) type Pending = Vec<(i64, String)>;

/// A batch of a reindex.
pub(crate) struct Batch {
    /// Row ids read, in order: the last is where the next batch starts.
    pub(crate) read: Vec<i64>,
    /// Those among them with no vector staged from their current content.
    pub(crate) pending: Pending,
}

/// What a swap attempt found.
pub(crate) enum Swap {
    /// The new vectors are in; the collection holds this many documents.
    Done(u64),
    /// These documents, written since they were staged, need vectors first.
    Missing(Pending),
}

/// A store's steps of one collection's reindex to its embedder.
#[async_trait]
pub(crate) trait ReindexSteps: Send + Sync {
    /// Returns the next `limit` documents by row id after `after`.
    async fn next_batch(&self, after: i64, limit: usize) -> Result<Batch, StoreError>;

    /// Embeds the documents and stages their vectors; returns how many were embedded.
    async fn stage(&self, pending: Pending) -> Result<u64, StoreError>;

    /// Swaps the staged vectors in, in one transaction, if every document has one made from
    /// its current content.
    async fn swap(&self) -> Result<Swap, StoreError>;
}

/// What a reindex starts from.
pub(crate) struct Start<'a> {
    pub(crate) collection: &'a str,
    /// The embedder that made the collection's vectors.
    pub(crate) previous: String,
    /// The store's embedder, which makes the new ones.
    pub(crate) target: String,
    /// Documents in the collection.
    pub(crate) documents: u64,
}

/// Runs a reindex through `steps`, `batch_size` documents at a time; nothing to do when the
/// collection is already the target embedder's.
pub(crate) async fn run(
    steps: &dyn ReindexSteps,
    start: Start<'_>,
    batch_size: usize,
    progress: ReindexProgress,
) -> Result<ReindexReport, StoreError> {
    let Start {
        collection,
        previous,
        target,
        documents: total,
    } = start;
    if previous == target {
        progress(total, total);
        return Ok(ReindexReport {
            previous_embedder: previous,
            embedder: target,
            documents: total,
            embedded: 0,
        });
    }
    tracing::info!(
        %collection,
        from = %previous,
        to = %target,
        documents = total,
        "reindexing"
    );

    let batch_size = batch_size.max(1);
    let mut embedded = 0u64;
    let mut done = 0u64;
    let mut after = i64::MIN;
    loop {
        let Batch { read, pending } = steps.next_batch(after, batch_size).await?;
        let Some(last) = read.last() else {
            break;
        };
        after = *last;
        embedded += steps.stage(pending).await?;
        done += read.len() as u64;
        progress(done.min(total), total);
    }

    for _ in 0..SWAP_ATTEMPTS {
        match steps.swap().await? {
            Swap::Done(documents) => {
                progress(documents, documents);
                tracing::info!(%collection, embedded, "reindex complete");
                return Ok(ReindexReport {
                    previous_embedder: previous,
                    embedder: target,
                    documents,
                    embedded,
                });
            }
            Swap::Missing(pending) => {
                embedded += steps.stage(pending).await?;
            }
        }
    }
    Err(StoreError::Unavailable(format!(
        "collection {collection:?} kept changing: the new vectors were not swapped in after \
         {SWAP_ATTEMPTS} rounds; run the reindex again, it resumes"
    )))
}
