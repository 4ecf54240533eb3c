//! Rate limits: the generic cell rate algorithm (GCRA), kept in memory or in Redis.
//!
//! GCRA keeps one number per caller, the theoretical arrival time (TAT): when the caller's
//! bucket would be empty again. A request of cost `n` moves it `n × interval` ahead, and is
//! admitted when the new TAT is at most `burst × interval` ahead of now. A TAT in the past is
//! the same as no entry at all, which is what makes idle callers free to forget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::Script;
use parking_lot::Mutex;

use crate::redis_link::{RedisLink, WarnGate};
use crate::telemetry::Metrics;

/// A steady rate with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per minute, at least 1.
    pub per_minute: u32,
    /// Requests admitted at once from an idle start, at least 1.
    pub burst: u32,
}

impl Rate {
    /// The server's rate from its settings: `None` (unlimited) when `per_minute` is 0.
    pub fn from_settings(per_minute: u32, burst: u32) -> Option<Rate> {
        (per_minute > 0).then_some(Rate {
            per_minute,
            burst: burst.max(1),
        })
    }

    /// A key's rate: its own values over the server's. A key that sets only one of them takes
    /// the other from the server, or the other's value when the server has no limit.
    pub fn merged(
        server: Option<Rate>,
        per_minute: Option<u32>,
        burst: Option<u32>,
    ) -> Option<Rate> {
        let per_minute = per_minute.or(server.map(|rate| rate.per_minute))?;
        let burst = burst
            .or(server.map(|rate| rate.burst))
            .unwrap_or(per_minute);
        Rate::from_settings(per_minute, burst)
    }

    /// One replica's share of this rate when `replicas` enforce it apart: both numbers divided,
    /// rounded up and at least 1, so that together they admit no less than the rate.
    pub fn shared_by(self, replicas: u32) -> Rate {
        let replicas = replicas.max(1);
        Rate {
            per_minute: self.per_minute.div_ceil(replicas).max(1),
            burst: self.burst.div_ceil(replicas).max(1),
        }
    }

    /// Time one request adds to the caller's TAT, in nanoseconds.
    fn interval_nanos(self) -> u64 {
        60_000_000_000 / u64::from(self.per_minute.max(1))
    }
}

/// The outcome of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted, and charged.
    Allowed,
    /// Refused; the same request would be admitted after this wait.
    Limited {
        /// Wait before retrying.
        retry_after: Duration,
    },
    /// The cost exceeds the burst: never admitted whole.
    OverBurst,
}

/// One GCRA step over a TAT in nanoseconds: the decision and the TAT to store when admitted.
fn gcra(stored_tat: Option<u64>, now: u64, rate: Rate, cost: u32) -> (Decision, Option<u64>) {
    if cost > rate.burst {
        return (Decision::OverBurst, None);
    }
    let interval = rate.interval_nanos();
    let tat = stored_tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval.saturating_mul(u64::from(cost)));
    let allow_at = new_tat.saturating_sub(interval.saturating_mul(u64::from(rate.burst)));
    if allow_at > now {
        let retry_after = Duration::from_nanos(allow_at - now);
        (Decision::Limited { retry_after }, None)
    } else {
        (Decision::Allowed, Some(new_tat))
    }
}

/// Buckets in memory, one per caller, bounded: idle ones are forgotten first, and when every
/// tracked caller is active the ones closest to idle go, which only ever errs towards
/// admitting.
#[derive(Debug)]
pub struct MemoryLimiter {
    origin: Instant,
    max_tracked: usize,
    buckets: Mutex<HashMap<String, u64>>,
}

