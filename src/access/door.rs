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
                    key: crate::secret::Secret::new("reader-key-0123456789"),
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

    fn key_entry(name: &str, key: &str, scopes: Vec<Scope>) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            key: crate::secret::Secret::new(key),
            sha256: None,
            subject: None,
            scopes,
            collections: None,
            requests_per_minute: None,
            burst: None,
        }
    }

    fn door_with(
        keys: Vec<KeyEntry>,
        keys_file: Option<PathBuf>,
        rate: Option<Rate>,
        metrics: &Metrics,
    ) -> FrontDoor {
        FrontDoor::new(
            FrontDoorSettings {
                keys,
                keys_file,
                exempt_services: vec![],
                default_rate: rate,
                refused_rate: None,
            },
            RateLimiter::in_memory(1_000),
            QuerySlots::new(SlotSettings {
                max_running: 4,
                max_waiting: 0,
                max_wait: Duration::ZERO,
            }),
        )
        .expect("front door")
        .with_metrics(metrics.clone())
    }

    fn api_key(key: &str) -> Credentials<'_> {
        Credentials {
            api_key: Some(key.as_bytes()),
            ..Credentials::default()
        }
    }

    fn admitted(admission: Result<Admission, AccessError>) -> (Caller, Option<QuerySlot>) {
        match admission {
            Ok(Admission::Caller { caller, slot }) => (caller, slot),
            other => panic!("expected a caller, got {other:?}"),
        }
    }

    fn counted(metrics: &Metrics, reason: &str) -> bool {
        let series = format!("reason=\"{reason}\"");
        metrics
            .render()
            .lines()
            .any(|line| line.starts_with("deeprecall_rate_limited") && line.contains(&series))
    }

    const QUERY: &str = "/deeprecall.v1.DeepRecall/Query";
    const STATS: &str = "/deeprecall.v1.DeepRecall/GetStats";

    #[tokio::test]
    async fn without_keys_every_call_is_anonymous_and_limited_per_address() {
        let metrics = Metrics::new();
        let rate = Rate {
            per_minute: 60,
            burst: 2,
        };
        let door = door_with(vec![], None, Some(rate), &metrics);
        assert!(!door.auth_enabled());
        let here: Option<IpAddr> = "192.0.2.1".parse().ok();
        let (caller, slot) = admitted(door.admit(QUERY, Credentials::default(), here).await);
        assert!(!caller.authenticated);
        assert_eq!(&*caller.limit_key, "peer:192.0.2.1");
        assert!(slot.is_some());
        admitted(door.admit(STATS, Credentials::default(), here).await);
        match door.admit(STATS, Credentials::default(), here).await {
            Err(AccessError::RateLimited { per_minute, .. }) => assert_eq!(per_minute, 60),
            other => panic!("expected the third call limited, got {other:?}"),
        }
        assert!(counted(&metrics, "peer"));
        assert!(!counted(&metrics, "key"));
        // Another address has a bucket of its own.
        let there: Option<IpAddr> = "192.0.2.2".parse().ok();
        admitted(door.admit(STATS, Credentials::default(), there).await);
    }

    #[tokio::test]
    async fn only_methods_that_run_queries_hold_a_slot() {
        let door = door_with(vec![], None, None, &Metrics::new());
        for (path, holds) in [
            (QUERY, true),
            ("/deeprecall.v1.DeepRecall/QueryBatch", true),
            (STATS, false),
            ("/deeprecall.v1.DeepRecall/AddDocuments", false),
            ("/deeprecall.v1.DeepRecall/NotYetAMethod", false),
        ] {
            let (_, slot) = admitted(door.admit(path, Credentials::default(), None).await);
            assert_eq!(slot.is_some(), holds, "{path}");
        }
        let (_, slot) = admitted(door.admit(QUERY, Credentials::default(), None).await);
        assert_eq!(door.slots().running(), 1);
        drop(slot);
        assert_eq!(door.slots().running(), 0);
    }

    #[tokio::test]
    async fn a_keys_scope_is_checked_and_a_call_naming_no_method_needs_none() {
        let metrics = Metrics::new();
        let door = door_with(
            vec![key_entry(
                "writer",
                "writer-key-0123456789",
                vec![Scope::Write],
            )],
            None,
            None,
            &metrics,
        );
        assert!(door.auth_enabled());
        assert_eq!(door.key_count(), 1);
        let key = api_key("writer-key-0123456789");
        assert!(matches!(
            door.admit(QUERY, key, None).await,
            Err(AccessError::MissingScope { .. })
        ));
        let (caller, slot) = admitted(
            door.admit("/deeprecall.v1.DeepRecall/AddDocuments", key, None)
                .await,
        );
        assert_eq!(&*caller.name, "writer");
        assert!(caller.authenticated);
        assert!(slot.is_none());
        admitted(door.admit_call(None, key, None).await);
        assert!(matches!(
            door.admit_call(None, api_key("wrong-key-0123456789"), None)
                .await,
            Err(AccessError::UnknownKey)
        ));
    }

    #[tokio::test]
    async fn a_key_over_its_rate_is_limited_and_counted_as_a_key() {
        let metrics = Metrics::new();
        let mut entry = key_entry("reader", "reader-key-0123456789", vec![Scope::Query]);
        entry.requests_per_minute = Some(30);
        entry.burst = Some(1);
        let door = door_with(vec![entry], None, None, &metrics);
        let key = api_key("reader-key-0123456789");
        admitted(door.admit(STATS, key, None).await);
        match door.admit(STATS, key, None).await {
            Err(AccessError::RateLimited { per_minute, .. }) => assert_eq!(per_minute, 30),
            other => panic!("expected the key limited, got {other:?}"),
        }
        assert!(counted(&metrics, "key"));
        assert!(!counted(&metrics, "peer"));
    }

    #[tokio::test]
    async fn a_batch_pays_for_its_other_queries_and_never_past_the_burst() {
        let metrics = Metrics::new();
        let rate = Rate {
            per_minute: 60,
            burst: 4,
        };
        let door = door_with(vec![], None, Some(rate), &metrics);
        let (caller, _) = admitted(door.admit(QUERY, Credentials::default(), None).await);
        match door.charge_batch(&caller, 5).await {
            Err(AccessError::BatchOverBurst { cost, burst }) => {
                assert_eq!((cost, burst), (5, 4));
            }
            other => panic!("expected a batch over the burst, got {other:?}"),
        }
        assert!(counted(&metrics, "batch_over_burst"));
        // The call paid one; a batch of three pays two more, leaving one of the four.
        door.charge_batch(&caller, 3)
            .await
            .expect("within the burst");
        door.charge_batch(&caller, 1)
            .await
            .expect("a batch of one paid already");
        door.charge(&caller, 1)
            .await
            .expect("the last of the burst");
        assert!(matches!(
            door.charge(&caller, 1).await,
            Err(AccessError::RateLimited { .. })
        ));

        // A batch of exactly the burst fits a fresh bucket.
        let there: Option<IpAddr> = "192.0.2.9".parse().ok();
        let (fresh, _) = admitted(door.admit(QUERY, Credentials::default(), there).await);
        door.charge_batch(&fresh, 4)
            .await
            .expect("exactly the burst");
        assert!(matches!(
            door.charge(&fresh, 1).await,
            Err(AccessError::RateLimited { .. })
        ));

        let unlimited = Caller::anonymous(None, None);
        door.charge_batch(&unlimited, 10_000)
            .await
            .expect("no rate, no charge");
        door.charge(&unlimited, 10_000)
            .await
            .expect("no rate, no charge");
    }

    #[tokio::test]
    async fn a_reload_takes_the_new_key_file_and_a_broken_one_keeps_the_old_keys() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("keys.toml");
        let entry = |name: &str, key: &str| {
            format!("[[keys]]\nname = \"{name}\"\nkey = \"{key}\"\nscopes = [\"query\"]\n")
        };
        std::fs::write(&path, entry("first", "first-key-0123456789")).expect("written");
        let door = door_with(vec![], Some(path.clone()), None, &Metrics::new());
        assert!(door.auth_enabled());
        assert_eq!(door.key_count(), 1);
        admitted(
            door.admit(STATS, api_key("first-key-0123456789"), None)
                .await,
        );

        let two =
            entry("first", "first-key-0123456789") + &entry("second", "second-key-0123456789");
        std::fs::write(&path, two).expect("written");
        assert_eq!(door.reload_keys().expect("reloaded"), 2);
        assert_eq!(door.key_count(), 2);
        admitted(
            door.admit(STATS, api_key("second-key-0123456789"), None)
                .await,
        );

        std::fs::write(&path, "[[keys]]\nname = ").expect("written");
        assert!(matches!(
            door.reload_keys(),
            Err(AccessError::InvalidKeys(_))
        ));
        assert_eq!(door.key_count(), 2);
        admitted(
            door.admit(STATS, api_key("second-key-0123456789"), None)
                .await,
        );

        // An empty key file lets nobody in: auth stays on.
        std::fs::write(&path, "").expect("written");
        let empty = door_with(vec![], Some(path), None, &Metrics::new());
        assert!(empty.auth_enabled());
        assert!(matches!(
            empty.admit(STATS, Credentials::default(), None).await,
            Err(AccessError::MissingKey)
        ));
    }

    #[tokio::test]
    async fn a_certificate_identifies_a_call_without_a_key_but_never_rescues_a_wrong_one() {
        let mut entry = key_entry("indexer", "", vec![Scope::Write]);
        entry.key = crate::secret::Secret::default();
        entry.subject = Some("CN=indexer,O=Example".into());
        let door = door_with(vec![entry], None, None, &Metrics::new());
        let known = crate::transport::Subject::parse("O=Example,CN=indexer").expect("subject");
        let unknown = crate::transport::Subject::parse("CN=stranger").expect("subject");
        let by_certificate = |subject| Credentials {
            certificate_subject: Some(subject),
            ..Credentials::default()
        };
        let (caller, _) = admitted(
            door.admit(
                "/deeprecall.v1.DeepRecall/AddDocuments",
                by_certificate(&known),
                None,
            )
            .await,
        );
        assert_eq!(&*caller.name, "indexer");
        assert!(matches!(
            door.admit(STATS, by_certificate(&unknown), None).await,
            Err(AccessError::UnknownSubject(_))
        ));
        let wrong_key_and_certificate = Credentials {
            api_key: Some(b"wrong-key-0123456789"),
            certificate_subject: Some(&known),
            ..Credentials::default()
        };
        assert!(matches!(
            door.admit(STATS, wrong_key_and_certificate, None).await,
            Err(AccessError::UnknownKey)
        ));
    }
}
