//! Cache in Redis: entries are shared by every replica of the service and outlive restarts, and
//! Redis expires them itself.
//!
//! Redis is a dependency the service must survive losing. The cache connects in the background
//! and never waits for Redis: until the first connection is made, and whenever Redis is slow or
//! down, each operation fails within the operation timeout as [`CacheError::Unavailable`], which
//! the layer above treats as a miss.
//!
//! Keys are `{prefix}:{collection}:{digest}`. A `:` or `%` inside the collection or the digest is
//! percent-encoded, so that every key of a cache has exactly two parts after its prefix; clearing
//! and counting rely on that to skip the keys of a cache whose prefix extends this one's (such as
//! `deeprecall:result` next to `deeprecall`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::{Cmd, FromRedisValue};
use async_trait::async_trait;

use super::{Cache, CacheError, CacheHealth, CacheKey, CacheStats};
use crate::redis_link::{Failure, RedisLink, redacted_url};

/// Keys examined by each SCAN call: few round trips, yet no single call that keeps a
/// single-threaded Redis busy for long.
const SCAN_COUNT: u64 = 1_000;
/// Most entries counted by `stats`; the count stops there, so that stats stay cheap on a huge
/// keyspace.
const MAX_COUNTED_ENTRIES: u64 = 1_000_000;
/// Longest time to live sent to Redis, which rejects an expiry that overflows its clock
/// arithmetic (about 73 million years).
const MAX_TTL_MILLIS: u64 = u64::MAX / 8;

/// Settings of a [`RedisCache`].
#[derive(Clone)]
pub struct RedisCacheConfig {
    /// Where Redis listens: `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS, or
    /// `unix:///path/to/socket` (`redis+unix://` too, with `?db=…&pass=…`).
    pub url: String,
    /// Namespace of the keys, e.g. `deeprecall:result`: keys are `{prefix}:{collection}:{digest}`,
    /// so that several caches can share one Redis.
    pub prefix: String,
    /// Limit of each Redis call, so that a hung Redis never stalls a query for longer; with
    /// `Duration::ZERO` every call fails.
    pub operation_timeout: Duration,
}

impl Default for RedisCacheConfig {
    fn default() -> Self {
        RedisCacheConfig {
            url: "redis://127.0.0.1:6379".to_string(),
            prefix: "deeprecall".to_string(),
            operation_timeout: Duration::from_millis(250),
        }
    }
}

impl fmt::Debug for RedisCacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheConfig")
            .field("url", &redacted_url(&self.url))
            .field("prefix", &self.prefix)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// A cache with TTL, held in Redis and degrading to misses while Redis is unreachable.
pub struct RedisCache {
    shared: Arc<Shared>,
}

