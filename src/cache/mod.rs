//! Result caches behind one trait. Values are opaque bytes so that every backend (memory now,
//! SQLite and Redis later) stores the same encoding.

pub mod memory;
pub mod redis;
pub mod sqlite;

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub use memory::{MemoryCache, MemoryCacheConfig};
pub use redis::{RedisCache, RedisCacheConfig};
pub use sqlite::{SqliteCache, SqliteCacheConfig};

use crate::redis_link::WarnGate;

/// Shortest time between two warnings about a failing cache.
pub const FAILURE_WARN_INTERVAL: Duration = Duration::from_secs(30);

/// The one throttle every failure warning of every cache backend and level goes through: a
/// cache that is down fails every operation of every query, and would otherwise write lines
/// by the thousand. The failures themselves are all counted (`CacheHealth::failures`, the
/// misses); only the log is thinned out.
static FAILURE_WARNINGS: LazyLock<WarnGate> =
    LazyLock::new(|| WarnGate::new(FAILURE_WARN_INTERVAL));

/// Logs a cache failure, unless another was logged less than [`FAILURE_WARN_INTERVAL`] ago;
/// the next line that goes out says how many were held back.
pub(crate) fn warn_failure(source: &str, what: &str, error: &dyn fmt::Display) {
    if let Some(held_back) = FAILURE_WARNINGS.admit(Instant::now()) {
        tracing::warn!(
            source,
            %error,
            held_back,
            "cache failing ({what}); lookups are misses and stores are skipped"
        );
    }
}

/// Errors of the cache layer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache backend could not be reached.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
}

/// A cache key: the collection it belongs to (so one collection can be cleared alone) and a
/// digest of everything else that changes the cached value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Collection the entry belongs to.
    pub collection: String,
    /// Digest of the rest of the key.
    pub digest: String,
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing, or an expired entry.
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
    /// Entries dropped to stay within bounds.
    pub evictions: u64,
    /// Reachability of a remote backend (Redis), probed when stats are asked for.
    pub health: Option<CacheHealth>,
}

/// Health of a remote cache backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheHealth {
    /// Whether the probe got an answer.
    pub reachable: bool,
    /// Round trip of the probe.
    pub probe_latency: Duration,
    /// Operations that failed since start (each one a miss or a skipped store).
    pub failures: u64,
}

/// A key-value cache with per-entry time to live.
#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    /// Names the backend in stats, e.g. `memory`.
    fn backend(&self) -> &'static str;

    /// Returns false for a backend that keeps nothing, so that callers need not encode a
    /// value only for it to be thrown away.
    fn keeps_entries(&self) -> bool {
        true
    }

    /// Returns the live value under `key`, if any.
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `value` under `key` for `ttl`.
    async fn put(&self, key: &CacheKey, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError>;

    /// Removes the entry under `key`, if any.
    async fn delete(&self, key: &CacheKey) -> Result<(), CacheError>;

    /// Removes every entry, or those of one collection; returns how many went.
    async fn clear(&self, collection: Option<&str>) -> Result<u64, CacheError>;

    /// Returns the counters.
    async fn stats(&self) -> Result<CacheStats, CacheError>;
}

/// A cache that holds nothing, for `cache = "none"`.
#[derive(Debug, Default)]
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    fn backend(&self) -> &'static str {
        "none"
    }

    fn keeps_entries(&self) -> bool {
        false
    }

    async fn get(&self, _key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(None)
    }

    async fn put(
        &self,
        _key: &CacheKey,
        _value: Vec<u8>,
        _ttl: Duration,
    ) -> Result<(), CacheError> {
        Ok(())
    }

    async fn delete(&self, _key: &CacheKey) -> Result<(), CacheError> {
        Ok(())
    }

    async fn clear(&self, _collection: Option<&str>) -> Result<u64, CacheError> {
        Ok(0)
    }

    async fn stats(&self) -> Result<CacheStats, CacheError> {
        Ok(CacheStats::default())
    }
}

impl CacheKey {
    /// Builds a key for `collection` from a digest of `material`, which must hold everything
    /// that changes the cached value.
    pub fn digest_of(collection: &str, material: &serde_json::Value) -> Self {
        const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(material.to_string().as_bytes());
        let mut hex = String::with_capacity(digest.len() * 2);
        for byte in digest {
            hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        CacheKey {
            collection: collection.to_string(),
            digest: hex,
        }
    }
}

/// One level of caching (query results, or search results): a backend and the time to live
/// of its entries, storing values as JSON. A cache that fails is a miss, never an error: the
/// work is done again and the failure logged.
#[derive(Debug, Clone)]
pub struct CacheLevel {
    /// Names the level in logs, e.g. `result` or `search`.
    pub name: &'static str,
    /// Backend.
    pub cache: Arc<dyn Cache>,
    /// Time to live of new entries.
    pub ttl: Duration,
}

impl CacheLevel {
    /// Returns false when the backend keeps nothing: storing is then a no-op.
    pub fn keeps_entries(&self) -> bool {
        self.cache.keeps_entries()
    }

