//! The front door's decisions: who is calling (API keys), what they may do (scopes and
//! collections), how often (rate limits) and how many queries run at once (load shedding).
//!
//! The server applies them once to every call as a tower layer (`server::front_door`); this
//! module knows no HTTP or gRPC type, and only `api::status` turns its errors into statuses.

mod door;
pub mod keys;
pub mod limit;
pub mod shed;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::EngineStats;
use crate::store::DEFAULT_COLLECTION;
pub use door::{Admission, Credentials, FrontDoor, FrontDoorSettings};
pub use keys::{KeyEntry, KeyFile, KeyRing};
pub use limit::{Decision, Rate, RateLimiter};
pub use shed::{QuerySlot, QuerySlots, SlotSettings};

/// Errors of the front door: each is a refused call, except [`AccessError::InvalidKeys`],
/// which refuses a key configuration at start-up or on reload.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    /// The call carries no API key.
    #[error("missing API key: send `authorization: Bearer <key>` or `x-api-key: <key>`")]
    MissingKey,
    /// The key metadata cannot be read.
    #[error("malformed API key: {0}")]
    MalformedKey(&'static str),
    /// No configured key matches.
    #[error("unknown API key")]
    UnknownKey,
    /// The call carries no key, and no key file entry names its client certificate.
    #[error("no API key, and no key file entry names the client certificate subject {0:?}")]
    UnknownSubject(String),
    /// The key lacks the scope the method needs.
    #[error("key {caller:?} lacks the \"{scope}\" scope that {method} needs")]
    MissingScope {
        /// Name of the key.
        caller: String,
        /// Scope needed.
        scope: Scope,
        /// Method called.
        method: &'static str,
    },
    /// The key may not touch the collection.
    #[error("key {caller:?} may not use collection {collection:?}")]
    CollectionDenied {
        /// Name of the key.
        caller: String,
        /// Collection asked for.
        collection: String,
    },
    /// The key may not clear every collection's cache entries.
    #[error("key {caller:?} is limited to some collections: name one to clear")]
    ClearAllDenied {
        /// Name of the key.
        caller: String,
    },
    /// The caller sent more requests than its rate allows.
    #[error("rate limit of {per_minute} requests per minute exceeded; retry in {}", seconds_text(*retry_after))]
    RateLimited {
        /// The steady rate that refused the call: the caller's, or this replica's share of it
        /// while the shared limit in Redis cannot be checked.
        per_minute: u32,
        /// Wait before the request would be admitted.
        retry_after: Duration,
    },
    /// The client's address sent more calls without a valid key than it may.
    #[error("too many calls with a missing, malformed or unknown API key from this address; retry in {}", seconds_text(*retry_after))]
    TooManyRefusals {
        /// Wait before such a call would be answered again.
        retry_after: Duration,
    },
    /// A batch costs more than the caller's burst, so it can never be admitted whole.
    #[error("a batch of {cost} queries exceeds the rate-limit burst of {burst}: split it")]
    BatchOverBurst {
        /// Queries in the batch.
        cost: u32,
        /// The caller's burst.
        burst: u32,
    },
    /// Every query slot is taken and the waiting line is full.
    #[error("server overloaded: {running} queries running and {queued} waiting; retry later")]
    Overloaded {
        /// Queries running.
        running: usize,
        /// Queries waiting.
        queued: usize,
    },
    /// A query waited its longest for a slot.
    #[error("server overloaded: no query slot freed within {waited:?}; retry later")]
    QueueTimeout {
        /// Time waited.
        waited: Duration,
    },
    /// A key configuration is invalid.
    #[error("invalid API keys: {0}")]
    InvalidKeys(String),
    /// The identity the front door gives every call is missing: a wiring fault.
    #[error("the call has no caller identity")]
    NoIdentity,
}

impl AccessError {
    /// Time after which the refused call may succeed, for a `retry-after` hint.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AccessError::RateLimited { retry_after, .. }
            | AccessError::TooManyRefusals { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Whole seconds, rounded up, as `retry-after` counts them.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        whole + 1
    } else {
        whole.max(1)
    }
}

fn seconds_text(wait: Duration) -> String {
    match retry_after_seconds(wait) {
        1 => "1 second".to_string(),
        seconds => format!("{seconds} seconds"),
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Query, QueryBatch, GetStats, ListCollections, GetDocuments.
    Query,
    /// AddDocuments, DeleteDocuments, ClearCache, DeleteCollection.
    Write,
    /// Everything, and every caller's usage in GetStats.
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Query => "query",
            Scope::Write => "write",
            Scope::Admin => "admin",
        })
    }
}

