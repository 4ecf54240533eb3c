//! In-process cache: least-recently-used eviction within an entry count and a byte budget,
//! plus a time to live per entry.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Cache, CacheError, CacheKey, CacheStats};

/// Bounds of a [`MemoryCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCacheConfig {
    /// Most entries held.
    pub max_entries: usize,
    /// Most bytes of values held.
    pub max_bytes: usize,
}

impl Default for MemoryCacheConfig {
    fn default() -> Self {
        MemoryCacheConfig {
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at: Instant,
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    // Use ticks to keys, oldest first: the first entry is the least recently used.
    recency: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
    stats: CacheStats,
}

impl State {
    fn touch(&mut self, key: &CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(key) {
            self.recency.remove(&entry.last_used);
            entry.last_used = tick;
            self.recency.insert(tick, key.clone());
        }
    }

    fn remove(&mut self, key: &CacheKey) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                self.recency.remove(&entry.last_used);
                self.bytes -= entry.value.len();
                true
            }
            None => false,
        }
    }

    fn evict_least_recent(&mut self) -> bool {
        let Some((_, key)) = self.recency.pop_first() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&key) {
            self.bytes -= entry.value.len();
        }
        self.stats.evictions += 1;
        true
    }
}

/// An LRU cache with TTL, held in process memory.
#[derive(Debug)]
pub struct MemoryCache {
    config: MemoryCacheConfig,
    state: Mutex<State>,
}