    /// Returns the value under `key`, if there is a live, decodable one. An entry that does not
    /// decode is deleted.
    pub async fn lookup<T: DeserializeOwned>(&self, key: &CacheKey) -> Option<T> {
        let bytes = match self.cache.get(key).await {
            Ok(bytes) => bytes?,
            Err(error) => {
                warn_failure(self.name, "lookup failed", &error);
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                warn_failure(self.name, "undecodable entry deleted", &error);
                if let Err(error) = self.cache.delete(key).await {
                    warn_failure(self.name, "undecodable entry not deleted", &error);
                }
                None
            }
        }
    }

    /// Stores `value` under `key`.
    pub async fn store<T: Serialize>(&self, key: &CacheKey, value: &T) {
        if !self.keeps_entries() {
            return;
        }
        let bytes = match serde_json::to_vec(value) {
            Ok(bytes) => bytes,
            Err(error) => {
                warn_failure(self.name, "encoding failed", &error);
                return;
            }
        };
        if let Err(error) = self.cache.put(key, bytes, self.ttl).await {
            warn_failure(self.name, "store failed", &error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails the test if anything tries to encode it: a level that keeps nothing must not.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("encoded for a cache that keeps nothing")
        }
    }

    #[tokio::test]
    async fn a_level_without_a_cache_stores_without_encoding() {
        let level = CacheLevel {
            name: "search",
            cache: Arc::new(NoCache),
            ttl: Duration::from_secs(60),
        };
        assert!(!level.keeps_entries());
        let key = CacheKey::digest_of("c", &serde_json::json!({"q": 1}));
        level.store(&key, &Unencodable).await;
        assert_eq!(level.lookup::<Vec<String>>(&key).await, None);
        let memory = CacheLevel {
            cache: Arc::new(MemoryCache::new(MemoryCacheConfig::default())),
            ..level
        };
        assert!(memory.keeps_entries());
    }

    #[tokio::test]
    async fn the_cache_of_none_keeps_nothing_and_says_so() {
        let cache = NoCache;
        let key = CacheKey::digest_of("c", &serde_json::json!({"q": 1}));
        cache
            .put(&key, b"[]".to_vec(), Duration::from_secs(60))
            .await
            .expect("put");
        assert_eq!(cache.get(&key).await.expect("get"), None);
        assert_eq!(cache.clear(None).await.expect("clear"), 0);
        assert_eq!(cache.stats().await.expect("stats"), CacheStats::default());
        assert_eq!(cache.backend(), "none");
        assert!(!cache.keeps_entries());
    }

    #[tokio::test]
    async fn an_undecodable_entry_is_a_miss_and_is_deleted() {
        let level = CacheLevel {
            name: "result",
            cache: Arc::new(MemoryCache::new(MemoryCacheConfig::default())),
            ttl: Duration::from_secs(60),
        };
        let key = CacheKey::digest_of("c", &serde_json::json!({"q": 1}));
        level
            .cache
            .put(&key, b"{not json".to_vec(), level.ttl)
            .await
            .unwrap();
        assert_eq!(level.lookup::<Vec<String>>(&key).await, None);
        assert_eq!(
            level.cache.get(&key).await.unwrap(),
            None,
            "the entry was deleted"
        );

        level.store(&key, &vec!["kept".to_string()]).await;
        assert_eq!(
            level.lookup::<Vec<String>>(&key).await,
            Some(vec!["kept".to_string()])
        );
    }

    /// A backend whose every operation fails, as a cache server that is down.
    #[derive(Debug)]
    struct Down;

    #[async_trait]
    impl Cache for Down {
        fn backend(&self) -> &'static str {
            "down"
        }
        async fn get(&self, _key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
            Err(CacheError::Unavailable("down".into()))
        }
        async fn put(&self, _: &CacheKey, _: Vec<u8>, _: Duration) -> Result<(), CacheError> {
            Err(CacheError::Unavailable("down".into()))
        }
        async fn delete(&self, _key: &CacheKey) -> Result<(), CacheError> {
            Err(CacheError::Unavailable("down".into()))
        }
        async fn clear(&self, _collection: Option<&str>) -> Result<u64, CacheError> {
            Err(CacheError::Unavailable("down".into()))
        }
        async fn stats(&self) -> Result<CacheStats, CacheError> {
            Ok(CacheStats::default())
        }
    }