/// The DeepRecall RPCs, as the front door tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `Query`.
    Query,
    /// `QueryBatch`.
    QueryBatch,
    /// `AddDocuments`.
    AddDocuments,
    /// `DeleteDocuments`.
    DeleteDocuments,
    /// `ClearCache`.
    ClearCache,
    /// `GetStats`.
    GetStats,
    /// `ListCollections`.
    ListCollections,
    /// `DeleteCollection`.
    DeleteCollection,
    /// `GetDocuments`.
    GetDocuments,
}

/// Full name of the DeepRecall service, as it appears in request paths.
pub const SERVICE_PATH: &str = "deeprecall.v1.DeepRecall";

impl Method {
    /// Every method.
    pub const ALL: [Method; 9] = [
        Method::Query,
        Method::QueryBatch,
        Method::AddDocuments,
        Method::DeleteDocuments,
        Method::ClearCache,
        Method::GetStats,
        Method::ListCollections,
        Method::DeleteCollection,
        Method::GetDocuments,
    ];

    /// The method a gRPC path (`/deeprecall.v1.DeepRecall/Query`) names, if any.
    pub fn from_path(path: &str) -> Option<Method> {
        let (service, name) = path.strip_prefix('/')?.split_once('/')?;
        if service != SERVICE_PATH {
            return None;
        }
        Method::ALL.into_iter().find(|method| method.name() == name)
    }

    /// The method's name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Query => "Query",
            Method::QueryBatch => "QueryBatch",
            Method::AddDocuments => "AddDocuments",
            Method::DeleteDocuments => "DeleteDocuments",
            Method::ClearCache => "ClearCache",
            Method::GetStats => "GetStats",
            Method::ListCollections => "ListCollections",
            Method::DeleteCollection => "DeleteCollection",
            Method::GetDocuments => "GetDocuments",
        }
    }

    /// The scope a key needs to call it.
    pub fn scope(self) -> Scope {
        match self {
            Method::Query
            | Method::QueryBatch
            | Method::GetStats
            | Method::ListCollections
            | Method::GetDocuments => Scope::Query,
            Method::AddDocuments
            | Method::DeleteDocuments
            | Method::ClearCache
            | Method::DeleteCollection => Scope::Write,
        }
    }

    /// Whether the method runs queries, and so takes a query slot.
    pub fn runs_queries(self) -> bool {
        matches!(self, Method::Query | Method::QueryBatch)
    }
}

/// Who is calling, as the front door established it; handlers find it in the request's
/// extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// Name of the key, or `anonymous` when auth is off.
    pub name: Arc<str>,
    /// Whether a key identified the caller.
    pub authenticated: bool,
    scopes: BTreeSet<Scope>,
    /// Collections the caller may touch; `None` for all.
    collections: Option<Arc<BTreeSet<String>>>,
    /// Whose bucket the caller's requests draw from.
    pub limit_key: Arc<str>,
    /// The caller's rate; `None` when unlimited.
    pub rate: Option<Rate>,
}

impl Caller {
    /// A caller admitted without a key (auth off): every scope, every collection, limited per
    /// client address.
    pub fn anonymous(peer: Option<IpAddr>, rate: Option<Rate>) -> Caller {
        let limit_key = match peer {
            Some(address) => format!("peer:{address}"),
            None => "peer:unknown".to_string(),
        };
        Caller {
            name: Arc::from("anonymous"),
            authenticated: false,
            scopes: BTreeSet::from([Scope::Query, Scope::Write, Scope::Admin]),
            collections: None,
            limit_key: Arc::from(limit_key),
            rate,
        }
    }

    /// Whether the caller holds `scope` (admin holds them all).
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the caller may see every caller's usage.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// Refuses a method whose scope the caller lacks.
    pub fn check_method(&self, method: Method) -> Result<(), AccessError> {
        if self.has_scope(method.scope()) {
            Ok(())
        } else {
            Err(AccessError::MissingScope {
                caller: self.name.to_string(),
                scope: method.scope(),
                method: method.name(),
            })
        }
    }

    /// Refuses a collection outside the caller's list; an empty name means `default`.
    pub fn check_collection(&self, collection: &str) -> Result<(), AccessError> {
        if self.may_see(collection) {
            Ok(())
        } else {
            Err(AccessError::CollectionDenied {
                caller: self.name.to_string(),
                collection: resolved(collection).to_string(),
            })
        }
    }

