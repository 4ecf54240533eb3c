//! Cache in a SQLite file: entries outlive a restart and can be shared by several processes on
//! one host, with least-recently-used eviction within an entry count and a time to live per
//! entry.
//!
//! One connection behind a mutex serves the whole process and every statement runs on tokio's
//! blocking pool. The file is in WAL mode, so another process can read while this one writes.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::task::AbortHandle;

use super::{Cache, CacheError, CacheKey, CacheStats};
use crate::lane::Lane;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Expired rows deleted per purge transaction, so that a large purge does not hold the
/// connection (and the file's write lock) long enough to stall lookups.
const PURGE_BATCH: i64 = 1_000;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS entries (
    collection TEXT NOT NULL,
    digest     TEXT NOT NULL,
    value      BLOB NOT NULL,
    -- Unix time in milliseconds after which the entry is dead.
    expires_at INTEGER NOT NULL,
    -- Unix time in milliseconds of the last use, nudged forward so that every use gets a
    -- distinct, increasing value (see `next_use!`).
    last_used  INTEGER NOT NULL,
    PRIMARY KEY (collection, digest)
);
CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
"#;

/// Expands to the `last_used` stamp of a use at `?1` (now, in milliseconds). Uses within one
/// millisecond would otherwise tie and make the eviction order arbitrary, and a clock stepped
/// backwards would otherwise make a fresh use look old; `max(last_used)` is read from its index.
macro_rules! next_use {
    () => {
        "max(?1, (SELECT coalesce(max(last_used), 0) + 1 FROM entries))"
    };
}

/// Settings of a [`SqliteCache`].
#[derive(Debug, Clone)]
pub struct SqliteCacheConfig {
    /// Database file; its parent directory is created if missing.
    pub path: PathBuf,
    /// Most entries held, expired or not; `0` stores nothing.
    pub max_entries: usize,
    /// Period of the background deletion of expired rows; `Duration::ZERO` disables it, and
    /// expired rows then go only when looked up or when room is needed.
    pub purge_interval: Duration,
}

impl Default for SqliteCacheConfig {
    fn default() -> Self {
        SqliteCacheConfig {
            path: PathBuf::from("./deeprecall-cache.db"),
            max_entries: 100_000,
            purge_interval: Duration::from_secs(60),
        }
    }
}

/// An LRU cache with TTL, held in a SQLite file.
pub struct SqliteCache {
    config: SqliteCacheConfig,
    connection: Arc<Mutex<Connection>>,
    /// The connection's one thread: lookups queue for it rather than each holding a thread
    /// parked on the connection's lock.
    thread: Lane,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    purge: Option<AbortHandle>,
}