    /// Counts the warnings logged while it is the current subscriber.
    #[derive(Clone, Default)]
    struct WarningCount(Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningCount {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _context: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    #[tokio::test]
    async fn a_cache_that_is_down_logs_at_most_one_line_for_many_failures() {
        use tracing_subscriber::layer::SubscriberExt;
        let count = WarningCount::default();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(count.clone()));
        let levels = ["result", "search"].map(|name| CacheLevel {
            name,
            cache: Arc::new(Down),
            ttl: Duration::from_secs(60),
        });
        let key = CacheKey::digest_of("c", &serde_json::json!({"q": 1}));
        for _ in 0..5 {
            for level in &levels {
                assert_eq!(level.lookup::<Vec<String>>(&key).await, None, "a miss");
                level.store(&key, &vec!["x".to_string()]).await;
            }
        }
        // Twenty failures; the throttle is shared by the whole process, so another test may
        // have had this interval's line already.
        let lines = count.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(lines <= 1, "{lines} warning lines for 20 failures");
    }

    #[test]
    fn keys_differ_with_their_material_and_collection() {
        let material = serde_json::json!({"query": "q", "top_k": 5});
        let a = CacheKey::digest_of("a", &material);
        assert_eq!(a, CacheKey::digest_of("a", &material));
        assert_ne!(a, CacheKey::digest_of("b", &material));
        assert_ne!(
            a,
            CacheKey::digest_of("a", &serde_json::json!({"query": "q", "top_k": 6}))
        );
    }

    #[test]
    fn a_key_is_the_lowercase_hex_sha256_of_its_material_so_stored_entries_stay_found() {
        let key = CacheKey::digest_of("c", &serde_json::json!({"q": 1}));
        assert_eq!(
            key.digest,
            "6ae0f660046dadcf5fe8462c0e00a062db4c8d67be82f4098c5ea4208d19b076"
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;

    /// What a result key is built from, shaped as the engine's material; strings from an
    /// alphabet of JSON's own delimiters, so that a naive concatenation would collide.
    #[derive(Debug, Clone, PartialEq)]
    struct Inputs {
        collection: String,
        version: u64,
        query: String,
        root_prompt: String,
        filters: Vec<(String, i64)>,
        top_k: u32,
    }

    fn text() -> impl Strategy<Value = String> {
        "[ab\",:{}\\\\\\[\\] ]{0,6}"
    }

    fn inputs() -> impl Strategy<Value = Inputs> {
        (
            "[a-c]{1,3}",
            0u64..3,
            text(),
            text(),
            prop::collection::vec((text(), -2i64..3), 0..3),
            0u32..4,
        )
            .prop_map(
                |(collection, version, query, root_prompt, filters, top_k)| Inputs {
                    collection,
                    version,
                    query,
                    root_prompt,
                    filters,
                    top_k,
                },
            )
    }

    /// The key, with the material's fields inserted in `order` (a rotation), which must not
    /// matter.
    fn key(inputs: &Inputs, order: usize) -> CacheKey {
        let filters: Map<String, Value> = inputs
            .filters
            .iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect();
        let mut fields = vec![
            ("collection", json!(inputs.collection)),
            ("collection_version", json!(inputs.version)),
            ("query", json!(inputs.query)),
            ("root_prompt", json!(inputs.root_prompt)),
            ("filters", Value::Object(filters)),
            ("top_k", json!(inputs.top_k)),
        ];
        let count = fields.len();
        fields.rotate_left(order % count);
        let material: Map<String, Value> = fields
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        CacheKey::digest_of(&inputs.collection, &Value::Object(material))
    }

    /// Inputs as the key sees them: a filter map keeps the last value of a repeated key.
    fn effective(inputs: &Inputs) -> (String, u64, String, String, Map<String, Value>, u32) {
        (
            inputs.collection.clone(),
            inputs.version,
            inputs.query.clone(),
            inputs.root_prompt.clone(),
            inputs
                .filters
                .iter()
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect(),
            inputs.top_k,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn equal_inputs_give_equal_keys_and_distinct_inputs_distinct_keys(
            a in inputs(),
            b in inputs(),
            order in 0usize..6,
        ) {
            prop_assert_eq!(key(&a, 0), key(&a, order));
            prop_assert_eq!(key(&a, 0) == key(&b, 0), effective(&a) == effective(&b));
        }
    }
}