impl MemoryLimiter {
    /// A limiter tracking at most `max_tracked` callers (at least 1).
    pub fn new(max_tracked: usize) -> Self {
        MemoryLimiter {
            origin: Instant::now(),
            max_tracked: max_tracked.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Checks and charges `cost` requests for `key`.
    pub fn check(&self, key: &str, rate: Rate, cost: u32) -> Decision {
        self.check_at(key, rate, cost, Instant::now())
    }

    fn check_at(&self, key: &str, rate: Rate, cost: u32, now: Instant) -> Decision {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        let mut buckets = self.buckets.lock();
        let (decision, new_tat) = gcra(buckets.get(key).copied(), now, rate, cost);
        if let Some(new_tat) = new_tat {
            match buckets.get_mut(key) {
                Some(tat) => *tat = new_tat,
                None => {
                    if buckets.len() >= self.max_tracked {
                        evict(&mut buckets, now, self.max_tracked);
                    }
                    buckets.insert(key.to_string(), new_tat);
                }
            }
        }
        decision
    }

    /// Callers tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().len()
    }
}

/// Drops idle buckets; if that frees less than a tenth of the room, drops the buckets nearest
/// to idle down to nine tenths, so that a flood of new callers costs one sweep per tenth of
/// the table rather than one per request.
fn evict(buckets: &mut HashMap<String, u64>, now: u64, max_tracked: usize) {
    buckets.retain(|_, tat| *tat > now);
    let target = max_tracked - max_tracked / 10;
    if buckets.len() <= target {
        return;
    }
    let mut tats: Vec<u64> = buckets.values().copied().collect();
    let cut = buckets.len() - target;
    let (_, threshold, _) = tats.select_nth_unstable(cut - 1);
    let threshold = *threshold;
    let mut to_drop = cut;
    buckets.retain(|_, tat| {
        if to_drop > 0 && *tat <= threshold {
            to_drop -= 1;
            false
        } else {
            true
        }
    });
}

/// GCRA in one Lua script, so that check and charge are one atomic step on Redis's own clock,
/// shared by every replica. Times are microseconds, exact in Lua's doubles for centuries.
const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

/// Buckets in Redis, shared by every replica; each expires once idle.
#[derive(Debug)]
pub struct RedisLimiter {
    link: RedisLink,
    prefix: String,
    script: Script,
}

impl RedisLimiter {
    /// Connects in the background; Redis need not be up.
    pub fn open(url: &str, prefix: &str, operation_timeout: Duration) -> Result<Self, String> {
        Ok(RedisLimiter {
            link: RedisLink::open("redis rate limiter", url, operation_timeout)?,
            prefix: prefix.to_string(),
            script: Script::new(GCRA_SCRIPT),
        })
    }

    /// Checks and charges `cost` requests for `key`, on Redis.
    pub async fn check(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
    ) -> Result<Decision, crate::redis_link::Failure> {
        if cost > rate.burst {
            return Ok(Decision::OverBurst);
        }
        let interval_micros = (rate.interval_nanos() / 1_000).max(1);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}:{key}", self.prefix))
            .arg(interval_micros)
            .arg(rate.burst)
            .arg(cost);
        let (allowed, wait_micros): (u64, u64) = self.link.invoke(&invocation).await?;
        Ok(if allowed == 1 {
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after: Duration::from_micros(wait_micros),
            }
        })
    }

    /// Waits at most `limit` for the first connection; returns whether it is made.
    pub async fn wait_until_connected(&self, limit: Duration) -> bool {
        self.link.wait_until_connected(limit).await
    }
}

/// Where buckets live.
#[derive(Debug)]
enum Store {
    Memory,
    /// Redis, with the memory buckets as the fallback while Redis cannot answer.
    Redis(RedisLimiter),
}

/// The server's rate limiter: in memory, or in Redis with a local fallback.
#[derive(Debug)]
pub struct RateLimiter {
    store: Store,
    local: MemoryLimiter,
    /// Replicas that share the Redis limit: while Redis cannot answer, each admits this share
    /// of every rate, so that the fleet stays near the shared limit instead of N times it.
    fallback_replicas: u32,
    warnings: WarnGate,
    rejected: AtomicU64,
    fallbacks: AtomicU64,
    metrics: Metrics,
}

impl RateLimiter {
    /// A limiter keeping buckets in this process.
    pub fn in_memory(max_tracked: usize) -> Self {
        Self::with_store(Store::Memory, max_tracked, 1)
    }

    /// A limiter keeping buckets in Redis; while Redis cannot answer, each replica limits on
    /// its own, to its share of each rate among `fallback_replicas`.
    pub fn in_redis(redis: RedisLimiter, max_tracked: usize, fallback_replicas: u32) -> Self {
        Self::with_store(Store::Redis(redis), max_tracked, fallback_replicas)
    }

    fn with_store(store: Store, max_tracked: usize, fallback_replicas: u32) -> Self {
        RateLimiter {
            store,
            local: MemoryLimiter::new(max_tracked),
            fallback_replicas: fallback_replicas.max(1),
            warnings: WarnGate::new(Duration::from_secs(30)),
            rejected: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            metrics: Metrics::new(),
        }
    }