impl MemoryCache {
    /// Creates an empty cache.
    pub fn new(config: MemoryCacheConfig) -> Self {
        MemoryCache {
            config,
            state: Mutex::new(State::default()),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let mut state = self.state.lock();
        let expired = match state.entries.get(key) {
            None => {
                state.stats.misses += 1;
                return Ok(None);
            }
            Some(entry) => entry.expires_at <= Instant::now(),
        };
        if expired {
            state.remove(key);
            state.stats.misses += 1;
            return Ok(None);
        }
        state.touch(key);
        state.stats.hits += 1;
        Ok(state.entries.get(key).map(|entry| entry.value.clone()))
    }

    async fn put(&self, key: &CacheKey, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        // A value larger than the whole budget would evict everything and still not fit.
        if value.len() > self.config.max_bytes || self.config.max_entries == 0 {
            return Ok(());
        }
        let mut state = self.state.lock();
        state.remove(key);
        while state.entries.len() >= self.config.max_entries
            || state.bytes + value.len() > self.config.max_bytes
        {
            if !state.evict_least_recent() {
                break;
            }
        }
        state.tick += 1;
        let tick = state.tick;
        state.bytes += value.len();
        state.recency.insert(tick, key.clone());
        state.entries.insert(
            key.clone(),
            Entry {
                value,
                expires_at: Instant::now() + ttl,
                last_used: tick,
            },
        );
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<(), CacheError> {
        self.state.lock().remove(key);
        Ok(())
    }

    async fn clear(&self, collection: Option<&str>) -> Result<u64, CacheError> {
        let mut state = self.state.lock();
        let doomed: Vec<CacheKey> = state
            .entries
            .keys()
            .filter(|key| collection.is_none_or(|name| key.collection == name))
            .cloned()
            .collect();
        for key in &doomed {
            state.remove(key);
        }
        Ok(doomed.len() as u64)
    }

    async fn stats(&self) -> Result<CacheStats, CacheError> {
        let state = self.state.lock();
        Ok(CacheStats {
            entries: state.entries.len() as u64,
            ..state.stats
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(collection: &str, digest: &str) -> CacheKey {
        CacheKey {
            collection: collection.to_string(),
            digest: digest.to_string(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    async fn put(cache: &MemoryCache, key: &CacheKey, value: Vec<u8>, ttl: Duration) {
        cache.put(key, value, ttl).await.expect("put");
    }

    async fn get(cache: &MemoryCache, key: &CacheKey) -> Option<Vec<u8>> {
        cache.get(key).await.expect("get")
    }

    async fn stats(cache: &MemoryCache) -> CacheStats {
        cache.stats().await.expect("stats")
    }

    #[tokio::test]
    async fn a_stored_value_is_found_until_it_expires() {
        let cache = MemoryCache::new(MemoryCacheConfig::default());
        assert_eq!(cache.backend(), "memory");
        put(&cache, &key("c", "a"), b"one".to_vec(), HOUR).await;
        // Expired the moment it is stored.
        put(&cache, &key("c", "b"), b"two".to_vec(), Duration::ZERO).await;
        assert_eq!(get(&cache, &key("c", "a")).await, Some(b"one".to_vec()));
        assert_eq!(get(&cache, &key("c", "b")).await, None);
        assert_eq!(get(&cache, &key("c", "never")).await, None);
        let stats = stats(&cache).await;
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 1));
    }

    #[tokio::test]
    async fn the_least_recently_used_entry_is_evicted_first() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            max_entries: 2,
            max_bytes: 1024,
        });
        put(&cache, &key("c", "a"), vec![1], HOUR).await;
        put(&cache, &key("c", "b"), vec![2], HOUR).await;
        // Reading "a" makes "b" the least recently used.
        get(&cache, &key("c", "a")).await;
        put(&cache, &key("c", "c"), vec![3], HOUR).await;
        assert_eq!(get(&cache, &key("c", "a")).await, Some(vec![1]));
        assert_eq!(get(&cache, &key("c", "b")).await, None);
        assert_eq!(get(&cache, &key("c", "c")).await, Some(vec![3]));
        let stats = stats(&cache).await;
        assert_eq!((stats.entries, stats.evictions), (2, 1));
    }

    #[tokio::test]
    async fn a_large_value_evicts_as_many_entries_as_it_needs() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            max_entries: 100,
            max_bytes: 10,
        });
        put(&cache, &key("c", "a"), vec![1; 4], HOUR).await;
        put(&cache, &key("c", "b"), vec![2; 4], HOUR).await;
        put(&cache, &key("c", "big"), vec![3; 9], HOUR).await;
        assert_eq!(get(&cache, &key("c", "a")).await, None);
        assert_eq!(get(&cache, &key("c", "b")).await, None);
        assert_eq!(get(&cache, &key("c", "big")).await, Some(vec![3; 9]));
        let stats = stats(&cache).await;
        assert_eq!((stats.entries, stats.evictions), (1, 2));
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_cache() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            max_entries: 100,
            max_bytes: 10,
        });
        put(&cache, &key("c", "a"), vec![0; 6], HOUR).await;
        put(&cache, &key("c", "b"), vec![0; 6], HOUR).await;
        // Larger than the whole budget: not stored, and nothing is evicted for it.
        put(&cache, &key("c", "huge"), vec![0; 11], HOUR).await;
        assert_eq!(get(&cache, &key("c", "a")).await, None);
        assert_eq!(get(&cache, &key("c", "b")).await, Some(vec![0; 6]));
        assert_eq!(get(&cache, &key("c", "huge")).await, None);
        let counts = stats(&cache).await;
        assert_eq!((counts.entries, counts.evictions), (1, 1));
        // The evicted value's bytes were given back: four more fit beside "b".
        put(&cache, &key("c", "c"), vec![0; 4], HOUR).await;
        assert_eq!(get(&cache, &key("c", "b")).await, Some(vec![0; 6]));
        assert_eq!(stats(&cache).await.evictions, 1);
    }

    #[tokio::test]
    async fn a_value_of_the_whole_byte_budget_fits() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            max_entries: 100,
            max_bytes: 10,
        });
        put(&cache, &key("c", "a"), vec![0; 10], HOUR).await;
        assert_eq!(get(&cache, &key("c", "a")).await, Some(vec![0; 10]));
    }

    #[tokio::test]
    async fn a_replaced_or_deleted_value_gives_its_bytes_back() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            max_entries: 100,
            max_bytes: 10,
        });
        put(&cache, &key("c", "a"), vec![0; 8], HOUR).await;
        put(&cache, &key("c", "a"), vec![1; 8], HOUR).await;
        assert_eq!(get(&cache, &key("c", "a")).await, Some(vec![1; 8]));
        cache.delete(&key("c", "a")).await.expect("delete");
        cache.delete(&key("c", "missing")).await.expect("delete");
        assert_eq!(get(&cache, &key("c", "a")).await, None);
        // The budget is whole again: two values fit without evicting each other.
        put(&cache, &key("c", "b"), vec![0; 5], HOUR).await;
        put(&cache, &key("c", "c"), vec![0; 5], HOUR).await;
        let stats = stats(&cache).await;
        assert_eq!((stats.entries, stats.evictions), (2, 0));
    }

    #[tokio::test]
    async fn a_cache_of_no_entries_keeps_nothing() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            max_entries: 0,
            max_bytes: 1024,
        });
        put(&cache, &key("c", "a"), vec![1], HOUR).await;
        assert_eq!(get(&cache, &key("c", "a")).await, None);
        assert_eq!(stats(&cache).await.entries, 0);
    }

    #[tokio::test]
    async fn clearing_one_collection_leaves_the_others() {
        let cache = MemoryCache::new(MemoryCacheConfig::default());
        put(&cache, &key("a", "1"), vec![1], HOUR).await;
        put(&cache, &key("a", "2"), vec![1], HOUR).await;
        put(&cache, &key("b", "1"), vec![1], HOUR).await;
        assert_eq!(cache.clear(Some("a")).await.expect("clear"), 2);
        assert_eq!(get(&cache, &key("a", "1")).await, None);
        assert_eq!(get(&cache, &key("b", "1")).await, Some(vec![1]));
        assert_eq!(cache.clear(None).await.expect("clear"), 1);
        assert_eq!(stats(&cache).await.entries, 0);
    }
}
