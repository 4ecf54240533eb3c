//! The front door: for every call, its identity (a key, or a verified client certificate),
//! its scope, its share of the rate limit and, for queries, a query slot.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use super::keys::{self, KeyEntry, KeyRing};
use super::limit::{Decision, Rate, RateLimiter};
use super::shed::{QuerySlot, QuerySlots};
use super::{AccessError, Caller, Method};
use crate::telemetry::Metrics;
use crate::transport::Subject;

/// Settings of the front door, from the configuration.
#[derive(Debug, Clone)]
pub struct FrontDoorSettings {
    /// Keys from the configuration itself.
    pub keys: Vec<KeyEntry>,
    /// Key file, re-read on reload.
    pub keys_file: Option<PathBuf>,
    /// Services (`package.Service`) callable without a key.
    pub exempt_services: Vec<String>,
    /// Rate of callers whose key sets none; `None` for unlimited.
    pub default_rate: Option<Rate>,
    /// Calls refused for their key that a client address may make (while keys are on) before
    /// the next is told to back off; `None` for unlimited.
    pub refused_rate: Option<Rate>,
}

/// Whether and how a call may go in.
#[derive(Debug)]
pub enum Admission {
    /// An exempt service (health, reflection): no identity, no limits.
    Exempt,
    /// A DeepRecall call (or any other non-exempt path) by this caller.
    Caller {
        /// The caller.
        caller: Caller,
        /// The query slot held for the call's whole life, for methods that run queries.
        slot: Option<QuerySlot>,
    },
}

/// Credentials a call presented: raw metadata values, and the connection's client certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `authorization` value.
    pub authorization: Option<&'a [u8]>,
    /// The `x-api-key` value.
    pub api_key: Option<&'a [u8]>,
    /// The subject of the client certificate the TLS handshake verified.
    pub certificate_subject: Option<&'a Subject>,
}

/// The front door: keys, limits and query slots, shared by every connection.
pub struct FrontDoor {
    settings: FrontDoorSettings,
    keys: RwLock<Arc<KeyRing>>,
    auth_enabled: bool,
    limiter: RateLimiter,
    slots: QuerySlots,
    metrics: Metrics,
}

