//! Result caches behind one trait. Values are opaque bytes so that every backend (memory now,
//! SQLite and Redis later) stores the same encoding.

pub mod memory;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::{MemoryCache, MemoryCacheConfig};

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
}

/// A key-value cache with per-entry time to live.
#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    /// Names the backend in stats, e.g. `memory`.
    fn backend(&self) -> &'static str;

    /// Returns the live value under `key`, if any.
    async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `value` under `key` for `ttl`.
    async fn put(&self, key: &CacheKey, value: Vec<u8>, ttl: Duration) -> Result<(), CacheError>;

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

    async fn clear(&self, _collection: Option<&str>) -> Result<u64, CacheError> {
        Ok(0)
    }

    async fn stats(&self) -> Result<CacheStats, CacheError> {
        Ok(CacheStats::default())
    }
}