/// State of a [`RedisCache`].
struct Shared {
    config: RedisCacheConfig,
    link: RedisLink,
    hits: AtomicU64,
    misses: AtomicU64,
    failures: AtomicU64,
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("RedisCache")
            .field("config", &shared.config)
            .field("connected", &shared.link.is_connected())
            .field("hits", &shared.hits.load(Ordering::Relaxed))
            .field("misses", &shared.misses.load(Ordering::Relaxed))
            .field("failures", &shared.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Checks the URL and starts connecting in the background; Redis need not be up. Until the
    /// first connection is made every operation fails at once as [`CacheError::Unavailable`];
    /// after that the connection is re-established by itself whenever it is lost.
    pub async fn open(config: RedisCacheConfig) -> Result<RedisCache, CacheError> {
        let link = RedisLink::open(
            format!("redis cache {}", config.prefix),
            &config.url,
            config.operation_timeout,
        )
        .map_err(|reason| CacheError::Unavailable(format!("redis cache: {reason}")))?;
        let shared = Arc::new(Shared {
            config,
            link,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        Ok(RedisCache { shared })
    }
}

#[async_trait]
impl Cache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let shared = &self.shared;
        let value: Option<Vec<u8>> = match shared
            .run("GET", ::redis::cmd("GET").arg(shared.key(key)))
            .await
        {
            Ok(value) => value,
            Err(error) => {
                // A lookup that failed found nothing: a miss, besides a failure.
                shared.misses.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
        };
        let counter = if value.is_some() {
            &shared.hits
        } else {
            &shared.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    async fn put(&self, key: &CacheKey, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let shared = &self.shared;
        let key = shared.key(key);
        if ttl.is_zero() {
            // Nothing to store, but an older value must not outlive this put: the other
            // backends replace it with the dead entry.
            let _: u64 = shared
                .run("UNLINK", ::redis::cmd("UNLINK").arg(&key))
                .await?;
            return Ok(());
        }
        // At least 1 ms: Redis refuses `PX 0`, and a shorter TTL still means "store it".
        let millis = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_MILLIS);
        shared
            .run(
                "SET",
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis),
            )
            .await
    }

    async fn delete(&self, key: &CacheKey) -> Result<(), CacheError> {
        let shared = &self.shared;
        let _: u64 = shared
            .run("UNLINK", ::redis::cmd("UNLINK").arg(shared.key(key)))
            .await?;
        Ok(())
    }

    async fn clear(&self, collection: Option<&str>) -> Result<u64, CacheError> {
        let shared = &self.shared;
        let prefix = escape_glob(&shared.config.prefix);
        let pattern = match collection {
            Some(collection) => format!("{prefix}:{}:*", escape_glob(&encode_part(collection))),
            None => format!("{prefix}:*"),
        };
        let (mut cursor, mut removed) = (0, 0);
        loop {
            let (next, keys) = shared
                .scan_page(cursor, &pattern)
                .await
                .map_err(|failure| shared.fail("SCAN", &failure))?;
            if !keys.is_empty() {
                let mut unlink = ::redis::cmd("UNLINK");
                for key in &keys {
                    unlink.arg(key.as_slice());
                }
                // UNLINK's count, not the page's length: SCAN may return a key twice, and a key
                // may expire between the two calls.
                let went: u64 = shared.run("UNLINK", &unlink).await?;
                removed += went;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn stats(&self) -> Result<CacheStats, CacheError> {
        let shared = &self.shared;
        let started = Instant::now();
        // A failed probe shows as `reachable: false` and is not counted in `failures`, which
        // count lost lookups and stores: polling the stats of a down Redis must not inflate them.
        let reachable = shared.call::<()>(&::redis::cmd("PING")).await.is_ok();
        let probe_latency = if reachable {
            started.elapsed()
        } else {
            Duration::ZERO
        };
        let entries = if reachable {
            match shared.count_entries().await {
                Ok(entries) => entries,
                Err(failure) => {
                    shared.warn("SCAN", &failure);
                    0
                }
            }
        } else {
            0
        };
        Ok(CacheStats {
            hits: shared.hits.load(Ordering::Relaxed),
            misses: shared.misses.load(Ordering::Relaxed),
            entries,
            evictions: 0,
            health: Some(CacheHealth {
                reachable,
                probe_latency,
                failures: shared.failures.load(Ordering::Relaxed),
            }),
        })
    }
}

impl Shared {
    /// Returns the Redis key of `key`.
    fn key(&self, key: &CacheKey) -> String {
        format!(
            "{}:{}:{}",
            self.config.prefix,
            encode_part(&key.collection),
            encode_part(&key.digest)
        )
    }

    /// Sends `command` and waits at most the operation timeout for its answer.
    async fn call<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, Failure> {
        self.link.call(command).await
    }

    /// Sends `command` like [`Shared::call`]; a failure is counted, logged at most once per
    /// warn interval, and returned as [`CacheError::Unavailable`].
    async fn run<T: FromRedisValue>(
        &self,
        operation: &'static str,
        command: &Cmd,
    ) -> Result<T, CacheError> {
        self.call(command)
            .await
            .map_err(|failure| self.fail(operation, &failure))
    }

    /// Counts a failed operation, logs it if the warn interval allows, and returns its error.
    fn fail(&self, operation: &'static str, failure: &Failure) -> CacheError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.warn(operation, failure);
        CacheError::Unavailable(format!("redis cache {operation}: {failure}"))
    }

    /// Logs a failure through the caches' one throttle.
    fn warn(&self, operation: &'static str, failure: &dyn fmt::Display) {
        let error = format!(
            "redis {operation} at {} (prefix {}): {failure}; {} failure(s) since start",
            redacted_url(&self.config.url),
            self.config.prefix,
            self.failures.load(Ordering::Relaxed)
        );
        super::warn_failure("redis", "redis unavailable", &error);
    }

    /// Returns the next cursor and the keys of this cache among one SCAN page of `pattern`.
    async fn scan_page(&self, cursor: u64, pattern: &str) -> Result<(u64, Vec<Vec<u8>>), Failure> {
        let (next, mut keys): (u64, Vec<Vec<u8>>) = self
            .call(
                ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT),
            )
            .await?;
        keys.retain(|key| self.is_own_key(key));
        Ok((next, keys))
    }

    /// Tells whether `key` is a `{prefix}:{collection}:{digest}` of this cache rather than a key
    /// of a cache whose prefix starts with this one's.
    fn is_own_key(&self, key: &[u8]) -> bool {
        key.strip_prefix(self.config.prefix.as_bytes())
            .and_then(|rest| rest.strip_prefix(b":"))
            .is_some_and(|parts| parts.iter().filter(|&&byte| byte == b':').count() == 1)
    }

    /// Counts the keys of this cache, up to [`MAX_COUNTED_ENTRIES`]. SCAN may return a key
    /// twice while Redis resizes its table, so the count is approximate under writes.
    async fn count_entries(&self) -> Result<u64, Failure> {
        let pattern = format!("{}:*", escape_glob(&self.config.prefix));
        let (mut cursor, mut entries) = (0, 0);
        loop {
            let (next, keys) = self.scan_page(cursor, &pattern).await?;
            entries += keys.len() as u64;
            if next == 0 || entries >= MAX_COUNTED_ENTRIES {
                return Ok(entries.min(MAX_COUNTED_ENTRIES));
            }
            cursor = next;
        }
    }
}

/// Percent-encodes `%` and `:` in a part of a key, so that a part never adds a separator.
fn encode_part(part: &str) -> Cow<'_, str> {
    if part.contains(['%', ':']) {
        Cow::Owned(part.replace('%', "%25").replace(':', "%3A"))
    } else {
        Cow::Borrowed(part)
    }
}

/// Escapes the characters that SCAN's MATCH reads as a pattern, so that `text` matches only
/// itself.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_test_server::{RedisServer, free_port};

    const HOUR: Duration = Duration::from_secs(3600);
    /// Longest a test waits for what should happen at once, such as an operation against a
    /// dead or hung Redis giving up: it only catches a hang, and says nothing of speed.
    const HANG: Duration = Duration::from_secs(20);

    fn key(collection: &str, digest: &str) -> CacheKey {
        CacheKey {
            collection: collection.to_string(),
            digest: digest.to_string(),
        }
    }

    fn config(url: &str, prefix: &str) -> RedisCacheConfig {
        RedisCacheConfig {
            url: url.to_string(),
            prefix: prefix.to_string(),
            ..RedisCacheConfig::default()
        }
    }

    /// Opens a cache and waits until its background connection is made.
    async fn connected(url: &str, prefix: &str) -> RedisCache {
        let cache = RedisCache::open(config(url, prefix))
            .await
            .expect("cache opens");
        let deadline = Instant::now() + HANG;
        while !cache.shared.link.is_connected() {
            assert!(Instant::now() < deadline, "cache did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cache
    }

    /// Awaits an operation that must give up rather than hang.
    async fn bounded<T>(operation: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(HANG, operation)
            .await
            .expect("the operation gave up instead of hanging")
    }

    fn is_unavailable<T>(result: &Result<T, CacheError>) -> bool {
        matches!(result, Err(CacheError::Unavailable(_)))
    }

    fn health_of(stats: &CacheStats) -> CacheHealth {
        stats.health.expect("redis stats carry health")
    }

    #[tokio::test]
    async fn a_stored_value_is_found_until_it_expires() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        // Long enough that only a stalled machine could miss the first read, and short enough
        // to wait out.
        let ttl = Duration::from_secs(2);
        // Not UTF-8: values are opaque bytes.
        let value = vec![0, 159, 146, 150];
        cache
            .put(&key("c", "a"), value.clone(), ttl)
            .await
            .expect("put");
        let stored_at = Instant::now();
        cache
            .put(&key("c", "b"), b"long".to_vec(), HOUR)
            .await
            .expect("put");
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), Some(value));
        // Redis expires the key by its own clock: past the time to live it is gone.
        tokio::time::sleep(ttl.saturating_sub(stored_at.elapsed()) + Duration::from_millis(50))
            .await;
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), None);
        assert_eq!(
            cache.get(&key("c", "b")).await.expect("get"),
            Some(b"long".to_vec())
        );
        let stats = cache.stats().await.expect("stats");
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
    }

    #[tokio::test]
    async fn a_put_without_time_to_live_stores_nothing_and_drops_the_older_value() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache
            .put(&key("c", "a"), vec![2], Duration::ZERO)
            .await
            .expect("put");
        cache
            .put(&key("c", "b"), vec![3], Duration::ZERO)
            .await
            .expect("put");
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), None);
        assert_eq!(cache.stats().await.expect("stats").entries, 0);
    }

    #[tokio::test]
    async fn a_deleted_entry_is_gone_and_its_neighbours_stay() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache.put(&key("c", "b"), vec![2], HOUR).await.expect("put");
        cache.delete(&key("c", "a")).await.expect("delete");
        cache.delete(&key("c", "missing")).await.expect("delete");
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), None);
        assert_eq!(cache.get(&key("c", "b")).await.expect("get"), Some(vec![2]));
    }

    #[tokio::test]
    async fn clearing_one_collection_leaves_the_others() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        for (collection, digest) in [("a", "1"), ("a", "2"), ("b", "1")] {
            cache
                .put(&key(collection, digest), vec![1], HOUR)
                .await
                .expect("put");
        }
        // Glob characters and separators in names must not widen what a clear removes.
        for collection in ["a*", "a:b", "a?", "[a]"] {
            cache
                .put(&key(collection, "1"), vec![2], HOUR)
                .await
                .expect("put");
        }
        assert_eq!(cache.clear(Some("a")).await.expect("clear"), 2);
        assert_eq!(cache.get(&key("a", "1")).await.expect("get"), None);
        assert_eq!(cache.get(&key("b", "1")).await.expect("get"), Some(vec![1]));
        assert_eq!(
            cache.get(&key("a:b", "1")).await.expect("get"),
            Some(vec![2])
        );
        assert_eq!(cache.clear(Some("a*")).await.expect("clear"), 1);
        assert_eq!(
            cache.get(&key("a?", "1")).await.expect("get"),
            Some(vec![2])
        );
        assert_eq!(cache.clear(Some("missing")).await.expect("clear"), 0);
        assert_eq!(cache.clear(None).await.expect("clear"), 4);
        assert_eq!(cache.stats().await.expect("stats").entries, 0);
    }

    #[tokio::test]
    async fn clearing_walks_every_scan_page() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        let held = 2_500;
        for digest in 0..held {
            cache
                .put(&key("c", &digest.to_string()), vec![1], HOUR)
                .await
                .expect("put");
        }
        assert_eq!(cache.stats().await.expect("stats").entries, held);
        assert_eq!(cache.clear(Some("c")).await.expect("clear"), held);
        assert_eq!(cache.stats().await.expect("stats").entries, 0);
    }

    #[tokio::test]
    async fn caches_with_different_prefixes_do_not_see_each_others_keys() {
        let server = RedisServer::start();
        let url = server.url();
        let result = connected(&url, "deeprecall:result").await;
        let search = connected(&url, "deeprecall:search").await;
        // A prefix that the other two extend.
        let root = connected(&url, "deeprecall").await;
        for (cache, value) in [(&result, 1), (&search, 2), (&root, 3)] {
            cache
                .put(&key("c", "a"), vec![value], HOUR)
                .await
                .expect("put");
        }
        for (cache, value) in [(&result, 1), (&search, 2), (&root, 3)] {
            assert_eq!(
                cache.get(&key("c", "a")).await.expect("get"),
                Some(vec![value])
            );
            assert_eq!(cache.stats().await.expect("stats").entries, 1);
        }
        assert_eq!(root.clear(None).await.expect("clear"), 1);
        assert_eq!(result.clear(Some("c")).await.expect("clear"), 1);
        assert_eq!(
            search.get(&key("c", "a")).await.expect("get"),
            Some(vec![2])
        );
        assert_eq!(result.get(&key("c", "a")).await.expect("get"), None);
    }

    #[tokio::test]
    async fn stats_count_hits_misses_and_entries_and_report_a_reachable_redis() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        assert_eq!(cache.backend(), "redis");
        let stats = cache.stats().await.expect("stats");
        assert_eq!(
            (stats.hits, stats.misses, stats.entries, stats.evictions),
            (0, 0, 0, 0)
        );
        cache.get(&key("c", "missing")).await.expect("get");
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        cache.put(&key("d", "a"), vec![1], HOUR).await.expect("put");
        cache.get(&key("c", "a")).await.expect("get");
        cache.get(&key("c", "a")).await.expect("get");
        let stats = cache.stats().await.expect("stats");
        assert_eq!(
            (stats.hits, stats.misses, stats.entries, stats.evictions),
            (2, 1, 2, 0)
        );
        let health = health_of(&stats);
        assert!(health.reachable);
        assert!(health.probe_latency > Duration::ZERO);
        assert_eq!(health.failures, 0);
    }

    #[tokio::test]
    async fn a_killed_redis_fails_without_hanging_and_the_cache_recovers_when_it_returns() {
        let mut server = RedisServer::start();
        let port = server.port;
        let cache = connected(&server.url(), "test").await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        server.kill();
        for _ in 0..3 {
            let got = bounded(cache.get(&key("c", "a"))).await;
            assert!(is_unavailable(&got));
            let put = bounded(cache.put(&key("c", "b"), vec![2], HOUR)).await;
            assert!(is_unavailable(&put));
        }
        let stats = bounded(cache.stats()).await.expect("stats never fail");
        let health = health_of(&stats);
        assert!(!health.reachable);
        assert_eq!(
            (health.failures, health.probe_latency, stats.entries),
            (6, Duration::ZERO, 0)
        );
        // Failed lookups are misses, and failures.
        assert_eq!((stats.hits, stats.misses), (0, 3));

        let _server = RedisServer::start_on(port);
        let deadline = Instant::now() + HANG;
        while cache.put(&key("c", "b"), vec![2], HOUR).await.is_err() {
            assert!(Instant::now() < deadline, "cache did not reconnect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cache.get(&key("c", "b")).await.expect("get"), Some(vec![2]));
        assert!(health_of(&cache.stats().await.expect("stats")).reachable);
    }

    #[tokio::test]
    async fn a_hung_redis_times_out_and_answers_again_once_resumed() {
        let server = RedisServer::start();
        let cache = connected(&server.url(), "test").await;
        cache.put(&key("c", "a"), vec![1], HOUR).await.expect("put");
        server.signal("STOP");
        let started = Instant::now();
        let result = bounded(cache.get(&key("c", "a"))).await;
        let waited = started.elapsed();
        assert!(is_unavailable(&result));
        assert!(
            waited >= RedisCacheConfig::default().operation_timeout,
            "gave up before the operation timeout: {waited:?}"
        );
        let stats = cache.stats().await.expect("stats never fail");
        assert!(!health_of(&stats).reachable);
        assert_eq!(health_of(&stats).failures, 1);
        server.signal("CONT");
        let deadline = Instant::now() + HANG;
        loop {
            match cache.get(&key("c", "a")).await {
                Ok(value) => {
                    assert_eq!(value, Some(vec![1]));
                    break;
                }
                Err(err) => assert!(Instant::now() < deadline, "still failing: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_redis_started_after_open_becomes_usable_without_reopening() {
        let port = free_port();
        let cache = RedisCache::open(config(&format!("redis://127.0.0.1:{port}"), "test"))
            .await
            .expect("opening needs no server");
        assert!(is_unavailable(&bounded(cache.get(&key("c", "a"))).await));
        let stats = cache.stats().await.expect("stats never fail");
        assert_eq!(
            (health_of(&stats).reachable, health_of(&stats).failures),
            (false, 1)
        );

        let _server = RedisServer::start_on(port);
        let deadline = Instant::now() + HANG;
        while cache.put(&key("c", "a"), vec![1], HOUR).await.is_err() {
            assert!(Instant::now() < deadline, "cache did not connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cache.get(&key("c", "a")).await.expect("get"), Some(vec![1]));
    }

    #[tokio::test]
    async fn tls_and_unix_socket_urls_parse_without_a_server() {
        for url in [
            "rediss://:secret@127.0.0.1:1/0",
            "rediss://127.0.0.1:1/#insecure",
            "unix:///nonexistent/redis.sock",
            "redis+unix:///nonexistent/redis.sock?db=1&pass=secret",
        ] {
            let cache = RedisCache::open(config(url, "test"))
                .await
                .unwrap_or_else(|err| panic!("{url}: {err}"));
            assert!(is_unavailable(&cache.get(&key("c", "a")).await), "{url}");
        }
    }

    #[tokio::test]
    async fn a_garbage_url_is_an_error_from_open() {
        for url in [
            "",
            "not a url",
            "http://127.0.0.1:6379",
            "redis://:hunter2@127.0.0.1:6379/not-a-db",
        ] {
            match RedisCache::open(config(url, "test")).await {
                Err(CacheError::Unavailable(message)) => {
                    assert!(!message.contains("hunter2"), "{message}");
                }
                Ok(_) => panic!("{url:?} was accepted"),
            }
        }
    }

    #[tokio::test]
    async fn debug_output_never_shows_the_password() {
        let cache = RedisCache::open(config("redis://user:hunter2@127.0.0.1:1/0", "test"))
            .await
            .expect("cache opens");
        let shown = format!("{cache:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://user:***@127.0.0.1:1/0"), "{shown}");
    }

    #[tokio::test]
    async fn dropping_the_cache_stops_its_connecting_task() {
        let url = format!("redis://127.0.0.1:{}", free_port());
        let cache = RedisCache::open(config(&url, "test"))
            .await
            .expect("cache opens");
        let connector = cache.shared.link.connector();
        let shared = Arc::downgrade(&cache.shared);
        drop(cache);
        assert!(shared.upgrade().is_none(), "the task kept the cache alive");
        let deadline = Instant::now() + HANG;
        while !connector.is_finished() {
            assert!(Instant::now() < deadline, "connecting task still running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn key_parts_cannot_add_separators_or_patterns() {
        assert_eq!(encode_part("abc-1.2_x"), "abc-1.2_x");
        assert_eq!(encode_part("a:b%c"), "a%3Ab%25c");
        assert_eq!(escape_glob(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }
}