impl fmt::Debug for SqliteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteCache")
            .field("config", &self.config)
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .field("misses", &self.misses.load(Ordering::Relaxed))
            .field("evictions", &self.evictions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteCache {
    /// Opens the cache file, creating it and its parent directory if missing, and starts the
    /// background purge of expired rows.
    pub async fn open(config: SqliteCacheConfig) -> Result<SqliteCache, CacheError> {
        let path = config.path.clone();
        let connection = tokio::task::spawn_blocking(move || open_connection(&path))
            .await
            .map_err(task_failure)??;
        let connection = Arc::new(Mutex::new(connection));
        let thread = Lane::new("cache-sqlite", 1).map_err(|error| {
            CacheError::Unavailable(format!("cannot start the sqlite cache's thread: {error}"))
        })?;
        let purge = (!config.purge_interval.is_zero()).then(|| {
            tokio::spawn(purge_expired_periodically(
                Arc::downgrade(&connection),
                config.purge_interval,
            ))
            .abort_handle()
        });
        Ok(SqliteCache {
            config,
            connection,
            thread,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            purge,
        })
    }

    /// Runs `work` on the connection, on its thread.
    async fn with_connection<T, F>(&self, work: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        self.thread
            .run(move || work(&mut connection.lock()))
            .await
            .map_err(|error| CacheError::Unavailable(format!("sqlite cache: {error}")))?
            .map_err(sqlite_failure)
    }
}

impl Drop for SqliteCache {
    fn drop(&mut self) {
        // The purge task would notice the dropped connection only at its next tick; stopping
        // it now frees the task at once.
        if let Some(purge) = &self.purge {
            purge.abort();
        }
    }
}

#[async_trait]
impl Cache for SqliteCache {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let (collection, digest) = (key.collection.clone(), key.digest.clone());
        let value = self
            .with_connection(move |connection| {
                let now = now_millis();
                // Reading first keeps a plain miss free of any write.
                let found: Option<(Vec<u8>, i64)> = connection
                    .prepare_cached(
                        "SELECT value, expires_at FROM entries
                         WHERE collection = ?1 AND digest = ?2",
                    )?
                    .query_row(params![collection, digest], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                match found {
                    None => Ok(None),
                    Some((_, expires_at)) if expires_at <= now => {
                        // The expiry condition spares a row that another process has just
                        // refreshed.
                        connection
                            .prepare_cached(
                                "DELETE FROM entries
                                 WHERE collection = ?1 AND digest = ?2 AND expires_at <= ?3",
                            )?
                            .execute(params![collection, digest, now])?;
                        Ok(None)
                    }
                    Some((value, _)) => {
                        connection
                            .prepare_cached(concat!(
                                "UPDATE entries SET last_used = ",
                                next_use!(),
                                " WHERE collection = ?2 AND digest = ?3"
                            ))?
                            .execute(params![now, collection, digest])?;
                        Ok(Some(value))
                    }
                }
            })
            .await
            // A lookup that failed found nothing: a miss.
            .inspect_err(|_| {
                self.misses.fetch_add(1, Ordering::Relaxed);
            })?;
        let counter = if value.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    async fn put(&self, key: &CacheKey, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        if self.config.max_entries == 0 {
            return Ok(());
        }
        let max_entries = i64::try_from(self.config.max_entries).unwrap_or(i64::MAX);
        let (collection, digest) = (key.collection.clone(), key.digest.clone());
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let evicted = self
            .with_connection(move |connection| {
                let now = now_millis();
                // IMMEDIATE takes the write lock up front: a deferred transaction that reads
                // and then writes can fail with SQLITE_BUSY when another process wrote in
                // between, and the busy timeout does not help there.
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                transaction
                    .prepare_cached(concat!(
                        "INSERT INTO entries (collection, digest, value, expires_at, last_used)
                         VALUES (?2, ?3, ?4, ?5, ",
                        next_use!(),
                        ") ON CONFLICT (collection, digest) DO UPDATE SET
                             value = excluded.value,
                             expires_at = excluded.expires_at,
                             last_used = excluded.last_used"
                    ))?
                    .execute(params![
                        now,
                        collection,
                        digest,
                        value,
                        now.saturating_add(ttl)
                    ])?;
                let mut evicted = 0;
                let held: i64 = transaction
                    .prepare_cached("SELECT count(*) FROM entries")?
                    .query_row([], |row| row.get(0))?;
                if held > max_entries {
                    // Dead rows make room first: dropping a live entry while dead ones
                    // remain would lose a hit for nothing, and is not an eviction.
                    let expired = transaction
                        .prepare_cached("DELETE FROM entries WHERE expires_at <= ?1")?
                        .execute([now])?;
                    let surplus = held - max_entries - i64::try_from(expired).unwrap_or(0);
                    if surplus > 0 {
                        evicted = transaction
                            .prepare_cached(
                                "DELETE FROM entries WHERE rowid IN
                                 (SELECT rowid FROM entries ORDER BY last_used LIMIT ?1)",
                            )?
                            .execute([surplus])?;
                    }
                }
                transaction.commit()?;
                Ok(evicted)
            })
            .await?;
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<(), CacheError> {
        let (collection, digest) = (key.collection.clone(), key.digest.clone());
        self.with_connection(move |connection| {
            connection
                .prepare_cached("DELETE FROM entries WHERE collection = ?1 AND digest = ?2")?
                .execute(params![collection, digest])
                .map(drop)
        })
        .await
    }

    async fn clear(&self, collection: Option<&str>) -> Result<u64, CacheError> {
        let collection = collection.map(str::to_owned);
        let deleted = self
            .with_connection(move |connection| match collection {
                Some(collection) => connection
                    .prepare_cached("DELETE FROM entries WHERE collection = ?1")?
                    .execute([collection]),
                None => connection
                    .prepare_cached("DELETE FROM entries")?
                    .execute([]),
            })
            .await?;
        Ok(deleted as u64)
    }

    async fn stats(&self) -> Result<CacheStats, CacheError> {
        let entries: i64 = self
            .with_connection(|connection| {
                connection
                    .prepare_cached("SELECT count(*) FROM entries WHERE expires_at > ?1")?
                    .query_row([now_millis()], |row| row.get(0))
            })
            .await?;
        Ok(CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: u64::try_from(entries).unwrap_or(0),
            evictions: self.evictions.load(Ordering::Relaxed),
            health: None,
        })
    }
}

fn sqlite_failure(err: rusqlite::Error) -> CacheError {
    CacheError::Unavailable(format!("sqlite cache: {err}"))
}

fn task_failure(err: tokio::task::JoinError) -> CacheError {
    CacheError::Unavailable(format!("sqlite cache task failed: {err}"))
}

fn open_connection(path: &std::path::Path) -> Result<Connection, CacheError> {
    let failure = |err: &dyn fmt::Display| {
        CacheError::Unavailable(format!("opening sqlite cache {}: {err}", path.display()))
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|err| failure(&err))?;
    }
    let connection = Connection::open(path).map_err(|err| failure(&err))?;
    configure(&connection).map_err(|err| failure(&err))?;
    Ok(connection)
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    // Set first: switching to WAL and creating the schema need locks that another process
    // opening the same file may hold for a moment.
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still correct, but readers and the writer block each other.
        tracing::warn!(journal_mode = %mode, "sqlite cache refused WAL mode");
    }
    // NORMAL syncs only at checkpoints: a power loss may drop the last writes, which a cache
    // can afford, but in WAL mode never corrupts the file.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.execute_batch(SCHEMA)
}

/// Deletes expired rows every `interval` until the cache owning `connection` is dropped. It
/// holds only a weak reference so that it never keeps the connection open by itself.
async fn purge_expired_periodically(connection: Weak<Mutex<Connection>>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A purge that overran its period needs no catching up: one pass removes every dead row.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(connection) = connection.upgrade() else {
            return;
        };
        let purged = tokio::task::spawn_blocking(move || purge_expired(&connection))
            .await
            .map_err(task_failure)
            .and_then(|result| result.map_err(sqlite_failure));
        match purged {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "sqlite cache purged expired entries"),
            Err(err) => tracing::warn!(error = %err, "sqlite cache purge failed"),
        }
    }
}

