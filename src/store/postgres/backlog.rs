//! The indexer: puts the vectors of acknowledged writes into the HNSW graph, in the
//! background.
//!
//! A write that inserted into the graph itself spent a few milliseconds a row inside
//! PostgreSQL (BENCHMARKS.md), so ingest ran at a few hundred documents a second. Writes now
//! leave `folded` NULL (pgvector does not index NULL): those rows are the backlog, found
//! through a partial index. Searches rank them exactly (`sql::search_statement`), so nothing
//! acknowledged goes unsearched, and each replica's indexer claims them in batches, folds
//! their sparse vectors and fills `folded` in. Replicas share the backlog (`FOR UPDATE SKIP
//! LOCKED`): a replica that dies mid-backlog leaves its rows to the others. The same path
//! folds every row again when the graph's dimension changes (`migrations.rs`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::super::StoreError;
use super::sql::{GRAPH_CLAIM, GRAPH_FILL, folded_text, parse_sparsevec};
use crate::config::StoreConfig;

/// Rows put into the graph by one transaction: about a second of graph insertion on a small
/// machine, far under the statement timeout, and short enough that a writer replacing one of
/// them waits little for its row lock.
const BATCH: i64 = 200;
/// How often an idle indexer looks for rows other replicas left behind; its own writes wake
/// it at once.
pub(super) const POLL: Duration = Duration::from_secs(5);
/// The longest pause after failures in a row (the database unreachable, say).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A replica's running indexer: `workers` tasks, each moving one batch at a time (graph
/// insertion runs on one PostgreSQL backend per statement, so workers are how a replica
/// uses more than one of the database's cores). Dropping the last handle stops them.
#[derive(Debug)]
pub(super) struct Indexer {
    workers: Vec<(Arc<Notify>, JoinHandle<()>)>,
}

impl Indexer {
    /// Starts `workers` tasks on the pool, building `graph` and looking for others' rows
    /// every `poll` when idle; each first drains whatever backlog it finds.
    pub(super) fn spawn(pool: &Pool, workers: usize, graph: Graph, poll: Duration) -> Indexer {
        let workers = (0..workers)
            .map(|_| {
                let wake = Arc::new(Notify::new());
                let task = tokio::spawn(run(pool.clone(), Arc::clone(&wake), graph.clone(), poll));
                (wake, task)
            })
            .collect();
        Indexer { workers }
    }

    /// Tells the workers that a write added to the backlog. A wake while one is busy is
    /// kept, so it looks again after its current batch.
    pub(super) fn wake(&self) {
        for (wake, _) in &self.workers {
            wake.notify_one();
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        // Mid-statement, the connection goes with the task and PostgreSQL rolls the batch
        // back: its rows stay in the backlog for the next indexer.
        for (_, task) in &self.workers {
            task.abort();
        }
    }
}

async fn run(pool: Pool, wake: Arc<Notify>, graph: Graph, poll: Duration) {
    let mut failures: u32 = 0;
    let mut moved_since_idle: u64 = 0;
    loop {
        match graph_batch(&pool, BATCH, &graph).await {
            Ok(0) => {
                failures = 0;
                if moved_since_idle > 0 {
                    tracing::info!(vectors = moved_since_idle, "vector backlog drained");
                    moved_since_idle = 0;
                }
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
            Ok(moved) => {
                failures = 0;
                moved_since_idle += moved;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let pause = backoff(failures);
                tracing::warn!(
                    %error,
                    retry_in_ms = pause.as_millis() as u64,
                    "cannot move vectors into the graph; retrying"
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The pause after `failures` failed batches in a row: 400 ms after the first, doubling up
/// to [`MAX_BACKOFF`], so that a database that is down is not asked again at once.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200)
        .saturating_mul(1 << failures.min(8))
        .min(MAX_BACKOFF)
}

/// Which rows an indexer puts into which graph: those of the collections `embedder_id` made
/// the vectors of, folded to `dimension`. Rows of other embedders' collections are left to
/// replicas embedding as they were: folded here, they would land in the wrong graph.
#[derive(Debug, Clone)]
pub(super) struct Graph {
    pub(super) dimension: usize,
    pub(super) embedder_id: String,
}

/// Puts up to `limit` waiting rows into the graph; returns how many went in.
pub(super) async fn graph_batch(pool: &Pool, limit: i64, graph: &Graph) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let claim = transaction.prepare_cached(GRAPH_CLAIM).await?;
    let claimed = transaction
        .query(&claim, &[&limit, &graph.embedder_id])
        .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(claimed.len());
    let mut vectors = Vec::with_capacity(claimed.len());
    for row in &claimed {
        let id: i64 = row.get(0);
        let text: &str = row.get(1);
        let embedding = parse_sparsevec(text).ok_or_else(|| {
            StoreError::Corrupt(format!("document row {id}: unreadable sparse vector"))
        })?;
        ids.push(id);
        vectors.push(folded_text(&embedding, graph.dimension));
    }
    let fill = transaction.prepare_cached(GRAPH_FILL).await?;
    let filled = transaction.execute(&fill, &[&ids, &vectors]).await?;
    transaction.commit().await?;
    Ok(filled)
}

/// Watches the backlog of a database without serving from it (no migration, no indexer): what
/// the benchmarks use to tell when every vector written is in the graph.
pub struct BacklogWatch {
    pool: Pool,
}

impl BacklogWatch {
    /// A watch over the database `config` names; connects on first use.
    pub fn new(config: &StoreConfig) -> Result<BacklogWatch, StoreError> {
        Ok(BacklogWatch {
            // Nothing is searched through this pool.
            pool: super::connect::pool(config, super::HNSW_EF_SEARCH_DENSE)?,
        })
    }

    /// Counts the vectors written but not yet in the graph, across collections.
    pub async fn pending(&self) -> Result<i64, StoreError> {
        pending(&self.pool).await
    }
}

/// Counts the rows waiting to enter the graph, across collections.
pub(super) async fn pending(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .query_one(
            "SELECT count(*) FROM deeprecall_documents WHERE folded IS NULL",
            &[],
        )
        .await?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_double_the_pause_up_to_its_bound() {
        let pauses: Vec<u64> = (1..=9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            pauses,
            [
                400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000
            ]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
