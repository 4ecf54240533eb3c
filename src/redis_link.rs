//! One link to Redis, shared by the Redis cache and the Redis rate limiter.
//!
//! Redis is a dependency the service must survive losing. A link connects in the background and
//! never waits for Redis: until the first connection is made, and whenever Redis is slow or
//! down, each call fails within the operation timeout, and the user decides what a failure
//! means (a cache miss, a local rate limit).

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::io::tcp::TcpSettings;
use ::redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError, ScriptInvocation};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// First pause between attempts of a connection; it doubles after each failed attempt.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts of a connection.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Limit of one connection attempt, TLS handshake included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Data left unacknowledged this long closes the connection. Without it, a Redis host that
/// vanished without a reset (a network partition, a dead VM) leaves a half-open connection on
/// which every call times out and the connection manager never reconnects.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time between two warnings about failed connection attempts.
const CONNECT_WARN_INTERVAL: Duration = Duration::from_secs(30);

/// A Redis connection made in the background and repaired by itself.
pub struct RedisLink {
    state: Arc<LinkState>,
    connector: AbortHandle,
}

struct LinkState {
    /// What the link serves, for logs: `redis cache deeprecall:result`.
    purpose: String,
    url: String,
    operation_timeout: Duration,
    /// Empty until the first connection is made; the manager then repairs later outages itself.
    connection: OnceLock<ConnectionManager>,
    /// Wakes the waiters of the first connection.
    connected: Notify,
    connect_warnings: WarnGate,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink")
            .field("purpose", &self.state.purpose)
            .field("url", &redacted_url(&self.state.url))
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RedisLink {
    /// Checks the URL and starts connecting in the background; Redis need not be up. The error
    /// names the URL with its password redacted.
    pub fn open(
        purpose: impl Into<String>,
        url: &str,
        operation_timeout: Duration,
    ) -> Result<RedisLink, String> {
        let client = url
            .into_connection_info()
            .and_then(|info| Client::open(info.set_tcp_settings(tcp_settings())))
            .map_err(|err| format!("redis url {}: {err}", redacted_url(url)))?;
        let state = Arc::new(LinkState {
            purpose: purpose.into(),
            url: url.to_string(),
            operation_timeout,
            connection: OnceLock::new(),
            connected: Notify::new(),
            connect_warnings: WarnGate::new(CONNECT_WARN_INTERVAL),
        });
        let connector = tokio::spawn(connect_in_background(
            Arc::downgrade(&state),
            client,
            manager_config(operation_timeout),
        ))
        .abort_handle();
        Ok(RedisLink { state, connector })
    }

    /// Whether the first connection is made.
    pub fn is_connected(&self) -> bool {
        self.state.connection.get().is_some()
    }

    /// Waits at most `limit` for the first connection; returns whether it is made.
    pub async fn wait_until_connected(&self, limit: Duration) -> bool {
        let notified = self.state.connected.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so that a connection made in between still wakes us.
        notified.as_mut().enable();
        if self.is_connected() {
            return true;
        }
        tokio::time::timeout(limit, notified).await.is_ok() || self.is_connected()
    }

    /// The URL, password redacted.
    pub fn redacted_url(&self) -> String {
        redacted_url(&self.state.url)
    }

    /// Sends `command` and waits at most the operation timeout for its answer.
    pub async fn call<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, Failure> {
        // A clone shares the one multiplexed connection; it only spares a lock around it.
        let Some(mut connection) = self.state.connection.get().cloned() else {
            return Err(Failure::NotConnected);
        };
        let limit = self.state.operation_timeout;
        match tokio::time::timeout(limit, command.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Failure::Redis(err)),
            Err(_) => Err(Failure::TimedOut(limit)),
        }
    }

    /// Runs a Lua script (EVALSHA, loading it on a cache miss) within the operation timeout.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Failure> {
        let Some(mut connection) = self.state.connection.get().cloned() else {
            return Err(Failure::NotConnected);
        };
        let limit = self.state.operation_timeout;
        match tokio::time::timeout(limit, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Failure::Redis(err)),
            Err(_) => Err(Failure::TimedOut(limit)),
        }
    }

    /// The task making the first connection, for tests that check it ends.
    #[cfg(test)]
    pub(crate) fn connector(&self) -> AbortHandle {
        self.connector.clone()
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        // A connection attempt in progress would notice the dropped link only when it ends,
        // which with Redis down takes seconds; stopping the task now frees it at once.
        self.connector.abort();
    }
}