/// Deletes every expired row, in batches; returns how many went. The lock is taken per batch so
/// that lookups interleave with a long purge.
fn purge_expired(connection: &Mutex<Connection>) -> rusqlite::Result<u64> {
    let now = now_millis();
    let mut purged = 0;
    loop {
        let deleted = connection
            .lock()
            .prepare_cached(
                "DELETE FROM entries WHERE rowid IN
                 (SELECT rowid FROM entries WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, PURGE_BATCH])?;
        purged += deleted as u64;
        if (deleted as i64) < PURGE_BATCH {
            return Ok(purged);
        }
    }
}

/// Returns the wall-clock time in Unix milliseconds; the stored expiry times must mean the same
/// to every process and across restarts, which a monotonic clock cannot give.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tempfile::TempDir;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(collection: &str, digest: &str) -> CacheKey {
        CacheKey {
            collection: collection.to_string(),
            digest: digest.to_string(),
        }
    }

    fn config(dir: &TempDir) -> SqliteCacheConfig {
        SqliteCacheConfig {
            // A missing subdirectory checks that `open` creates the parent.
            path: dir.path().join("cache").join("cache.db"),
            ..SqliteCacheConfig::default()
        }
    }

    async fn open(config: SqliteCacheConfig) -> SqliteCache {
        SqliteCache::open(config).await.expect("cache opens")
    }

    /// Counts the rows in the file, expired or not, through a connection of its own.
    fn rows_in(path: &Path) -> i64 {
        Connection::open(path)
            .and_then(|connection| {
                connection.query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
            })
            .expect("rows counted")
    }

    #[tokio::test]
    async fn a_stored_value_is_found_until_it_expires() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        cache
            .put(&key("c", "a"), b"one".to_vec(), HOUR)
            .await
            .expect("put");
        cache
            .put(&key("c", "b"), b"two".to_vec(), Duration::ZERO)
            .await
            .expect("put");
        assert_eq!(
            cache.get(&key("c", "a")).await.expect("get"),
            Some(b"one".to_vec())
        );
        assert_eq!(cache.get(&key("c", "b")).await.expect("get"), None);
        let stats = cache.stats().await.expect("stats");
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
        // The lookup of the expired entry deleted its row.
        assert_eq!(rows_in(&config(&dir).path), 1);
    }

    #[tokio::test]
    async fn a_second_put_replaces_the_value_and_its_expiry() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        cache
            .put(&key("c", "a"), vec![1], Duration::ZERO)
            .await
            .expect("put");
        cache.put(&key("c", "a"), vec![2], HOUR).await.expect("put");
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), Some(vec![2]));
        assert_eq!(cache.stats().await.expect("stats").entries, 1);
    }

    #[tokio::test]
    async fn the_least_recently_used_entry_is_evicted_first() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(SqliteCacheConfig {
            max_entries: 2,
            ..config(&dir)
        })
        .await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache.put(&key("c", "b"), vec![2], HOUR).await.expect("put");
        cache.get(&key("c", "a")).await.expect("get");
        cache.put(&key("c", "c"), vec![3], HOUR).await.expect("put");
        assert!(cache.get(&key("c", "a")).await.expect("get").is_some());
        assert!(cache.get(&key("c", "b")).await.expect("get").is_none());
        assert!(cache.get(&key("c", "c")).await.expect("get").is_some());
        let stats = cache.stats().await.expect("stats");
        assert_eq!((stats.entries, stats.evictions), (2, 1));
    }

    #[tokio::test]
    async fn expired_entries_make_room_before_live_ones_are_evicted() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(SqliteCacheConfig {
            max_entries: 2,
            ..config(&dir)
        })
        .await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache
            .put(&key("c", "dead"), vec![2], Duration::ZERO)
            .await
            .expect("put");
        cache.put(&key("c", "b"), vec![3], HOUR).await.expect("put");
        assert!(cache.get(&key("c", "a")).await.expect("get").is_some());
        assert!(cache.get(&key("c", "b")).await.expect("get").is_some());
        let stats = cache.stats().await.expect("stats");
        assert_eq!((stats.entries, stats.evictions), (2, 0));
    }

    #[tokio::test]
    async fn a_write_that_fits_leaves_dead_rows_to_the_purge_task() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(SqliteCacheConfig {
            max_entries: 2,
            purge_interval: Duration::ZERO,
            ..config(&dir)
        })
        .await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache
            .put(&key("c", "dead"), vec![2], Duration::ZERO)
            .await
            .expect("put");
        // Two rows in a table of two: nothing to make room for, so no delete is paid.
        assert_eq!(rows_in(&config(&dir).path), 2);
    }

    #[tokio::test]
    async fn a_file_reopened_with_fewer_entries_allowed_is_cut_down_at_the_next_write() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        for name in ["a", "b", "c", "d", "e", "f"] {
            cache
                .put(&key("c", name), vec![1], HOUR)
                .await
                .expect("put");
        }
        drop(cache);
        let cache = open(SqliteCacheConfig {
            max_entries: 2,
            ..config(&dir)
        })
        .await;
        cache.put(&key("c", "g"), vec![2], HOUR).await.expect("put");
        let stats = cache.stats().await.expect("stats");
        assert_eq!((stats.entries, stats.evictions), (2, 5));
        assert!(cache.get(&key("c", "g")).await.expect("get").is_some());
    }

    #[tokio::test]
    async fn a_cache_of_no_entries_stores_nothing() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(SqliteCacheConfig {
            max_entries: 0,
            ..config(&dir)
        })
        .await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), None);
        assert_eq!(cache.stats().await.expect("stats").evictions, 0);
    }

    #[tokio::test]
    async fn a_deleted_entry_is_gone_and_its_neighbours_stay() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache.put(&key("c", "b"), vec![2], HOUR).await.expect("put");
        cache.delete(&key("c", "a")).await.expect("delete");
        cache.delete(&key("c", "missing")).await.expect("delete");
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), None);
        assert_eq!(cache.get(&key("c", "b")).await.expect("get"), Some(vec![2]));
        assert_eq!(cache.stats().await.expect("stats").evictions, 0);
    }

    #[tokio::test]
    async fn clearing_one_collection_leaves_the_others() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        cache.put(&key("a", "1"), vec![1], HOUR).await.expect("put");
        cache.put(&key("a", "2"), vec![1], HOUR).await.expect("put");
        cache.put(&key("b", "1"), vec![1], HOUR).await.expect("put");
        assert_eq!(cache.clear(Some("a")).await.expect("clear"), 2);
        assert!(cache.get(&key("a", "1")).await.expect("get").is_none());
        assert!(cache.get(&key("b", "1")).await.expect("get").is_some());
        assert_eq!(cache.clear(None).await.expect("clear"), 1);
        assert_eq!(cache.stats().await.expect("stats").entries, 0);
    }

    #[tokio::test]
    async fn stats_name_the_backend_and_count_since_start() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        assert_eq!(cache.backend(), "sqlite");
        assert_eq!(cache.stats().await.expect("stats"), CacheStats::default());
        cache.get(&key("c", "missing")).await.expect("get");
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache.get(&key("c", "a")).await.expect("get");
        cache.get(&key("c", "a")).await.expect("get");
        let stats = cache.stats().await.expect("stats");
        assert_eq!(
            stats,
            CacheStats {
                hits: 2,
                misses: 1,
                entries: 1,
                evictions: 0,
                health: None,
            }
        );
    }

    #[tokio::test]
    async fn entries_survive_closing_and_reopening_the_file() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(config(&dir)).await;
        cache
            .put(&key("c", "a"), b"kept".to_vec(), HOUR)
            .await
            .expect("put");
        drop(cache);
        let reopened = open(config(&dir)).await;
        assert_eq!(
            reopened.get(&key("c", "a")).await.expect("get"),
            Some(b"kept".to_vec())
        );
        // Counters are per process, the entries are the file's.
        let stats = reopened.stats().await.expect("stats");
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 0, 1));
    }

    #[tokio::test]
    async fn the_purge_task_removes_expired_rows() {
        let dir = TempDir::new().expect("temp dir");
        let path = config(&dir).path;
        let cache = open(SqliteCacheConfig {
            purge_interval: Duration::from_millis(10),
            ..config(&dir)
        })
        .await;
        cache
            .put(&key("c", "dead"), vec![1], Duration::ZERO)
            .await
            .expect("put");
        cache
            .put(&key("c", "live"), vec![2], HOUR)
            .await
            .expect("put");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rows_in(&path) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expired row still present"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cache.get(&key("c", "live")).await.expect("get").is_some());
        // The purge happened in the background: no lookup of the dead entry counted a miss.
        assert_eq!(cache.stats().await.expect("stats").misses, 0);
    }

    #[tokio::test]
    async fn a_purge_goes_on_batch_after_batch_and_counts_what_it_removed() {
        let dir = TempDir::new().expect("temp dir");
        let path = config(&dir).path;
        let cache = open(SqliteCacheConfig {
            purge_interval: Duration::ZERO,
            ..config(&dir)
        })
        .await;
        cache
            .put(&key("c", "live"), vec![1], HOUR)
            .await
            .expect("put");
        let dead = 2 * PURGE_BATCH + 500;
        Connection::open(&path)
            .and_then(|connection| {
                connection.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                     INSERT INTO entries (collection, digest, value, expires_at, last_used)
                     SELECT 'c', 'dead-' || i, x'00', 0, 0 FROM n",
                    [dead],
                )
            })
            .expect("dead rows written");
        assert_eq!(
            purge_expired(&cache.connection).expect("purged"),
            dead as u64
        );
        assert_eq!(rows_in(&path), 1);
    }

    #[tokio::test]
    async fn expiry_times_are_wall_clock_milliseconds_shared_with_other_processes() {
        let dir = TempDir::new().expect("temp dir");
        let path = config(&dir).path;
        let cache = open(config(&dir)).await;
        // Rows another process wrote, one that expired a second ago, one that lives an hour.
        let wall_clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        Connection::open(&path)
            .and_then(|connection| {
                connection.execute(
                    "INSERT INTO entries (collection, digest, value, expires_at, last_used)
                     VALUES ('c', 'past', x'01', ?1, 0), ('c', 'future', x'02', ?2, 0)",
                    [wall_clock - 1_000, wall_clock + 3_600_000],
                )
            })
            .expect("rows written");
        assert_eq!(cache.get(&key("c", "past")).await.expect("get"), None);
        assert_eq!(
            cache.get(&key("c", "future")).await.expect("get"),
            Some(vec![2])
        );
    }

    #[tokio::test]
    async fn dropping_the_cache_closes_its_connection_despite_the_purge_task() {
        let dir = TempDir::new().expect("temp dir");
        let cache = open(SqliteCacheConfig {
            purge_interval: Duration::from_millis(1),
            ..config(&dir)
        })
        .await;
        let connection = Arc::downgrade(&cache.connection);
        drop(cache);
        // A purge already running when the cache went may hold the connection a moment longer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while connection.upgrade().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connection still open"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn two_caches_on_the_same_file_see_each_others_writes() {
        let dir = TempDir::new().expect("temp dir");
        let first = open(config(&dir)).await;
        let second = open(config(&dir)).await;
        first.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        second
            .put(&key("c", "b"), vec![2], HOUR)
            .await
            .expect("put");
        assert_eq!(
            second.get(&key("c", "a")).await.expect("get"),
            Some(vec![1])
        );
        assert_eq!(first.get(&key("c", "b")).await.expect("get"), Some(vec![2]));
        assert_eq!(first.clear(Some("c")).await.expect("clear"), 2);
        assert_eq!(second.get(&key("c", "a")).await.expect("get"), None);
    }

    #[tokio::test]
    async fn an_unopenable_path_is_reported_as_unavailable() {
        let dir = TempDir::new().expect("temp dir");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"not a directory").expect("file written");
        let result = SqliteCache::open(SqliteCacheConfig {
            path: blocker.join("cache.db"),
            ..SqliteCacheConfig::default()
        })
        .await;
        assert!(matches!(result, Err(CacheError::Unavailable(_))));
    }
}