    /// Refuses a cache clear of every collection to a caller limited to some; an empty name
    /// means all collections here, as in `ClearCache`.
    pub fn check_clear(&self, collection: &str) -> Result<(), AccessError> {
        if collection.is_empty() {
            match self.collections {
                None => Ok(()),
                Some(_) => Err(AccessError::ClearAllDenied {
                    caller: self.name.to_string(),
                }),
            }
        } else {
            self.check_collection(collection)
        }
    }

    /// Narrows statistics to what the caller may see: its collections, and, unless it is an
    /// admin, its own usage only (as the totals and as its one account).
    pub fn restrict_stats(&self, stats: &mut EngineStats) {
        stats
            .collections
            .retain(|collection| self.may_see(&collection.name));
        if !self.is_admin() {
            let own = std::mem::take(&mut stats.accounts)
                .into_iter()
                .find(|(name, _)| **name == *self.name)
                .map(|(_, usage)| usage)
                .unwrap_or_default();
            stats.usage = own.clone();
            stats.accounts = vec![(self.name.to_string(), own)];
        }
    }

    /// Whether the caller may see the collection (in stats, say).
    pub fn may_see(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|allowed| allowed.contains(resolved(collection)))
    }
}

fn resolved(collection: &str) -> &str {
    if collection.is_empty() {
        DEFAULT_COLLECTION
    } else {
        collection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_methods_of_the_service_only() {
        assert_eq!(
            Method::from_path("/deeprecall.v1.DeepRecall/QueryBatch"),
            Some(Method::QueryBatch)
        );
        assert_eq!(Method::from_path("/deeprecall.v1.DeepRecall/Nope"), None);
        assert_eq!(Method::from_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(Method::from_path("deeprecall.v1.DeepRecall/Query"), None);
    }

    #[test]
    fn admin_holds_every_scope_and_collections_bound_what_a_caller_touches() {
        let mut caller = Caller::anonymous(None, None);
        caller.scopes = BTreeSet::from([Scope::Query]);
        caller.collections = Some(Arc::new(BTreeSet::from(["default".to_string()])));
        assert!(caller.check_method(Method::Query).is_ok());
        assert!(matches!(
            caller.check_method(Method::AddDocuments),
            Err(AccessError::MissingScope {
                scope: Scope::Write,
                ..
            })
        ));
        assert!(caller.check_collection("").is_ok());
        assert!(caller.check_collection("hr").is_err());
        assert!(caller.check_clear("").is_err());
        assert!(caller.check_clear("default").is_ok());

        caller.scopes = BTreeSet::from([Scope::Admin]);
        assert!(caller.check_method(Method::ClearCache).is_ok());
        assert!(caller.is_admin());
    }

    #[test]
    fn each_method_needs_its_scope_and_only_queries_take_a_slot() {
        let needs: Vec<(&str, Scope, bool)> = Method::ALL
            .into_iter()
            .map(|method| (method.name(), method.scope(), method.runs_queries()))
            .collect();
        assert_eq!(
            needs,
            vec![
                ("Query", Scope::Query, true),
                ("QueryBatch", Scope::Query, true),
                ("AddDocuments", Scope::Write, false),
                ("DeleteDocuments", Scope::Write, false),
                ("ClearCache", Scope::Write, false),
                ("GetStats", Scope::Query, false),
                ("ListCollections", Scope::Query, false),
                ("DeleteCollection", Scope::Write, false),
                ("GetDocuments", Scope::Query, false),
            ]
        );
        for method in Method::ALL {
            let path = format!("/{SERVICE_PATH}/{}", method.name());
            assert_eq!(Method::from_path(&path), Some(method));
        }
        let scopes: Vec<String> = [Scope::Query, Scope::Write, Scope::Admin]
            .iter()
            .map(Scope::to_string)
            .collect();
        assert_eq!(scopes, vec!["query", "write", "admin"]);
    }

    #[test]
    fn a_write_key_is_refused_nothing_outside_admin() {
        let mut caller = Caller::anonymous(None, None);
        caller.scopes = BTreeSet::from([Scope::Write]);
        assert!(caller.has_scope(Scope::Write));
        assert!(!caller.has_scope(Scope::Query));
        assert!(!caller.is_admin());
        assert!(caller.check_method(Method::DeleteCollection).is_ok());
        match caller.check_method(Method::GetStats) {
            Err(error @ AccessError::MissingScope { .. }) => assert_eq!(
                error.to_string(),
                "key \"anonymous\" lacks the \"query\" scope that GetStats needs"
            ),
            other => panic!("expected a missing scope, got {other:?}"),
        }
        // No list of collections: every one, and clearing them all, is allowed.
        assert!(caller.check_collection("hr").is_ok());
        assert!(caller.check_clear("").is_ok());
        assert!(caller.may_see("anything"));
    }

    #[test]
    fn a_denied_collection_is_named_as_resolved() {
        let mut caller = Caller::anonymous(None, None);
        caller.collections = Some(Arc::new(BTreeSet::from(["hr".to_string()])));
        match caller.check_collection("") {
            Err(AccessError::CollectionDenied { collection, .. }) => {
                assert_eq!(collection, DEFAULT_COLLECTION)
            }
            other => panic!("expected the default collection denied, got {other:?}"),
        }
        assert!(caller.check_clear("hr").is_ok());
        assert!(caller.check_clear("finance").is_err());
    }

    #[test]
    fn anonymous_callers_are_limited_per_address() {
        let address: IpAddr = [10, 0, 0, 7].into();
        let caller = Caller::anonymous(Some(address), None);
        assert_eq!(&*caller.limit_key, "peer:10.0.0.7");
        assert!(!caller.authenticated);
        assert_eq!(&*caller.name, "anonymous");
        assert!(caller.is_admin());
        assert_eq!(&*Caller::anonymous(None, None).limit_key, "peer:unknown");
    }

    fn stats_of_two_accounts() -> EngineStats {
        let usage = |queries| crate::engine::UsageTotals {
            queries,
            ..Default::default()
        };
        let collection = |name: &str| crate::store::CollectionInfo {
            name: name.to_string(),
            document_count: 1,
            version: 1,
        };
        EngineStats {
            collections: vec![collection("default"), collection("hr")],
            result_cache: Default::default(),
            search_cache: Default::default(),
            cache_backend: "memory".into(),
            usage: usage(5),
            accounts: vec![("alice".into(), usage(2)), ("bob".into(), usage(3))],
            model: "m".into(),
        }
    }

    #[test]
    fn statistics_are_narrowed_to_the_callers_collections_and_own_usage() {
        let mut alice = Caller::anonymous(None, None);
        alice.name = Arc::from("alice");
        alice.scopes = BTreeSet::from([Scope::Query]);
        alice.collections = Some(Arc::new(BTreeSet::from(["hr".to_string()])));
        let mut stats = stats_of_two_accounts();
        alice.restrict_stats(&mut stats);
        let names: Vec<&str> = stats.collections.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["hr"]);
        assert_eq!(stats.usage.queries, 2);
        assert_eq!(stats.accounts.len(), 1);
        assert_eq!(stats.accounts[0].0, "alice");
        assert_eq!(stats.accounts[0].1.queries, 2);

        // A caller with no usage yet sees zeros, not someone else's.
        let mut carol = alice.clone();
        carol.name = Arc::from("carol");
        let mut stats = stats_of_two_accounts();
        carol.restrict_stats(&mut stats);
        assert_eq!(stats.usage.queries, 0);
        assert_eq!(stats.accounts[0].0, "carol");

        let admin = Caller::anonymous(None, None);
        let mut stats = stats_of_two_accounts();
        admin.restrict_stats(&mut stats);
        assert_eq!(stats.collections.len(), 2);
        assert_eq!(stats.usage.queries, 5);
        assert_eq!(stats.accounts.len(), 2);
    }

    #[test]
    fn refusals_that_pass_with_time_say_when() {
        let limited = AccessError::RateLimited {
            per_minute: 60,
            retry_after: Duration::from_millis(1_500),
        };
        assert_eq!(limited.retry_after(), Some(Duration::from_millis(1_500)));
        assert_eq!(
            limited.to_string(),
            "rate limit of 60 requests per minute exceeded; retry in 2 seconds"
        );
        let refusals = AccessError::TooManyRefusals {
            retry_after: Duration::from_millis(300),
        };
        assert_eq!(refusals.retry_after(), Some(Duration::from_millis(300)));
        assert!(refusals.to_string().ends_with("retry in 1 second"));
        assert_eq!(AccessError::UnknownKey.retry_after(), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2_001)), 3);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