    /// Reports the checks decided without Redis to `metrics`.
    pub fn report_to(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Checks and charges `cost` requests for `key` at `rate`.
    pub async fn check(&self, key: &str, rate: Rate, cost: u32) -> Decision {
        self.check_applied(key, rate, cost).await.0
    }

    /// Like [`RateLimiter::check`], and returns the rate the decision was made against: `rate`
    /// itself, or this replica's share of it while Redis cannot answer, so that a refusal
    /// names the limit that refused it.
    pub async fn check_applied(&self, key: &str, rate: Rate, cost: u32) -> (Decision, Rate) {
        let mut applied = rate;
        let decision = match &self.store {
            Store::Memory => self.local.check(key, rate, cost),
            Store::Redis(redis) => match redis.check(key, rate, cost).await {
                Ok(decision) => decision,
                Err(failure) => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.metrics.rate_limit_fallback();
                    if let Some(held_back) = self.warnings.admit(Instant::now()) {
                        tracing::warn!(
                            error = %failure,
                            held_back,
                            "redis rate limiter failing; limiting in this replica alone"
                        );
                    }
                    applied = rate.shared_by(self.fallback_replicas);
                    self.check_alone(key, rate, cost)
                }
            },
        };
        if decision != Decision::Allowed {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        (decision, applied)
    }

    /// Decides for this replica alone while Redis cannot answer: against its share of `rate`.
    /// A cost the whole burst allows but the share does not is charged as the whole share, so
    /// that what the shared limit would admit is not refused outright during an outage.
    fn check_alone(&self, key: &str, rate: Rate, cost: u32) -> Decision {
        if cost > rate.burst {
            return Decision::OverBurst;
        }
        let share = rate.shared_by(self.fallback_replicas);
        self.local.check(key, share, cost.min(share.burst))
    }

    /// Waits at most `limit` for a Redis store to connect, so that a replica starts with the
    /// shared limit rather than its local fallback; returns whether the shared store is ready
    /// (always, for memory).
    pub async fn wait_until_ready(&self, limit: Duration) -> bool {
        match &self.store {
            Store::Memory => true,
            Store::Redis(redis) => redis.wait_until_connected(limit).await,
        }
    }

    /// Requests refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Checks decided locally because Redis could not answer.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Callers tracked in this process.
    pub fn tracked_locally(&self) -> usize {
        self.local.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_minute: 60,
        burst: 5,
    };

    /// One request a second, no burst beyond it: a caller is busy for a second after a call.
    const ONE_A_SECOND: Rate = Rate {
        per_minute: 60,
        burst: 1,
    };

    fn is_tracked(limiter: &MemoryLimiter, key: &str) -> bool {
        limiter.buckets.lock().contains_key(key)
    }

    #[test]
    fn a_full_table_forgets_idle_callers_first() {
        let limiter = MemoryLimiter::new(10);
        let start = limiter.origin;
        for caller in 0..5 {
            limiter.check_at(&format!("idle-{caller}"), ONE_A_SECOND, 1, start);
        }
        let later = start + Duration::from_millis(500);
        for caller in 0..5 {
            limiter.check_at(&format!("busy-{caller}"), ONE_A_SECOND, 1, later);
        }
        // A second after the first five called, they are idle (their bucket is full again,
        // to the nanosecond); the other five are still busy.
        let now = start + Duration::from_secs(1);
        assert_eq!(
            limiter.check_at("new", ONE_A_SECOND, 1, now),
            Decision::Allowed
        );
        assert_eq!(limiter.tracked(), 6);
        for caller in 0..5 {
            assert!(!is_tracked(&limiter, &format!("idle-{caller}")));
            assert!(matches!(
                limiter.check_at(&format!("busy-{caller}"), ONE_A_SECOND, 1, now),
                Decision::Limited { .. }
            ));
        }
    }

    #[test]
    fn a_full_table_of_busy_callers_forgets_the_nearest_to_idle_down_to_nine_tenths() {
        // The table's order differs from one map to the next: several rounds make sure the
        // choice never depends on it.
        for _ in 0..16 {
            let limiter = MemoryLimiter::new(20);
            let start = limiter.origin;
            for caller in 0..20u64 {
                let at = start + Duration::from_millis(10 * caller);
                limiter.check_at(&format!("caller-{caller}"), ONE_A_SECOND, 1, at);
            }
            let now = start + Duration::from_millis(200);
            assert_eq!(
                limiter.check_at("new", ONE_A_SECOND, 1, now),
                Decision::Allowed
            );
            // Two went to make room for 18 of 20, then the new caller came in.
            assert_eq!(limiter.tracked(), 19);
            assert!(!is_tracked(&limiter, "caller-0"));
            assert!(!is_tracked(&limiter, "caller-1"));
            for caller in 2..20 {
                assert!(
                    is_tracked(&limiter, &format!("caller-{caller}")),
                    "{caller}"
                );
            }
        }
    }

    #[test]
    fn callers_equally_near_to_idle_are_forgotten_only_as_many_as_needed() {
        let limiter = MemoryLimiter::new(20);
        let start = limiter.origin;
        for caller in 0..20 {
            limiter.check_at(&format!("caller-{caller}"), ONE_A_SECOND, 1, start);
        }
        limiter.check_at("new", ONE_A_SECOND, 1, start);
        assert_eq!(limiter.tracked(), 19);
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let limiter = MemoryLimiter::new(100);
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check_at("a", RATE, 1, start), Decision::Allowed);
        }
        assert_eq!(
            limiter.check_at("a", RATE, 1, start),
            Decision::Limited {
                retry_after: Duration::from_secs(1)
            }
        );
        // Another caller has its own bucket.
        assert_eq!(limiter.check_at("b", RATE, 1, start), Decision::Allowed);
        assert_eq!(limiter.tracked(), 2);
        let later = start + Duration::from_millis(1_500);
        assert_eq!(limiter.check_at("a", RATE, 1, later), Decision::Allowed);
        assert_eq!(
            limiter.check_at("a", RATE, 1, later),
            Decision::Limited {
                retry_after: Duration::from_millis(500)
            }
        );
    }

    #[test]
    fn costs_count_whole_and_never_beyond_the_burst() {
        let limiter = MemoryLimiter::new(100);
        let start = Instant::now();
        assert_eq!(limiter.check_at("a", RATE, 6, start), Decision::OverBurst);
        assert_eq!(limiter.check_at("a", RATE, 3, start), Decision::Allowed);
        assert_eq!(
            limiter.check_at("a", RATE, 3, start),
            Decision::Limited {
                retry_after: Duration::from_secs(1)
            }
        );
        assert_eq!(limiter.check_at("a", RATE, 2, start), Decision::Allowed);
    }

    #[test]
    fn a_flood_of_distinct_callers_stays_bounded() {
        let limiter = MemoryLimiter::new(10_000);
        let start = Instant::now();
        for caller in 0..100_000 {
            let key = format!("peer:{caller}");
            assert_eq!(limiter.check_at(&key, RATE, 1, start), Decision::Allowed);
            assert!(limiter.tracked() <= 10_000);
        }
        // Once everyone is idle, a sweep forgets them all.
        let idle = start + Duration::from_secs(60);
        for caller in 0..10_000 {
            limiter.check_at(&format!("new:{caller}"), RATE, 1, idle);
        }
        assert!(limiter.tracked() <= 10_000);
    }

    #[test]
    fn a_share_of_a_rate_rounds_up_and_never_reaches_zero() {
        let rate = Rate {
            per_minute: 120,
            burst: 20,
        };
        assert_eq!(rate.shared_by(1), rate);
        assert_eq!(rate.shared_by(0), rate);
        assert_eq!(
            rate.shared_by(3),
            Rate {
                per_minute: 40,
                burst: 7
            }
        );
        assert_eq!(
            rate.shared_by(1_000),
            Rate {
                per_minute: 1,
                burst: 1
            }
        );
    }

    /// The shared rate of the fallback tests: a third of it is 20 a minute, a burst of 2.
    const SHARED: Rate = Rate {
        per_minute: 60,
        burst: 6,
    };

    /// A limiter on a Redis nobody listens on, so that every check falls back.
    fn limiter_without_redis(fallback_replicas: u32) -> RateLimiter {
        let redis =
            RedisLimiter::open("redis://127.0.0.1:1", "test", Duration::from_millis(50)).unwrap();
        RateLimiter::in_redis(redis, 100, fallback_replicas)
    }

    #[tokio::test]
    async fn without_redis_each_replica_admits_its_share_of_the_burst() {
        let rate = SHARED;
        let alone = limiter_without_redis(1);
        let one_of_three = limiter_without_redis(3);
        for _ in 0..6 {
            assert_eq!(alone.check("a", rate, 1).await, Decision::Allowed);
        }
        for _ in 0..2 {
            assert_eq!(one_of_three.check("a", rate, 1).await, Decision::Allowed);
        }
        assert!(matches!(
            alone.check("a", rate, 1).await,
            Decision::Limited { .. }
        ));
        // The share refills at a third of the rate: one request every three seconds.
        let Decision::Limited { retry_after } = one_of_three.check("a", rate, 1).await else {
            panic!("the third request is over the share");
        };
        // Whatever time the checks took, far more than the one second the whole rate would
        // ask for.
        assert!(
            retry_after > Duration::from_secs(2) && retry_after <= Duration::from_secs(3),
            "{retry_after:?}"
        );
        assert_eq!(one_of_three.fallbacks(), 3);
    }

    #[tokio::test]
    async fn a_refusal_without_redis_names_the_share_that_refused_it() {
        let one_of_three = limiter_without_redis(3);
        let (_, applied) = one_of_three.check_applied("a", SHARED, 1).await;
        assert_eq!(applied, SHARED.shared_by(3));
        assert_eq!(applied.per_minute, 20);
        let in_memory = RateLimiter::in_memory(100);
        assert_eq!(in_memory.check_applied("a", SHARED, 1).await.1, SHARED);
    }

    #[tokio::test]
    async fn without_redis_a_cost_within_the_whole_burst_takes_the_whole_share() {
        let rate = SHARED;
        let one_of_three = limiter_without_redis(3);
        assert_eq!(one_of_three.check("a", rate, 7).await, Decision::OverBurst);
        assert_eq!(one_of_three.check("a", rate, 5).await, Decision::Allowed);
        assert!(matches!(
            one_of_three.check("a", rate, 1).await,
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn merged_rates_take_the_keys_values_over_the_servers() {
        let server = Rate::from_settings(60, 10);
        assert_eq!(Rate::merged(server, None, None), server);
        assert_eq!(
            Rate::merged(server, Some(600), None),
            Some(Rate {
                per_minute: 600,
                burst: 10
            })
        );
        assert_eq!(Rate::merged(None, None, Some(3)), None);
        assert_eq!(
            Rate::merged(None, Some(30), None),
            Some(Rate {
                per_minute: 30,
                burst: 30
            })
        );
        assert_eq!(Rate::from_settings(0, 10), None);
    }

    #[tokio::test]
    async fn redis_admits_the_burst_then_one_per_interval_and_refuses_a_cost_over_it() {
        let server = crate::redis_test_server::RedisServer::start();
        let redis = RedisLimiter::open(&server.url(), "limit-test", Duration::from_secs(5))
            .expect("limiter opens");
        assert!(redis.wait_until_connected(Duration::from_secs(20)).await);
        let limiter = RateLimiter::in_redis(redis, 100, 1);
        // Exactly the burst at once, on a fresh bucket.
        assert_eq!(limiter.check("a", RATE, 5).await, Decision::Allowed);
        match limiter.check("a", RATE, 1).await {
            Decision::Limited { retry_after } => {
                // One request a second: the next token is under a second away.
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected the bucket empty, got {other:?}"),
        }
        assert_eq!(limiter.check("a", RATE, 6).await, Decision::OverBurst);
        // Another caller has a bucket of its own.
        assert_eq!(limiter.check("b", RATE, 1).await, Decision::Allowed);
        assert_eq!(limiter.fallbacks(), 0);
        assert_eq!(limiter.rejected(), 2);
    }

    #[tokio::test]
    async fn a_cost_over_the_burst_is_refused_without_asking_redis() {
        let redis = RedisLimiter::open("redis://127.0.0.1:1", "test", Duration::from_millis(50))
            .expect("limiter opens");
        assert_eq!(
            redis.check("a", RATE, RATE.burst + 1).await.ok(),
            Some(Decision::OverBurst)
        );
    }

    #[tokio::test]
    async fn only_refusals_are_counted_as_rejected() {
        let limiter = RateLimiter::in_memory(100);
        for _ in 0..5 {
            assert_eq!(limiter.check("a", RATE, 1).await, Decision::Allowed);
        }
        assert_eq!(limiter.rejected(), 0);
        assert!(matches!(
            limiter.check("a", RATE, 1).await,
            Decision::Limited { .. }
        ));
        assert_eq!(limiter.check("a", RATE, 9).await, Decision::OverBurst);
        assert_eq!(limiter.rejected(), 2);
    }
}