/// Makes the first connection, retrying with a doubling pause; ends once connected or once the
/// link is gone. Later outages are the connection manager's to repair.
async fn connect_in_background(
    state: Weak<LinkState>,
    client: Client,
    config: ConnectionManagerConfig,
) {
    let mut pause = CONNECT_BACKOFF_MIN;
    loop {
        let attempt = ConnectionManager::new_with_config(client.clone(), config.clone()).await;
        // Upgraded only between attempts, so that this task never keeps a dropped link alive.
        let Some(state) = state.upgrade() else {
            return;
        };
        match attempt {
            Ok(manager) => {
                let stored = state.connection.set(manager).is_ok();
                debug_assert!(stored, "only the connecting task stores the connection");
                state.connected.notify_waiters();
                tracing::info!(url = %redacted_url(&state.url), "{} connected", state.purpose);
                return;
            }
            Err(err) => {
                if let Some(held_back) = state.connect_warnings.admit(Instant::now()) {
                    tracing::warn!(
                        error = %err,
                        url = %redacted_url(&state.url),
                        held_back,
                        "{} cannot connect; retrying",
                        state.purpose
                    );
                }
            }
        }
        drop(state);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(CONNECT_BACKOFF_MAX);
    }
}

fn manager_config(operation_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        // The manager's own default (500 ms) would be a second limit, shorter than a longer
        // configured operation timeout.
        .set_response_timeout(Some(operation_timeout))
        .set_min_delay(CONNECT_BACKOFF_MIN)
        .set_max_delay(CONNECT_BACKOFF_MAX)
}

fn tcp_settings() -> TcpSettings {
    // Nagle's algorithm would hold back a request written while an earlier one is unanswered on
    // the shared connection.
    let settings = TcpSettings::default().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(TCP_USER_TIMEOUT);
    settings
}

/// Why a Redis call failed.
#[derive(Debug)]
pub enum Failure {
    /// The first connection is not made yet.
    NotConnected,
    /// No answer came within the operation timeout.
    TimedOut(Duration),
    /// Redis, or the connection to it, reported an error.
    Redis(RedisError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotConnected => f.write_str("not connected yet"),
            Failure::TimedOut(limit) => write!(f, "no answer within {limit:?}"),
            Failure::Redis(err) => write!(f, "{err}"),
        }
    }
}

/// Lets a warning through at most once per interval and counts the ones it holds back, so
/// that an outage logs a line per interval rather than one per request.
#[derive(Debug)]
pub struct WarnGate {
    interval: Duration,
    state: Mutex<WarnGateState>,
}

#[derive(Debug, Default)]
struct WarnGateState {
    last: Option<Instant>,
    held_back: u64,
}

impl WarnGate {
    /// A gate letting one warning through per `interval`.
    pub fn new(interval: Duration) -> Self {
        WarnGate {
            interval,
            state: Mutex::new(WarnGateState::default()),
        }
    }

    /// Returns how many warnings were held back since the last one let through if a warning may
    /// go out at `now`, and `None` if it must be held back.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        if state
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.interval)
        {
            state.held_back += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.held_back))
    }
}

/// Returns `url` with its password, whether `user:password@` or a `pass=`/`password=` query
/// parameter, replaced by `***`, for logs, errors and `Debug`.
pub fn redacted_url(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |end| authority_start + end);
    let mut redacted = String::with_capacity(url.len());
    let authority = &url[authority_start..authority_end];
    redacted.push_str(&url[..authority_start]);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    redacted.push_str(user);
                    redacted.push_str(":***");
                }
                None => redacted.push_str(user_info),
            }
            redacted.push('@');
            redacted.push_str(host);
        }
        None => redacted.push_str(authority),
    }
    let rest = &url[authority_end..];
    let Some((path, query_and_fragment)) = rest.split_once('?') else {
        redacted.push_str(rest);
        return redacted;
    };
    let (query, fragment) = match query_and_fragment.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query_and_fragment, None),
    };
    redacted.push_str(path);
    redacted.push('?');
    for (index, parameter) in query.split('&').enumerate() {
        if index > 0 {
            redacted.push('&');
        }
        match parameter.split_once('=') {
            Some((name, _value))
                if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
            {
                redacted.push_str(name);
                redacted.push_str("=***");
            }
            _ => redacted.push_str(parameter),
        }
    }
    if let Some(fragment) = fragment {
        redacted.push('#');
        redacted.push_str(fragment);
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
            ("rediss://user:secret@host", "rediss://user:***@host"),
            (
                "rediss://user@host/#insecure",
                "rediss://user@host/#insecure",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=secret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "unix:///run/redis.sock?password=secret#frag",
                "unix:///run/redis.sock?password=***#frag",
            ),
            ("user:secret@host", "user:***@host"),
        ] {
            assert_eq!(redacted_url(url), shown);
        }
    }

    #[test]
    fn the_warn_gate_lets_one_warning_through_per_interval() {
        let gate = WarnGate::new(Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(gate.admit(start), Some(0));
        assert_eq!(gate.admit(start + Duration::from_secs(1)), None);
        assert_eq!(gate.admit(start + Duration::from_secs(29)), None);
        assert_eq!(gate.admit(start + Duration::from_secs(30)), Some(2));
        assert_eq!(gate.admit(start + Duration::from_secs(31)), None);
    }
}