impl fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontDoor")
            .field("auth_enabled", &self.auth_enabled)
            .field("keys", &self.keys.read().len())
            .field("default_rate", &self.settings.default_rate)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl FrontDoor {
    /// Loads the keys and builds the front door. Auth is on when the configuration lists keys
    /// or names a key file, even an empty one: a key file that lists nobody lets nobody in.
    pub fn new(
        settings: FrontDoorSettings,
        limiter: RateLimiter,
        slots: QuerySlots,
    ) -> Result<FrontDoor, AccessError> {
        let keys = KeyRing::load(&settings.keys, settings.keys_file.as_deref())?;
        let auth_enabled = !settings.keys.is_empty() || settings.keys_file.is_some();
        Ok(FrontDoor {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            auth_enabled,
            limiter,
            slots,
            metrics: Metrics::new(),
        })
    }

    /// The front door reporting refusals to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> FrontDoor {
        self.limiter.report_to(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// Whether calls need a key.
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled
    }

    /// Number of keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// Re-reads the key file and the configured keys. A file that fails to load leaves the
    /// keys in force unchanged; calls in flight keep the identity they were admitted with.
    pub fn reload_keys(&self) -> Result<usize, AccessError> {
        let keys = KeyRing::load(&self.settings.keys, self.settings.keys_file.as_deref())?;
        let count = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(count)
    }

    /// Decides whether a call to `path` goes in: exempt services pass untouched; everything
    /// else is authenticated, checked against its scope, charged one request (a `QueryBatch`
    /// pays for its other queries in its handler, which knows the count), and, for methods
    /// that run queries, given a query slot or refused when none frees up in time.
    pub async fn admit(
        &self,
        path: &str,
        credentials: Credentials<'_>,
        peer: Option<IpAddr>,
    ) -> Result<Admission, AccessError> {
        if self.is_exempt(path) {
            return Ok(Admission::Exempt);
        }
        self.admit_call(Method::from_path(path), credentials, peer)
            .await
    }

    /// Decides whether a call goes in, whichever protocol carries it: authenticated, checked
    /// against the scope of `method` (any admitted caller may make a call that names none),
    /// charged one request to the caller's one bucket, and given a query slot when the method
    /// runs queries. The gRPC layer and the HTTP surface both come through here.
    pub async fn admit_call(
        &self,
        method: Option<Method>,
        credentials: Credentials<'_>,
        peer: Option<IpAddr>,
    ) -> Result<Admission, AccessError> {
        let caller = match self.identify(credentials, peer) {
            Ok(caller) => caller,
            Err(error) => return Err(self.count_refusal(error, peer).await),
        };
        if let Some(method) = method {
            caller.check_method(method)?;
        }
        self.charge(&caller, 1).await?;
        let slot = match method {
            Some(method) if method.runs_queries() => Some(
                self.slots
                    .acquire()
                    .await
                    .inspect_err(|_| self.metrics.shed())?,
            ),
            _ => None,
        };
        Ok(Admission::Caller { caller, slot })
    }

    /// Counts a call refused for its key against its address's allowance of such refusals;
    /// beyond it the call is told to back off, with a `retry-after` that retry policies honour,
    /// instead of being told again that its key is wrong. A valid key from the same address is
    /// not held back: keys are too long to guess, and a shared address such as a NAT must not
    /// lock its other clients out.
    async fn count_refusal(&self, error: AccessError, peer: Option<IpAddr>) -> AccessError {
        let refused_for_key = matches!(
            error,
            AccessError::MissingKey
                | AccessError::MalformedKey(_)
                | AccessError::UnknownKey
                | AccessError::UnknownSubject(_)
        );
        let (true, Some(rate), Some(address)) = (refused_for_key, self.settings.refused_rate, peer)
        else {
            return error;
        };
        match self
            .limiter
            .check(&format!("refused:{address}"), rate, 1)
            .await
        {
            Decision::Limited { retry_after } => {
                self.metrics.rate_limited("refused_key");
                AccessError::TooManyRefusals { retry_after }
            }
            Decision::Allowed | Decision::OverBurst => error,
        }
    }

    /// Charges a batch of `queries` the requests beyond the one its call already paid. A batch
    /// larger than the caller's burst could never be admitted and is refused as such.
    pub async fn charge_batch(&self, caller: &Caller, queries: usize) -> Result<(), AccessError> {
        let Some(rate) = caller.rate else {
            return Ok(());
        };
        let cost = u32::try_from(queries).unwrap_or(u32::MAX);
        if cost > rate.burst {
            self.metrics.rate_limited("batch_over_burst");
            return Err(AccessError::BatchOverBurst {
                cost,
                burst: rate.burst,
            });
        }
        if cost > 1 {
            self.charge(caller, cost - 1).await?;
        }
        Ok(())
    }

    /// Charges `cost` requests to the caller's rate.
    pub async fn charge(&self, caller: &Caller, cost: u32) -> Result<(), AccessError> {
        let Some(rate) = caller.rate else {
            return Ok(());
        };
        let reason = if caller.authenticated { "key" } else { "peer" };
        let (decision, applied) = self
            .limiter
            .check_applied(&caller.limit_key, rate, cost)
            .await;
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                self.metrics.rate_limited(reason);
                // While Redis cannot answer, the limit that refused is this replica's share.
                Err(AccessError::RateLimited {
                    per_minute: applied.per_minute,
                    retry_after,
                })
            }
            Decision::OverBurst => {
                self.metrics.rate_limited("batch_over_burst");
                Err(AccessError::BatchOverBurst {
                    cost,
                    burst: rate.burst,
                })
            }
        }
    }

    /// The rate limiter, for its counters.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The query slots: their counters, and the free ones a batch widens into.
    pub fn slots(&self) -> &QuerySlots {
        &self.slots
    }

    fn is_exempt(&self, path: &str) -> bool {
        let service = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .map_or("", |(service, _)| service);
        self.settings
            .exempt_services
            .iter()
            .any(|exempt| exempt == service)
    }

    fn identify(
        &self,
        credentials: Credentials<'_>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AccessError> {
        if !self.auth_enabled {
            return Ok(Caller::anonymous(peer, self.settings.default_rate));
        }
        let keys = Arc::clone(&self.keys.read());
        // A key, when sent, decides: a certificate does not rescue a wrong key.
        let identity = match (
            keys::presented_key(credentials),
            credentials.certificate_subject,
        ) {
            (Err(AccessError::MissingKey), Some(subject)) => keys
                .lookup_subject(subject)
                .ok_or_else(|| AccessError::UnknownSubject(subject.to_string()))?,
            (presented, _) => keys.lookup(presented?).ok_or(AccessError::UnknownKey)?,
        };
        Ok(identity.caller(self.settings.default_rate))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::access::{Scope, SlotSettings};

    fn door(exempt: &[&str], rate: Option<Rate>) -> FrontDoor {
        door_refusing(exempt, rate, None)
    }

    fn door_refusing(exempt: &[&str], rate: Option<Rate>, refused: Option<Rate>) -> FrontDoor {
        FrontDoor::new(
            FrontDoorSettings {
                keys: vec![KeyEntry {
                    name: "reader".into(),
                    key: crate::llm::http::Secret::new("reader-key-0123456789"),
                    sha256: None,
                    subject: None,
                    scopes: vec![Scope::Query],
                    collections: None,
                    requests_per_minute: None,
                    burst: None,
                }],
                keys_file: None,
                exempt_services: exempt.iter().map(|name| name.to_string()).collect(),
                default_rate: rate,
                refused_rate: refused,
            },
            RateLimiter::in_memory(1_000),
            QuerySlots::new(SlotSettings {
                max_running: 0,
                max_waiting: 0,
                max_wait: Duration::ZERO,
            }),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn exemptions_are_configurable() {
        let health = "/grpc.health.v1.Health/Check";
        let exempting = door(&["grpc.health.v1.Health"], None);
        assert!(matches!(
            exempting.admit(health, Credentials::default(), None).await,
            Ok(Admission::Exempt)
        ));
        let strict = door(&[], None);
        assert!(matches!(
            strict.admit(health, Credentials::default(), None).await,
            Err(AccessError::MissingKey)
        ));
        let key = Credentials {
            api_key: Some(b"reader-key-0123456789"),
            ..Credentials::default()
        };
        assert!(matches!(
            strict.admit(health, key, None).await,
            Ok(Admission::Caller { .. })
        ));
    }

    #[tokio::test]
    async fn unknown_keys_cost_no_memory() {
        let door = door(
            &[],
            Some(Rate {
                per_minute: 60,
                burst: 5,
            }),
        );
        for attempt in 0..100_000 {
            let key = format!("guess-{attempt:016}");
            let outcome = door
                .admit(
                    "/deeprecall.v1.DeepRecall/GetStats",
                    Credentials {
                        api_key: Some(key.as_bytes()),
                        ..Credentials::default()
                    },
                    None,
                )
                .await;
            assert!(matches!(outcome, Err(AccessError::UnknownKey)));
        }
        assert_eq!(door.limiter().tracked_locally(), 0);
    }

    #[tokio::test]
    async fn refusals_for_a_key_are_limited_per_address_and_valid_keys_still_pass() {
        let refused = Rate {
            per_minute: 60,
            burst: 3,
        };
        let door = door_refusing(&[], None, Some(refused));
        let stats = "/deeprecall.v1.DeepRecall/GetStats";
        let guess = Credentials {
            api_key: Some(b"guess-0000000000000000"),
            ..Credentials::default()
        };
        let here: Option<IpAddr> = "192.0.2.7".parse().ok();
        for _ in 0..3 {
            let outcome = door.admit(stats, guess, here).await;
            assert!(
                matches!(outcome, Err(AccessError::UnknownKey)),
                "{outcome:?}"
            );
        }
        match door.admit(stats, guess, here).await {
            Err(AccessError::TooManyRefusals { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected to be told to back off, got {other:?}"),
        }
        // A missing key is refused for its key too, and counts against the same allowance.
        let outcome = door.admit(stats, Credentials::default(), here).await;
        assert!(
            matches!(outcome, Err(AccessError::TooManyRefusals { .. })),
            "{outcome:?}"
        );

        let valid = Credentials {
            api_key: Some(b"reader-key-0123456789"),
            ..Credentials::default()
        };
        let query = "/deeprecall.v1.DeepRecall/Query";
        assert!(matches!(
            door.admit(query, valid, here).await,
            Ok(Admission::Caller { .. })
        ));
        // A refusal for something other than the key is not counted.
        assert!(matches!(
            door.admit("/deeprecall.v1.DeepRecall/ClearCache", valid, here)
                .await,
            Err(AccessError::MissingScope { .. })
        ));
        let elsewhere: Option<IpAddr> = "192.0.2.8".parse().ok();
        assert!(matches!(
            door.admit(stats, guess, elsewhere).await,
            Err(AccessError::UnknownKey)
        ));
    }
}
