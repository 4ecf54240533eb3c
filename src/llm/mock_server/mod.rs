//! A scripted, misbehaving OpenAI- and Anthropic-compatible HTTP server for tests of the HTTP
//! model backends, which also serves OpenAI-style embeddings and Cohere-style reranking.
//!
//! It is a real server on `127.0.0.1:0`, so a backend under test goes through its whole HTTP
//! stack: connection pool, timeouts, retries, SSE parsing. It answers each request from a
//! [`MockScript`], records every request before it does anything else, and notices when a client
//! gives up on a request before the answer is complete, which is how tests prove that cancelling
//! a run aborts the in-flight HTTP request.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures::Stream;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::estimate_tokens;
use socket::{Peer, TimedListener};

mod anthropic;
mod exchange;
mod faults;
mod openai;
mod services;
mod socket;
mod wire;

use anthropic::*;
use exchange::*;
use faults::*;
use openai::*;
use services::*;
use wire::*;

/// Largest request body the server reads; larger ones are recorded with a `null` body and
/// refused with 413, like a real provider would.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Pause between two SSE events, long enough that each one reaches the client on its own.
const CHUNK_PAUSE: Duration = Duration::from_millis(2);
/// Words per streamed text delta.
const WORDS_PER_DELTA: usize = 3;
/// Characters per streamed piece of tool-call arguments.
const ARGUMENT_PIECE_CHARS: usize = 8;
/// Text of a [`MockReply::TruncatedStream`] before it is cut off.
const TRUNCATED_TEXT: &str =
    "This answer is cut off in the middle of a sentence because the connection drops before";
/// Body of a [`MockReply::MalformedJson`]: what a misbehaving proxy in front of a provider sends.
const MALFORMED_BODY: &str =
    "{\"id\": \"chatcmpl-broken\", \"choices\": [ <html>502 Bad Gateway</html>";
/// Text answered when the script has no reply at all.
const FALLBACK_TEXT: &str = "ok";
/// Model name reported when the request names none.
const FALLBACK_MODEL: &str = "mock-model";
/// Dimensions of the mock's embeddings when neither the request nor the script sets them.
pub const DEFAULT_EMBEDDING_DIMENSION: usize = 64;

/// One request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Path including the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers in the order received, names lowercased; empty with [`Recording::Light`].
    pub headers: Vec<(String, String)>,
    /// Body parsed as JSON, or `null` when it is not JSON or the script records
    /// [`Recording::Light`].
    pub body: Value,
    /// The text of the request's first user message, which picks its conversation.
    pub first_user_text: String,
    /// The mock's own time for the request, latency included: from the first byte of it read
    /// off the socket to the start of the latest write of its answer (of the last bytes, once
    /// the answer is complete); `None` until the mock starts writing an answer.
    pub service_time: Option<Duration>,
}

impl RecordedRequest {
    /// Returns the first value of header `name`, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What the server answers, request by request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MockScript {
    /// Latency added before every reply.
    pub latency: Duration,
    /// Conversations as (marker, replies). A request belongs to the first conversation whose
    /// marker is a substring of the request's first user message; that conversation's replies
    /// are consumed in order, one per request, and the last one repeats once they run out.
    pub conversations: Vec<(String, Vec<MockReply>)>,
    /// Replies to chat requests of no conversation, consumed in order; the last one repeats
    /// once they run out, and an empty list answers a plain text "ok".
    pub default_replies: Vec<MockReply>,
    /// Pause between the events of a streamed reply; `None` is 2 ms, enough for a client to
    /// see the text arrive piece by piece. Benchmarks set zero.
    pub chunk_pause: Option<Duration>,
    /// How much of each request the server keeps.
    pub recording: Recording,
    /// Replies of `/v1/embeddings`, consumed in order; the last one repeats once they run out,
    /// and an empty list answers every request correctly.
    pub embedding_replies: Vec<MockReply>,
    /// Replies of `/v1/rerank` and `/v2/rerank`, consumed like `embedding_replies`.
    pub rerank_replies: Vec<MockReply>,
    /// Dimensions of the embeddings answered to a request that sets no `dimensions`;
    /// `None` is [`DEFAULT_EMBEDDING_DIMENSION`].
    pub embedding_dimension: Option<usize>,
}

/// How much of each request the mock keeps for [`MockLlmServer::requests`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recording {
    /// Everything: path, headers, the parsed body.
    #[default]
    Full,
    /// Path, first user message and timing only. A benchmark sends thousands of requests:
    /// keeping every parsed body would grow the heap through the whole run, and the process,
    /// engine included, would keep paying for fresh memory the server it measures never needs.
    Light,
    /// Nothing: [`MockLlmServer::requests`] stays empty and nothing is timed. A soak sends
    /// requests for as long as it runs; even light records would grow the heap it watches.
    Off,
}

impl MockScript {
    /// Creates a script that answers every request from `replies`, in order.
    pub fn replies(replies: Vec<MockReply>) -> Self {
        MockScript {
            default_replies: replies,
            ..MockScript::default()
        }
    }

    /// Returns the script with `latency` added before every reply.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Returns the script with this pause between the events of streamed replies.
    pub fn with_chunk_pause(mut self, pause: Duration) -> Self {
        self.chunk_pause = Some(pause);
        self
    }

    /// Returns the script recording requests as `recording` says.
    pub fn with_recording(mut self, recording: Recording) -> Self {
        self.recording = recording;
        self
    }

    /// Returns the script answering `/v1/embeddings` from `replies`, in order.
    pub fn with_embedding_replies(mut self, replies: Vec<MockReply>) -> Self {
        self.embedding_replies = replies;
        self
    }

    /// Returns the script answering the rerank endpoints from `replies`, in order.
    pub fn with_rerank_replies(mut self, replies: Vec<MockReply>) -> Self {
        self.rerank_replies = replies;
        self
    }

    /// Returns the script embedding into `dimension` dimensions unless a request asks otherwise.
    pub fn with_embedding_dimension(mut self, dimension: usize) -> Self {
        self.embedding_dimension = Some(dimension);
        self
    }

    /// Returns the script with one more conversation, matched after the ones already added.
    pub fn with_conversation(mut self, marker: impl Into<String>, replies: Vec<MockReply>) -> Self {
        self.conversations.push((marker.into(), replies));
        self
    }
}

/// One scripted reply.
///
/// On the embeddings and rerank endpoints, `Text`, `ToolCalls` and `Correct` all mean the
/// correct answer: vectors from feature hashing (similar texts get similar vectors) or scores
/// from their cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub enum MockReply {
    /// The endpoint's correct answer; on a chat endpoint, the text "ok".
    Correct,
    /// Embeddings: one vector fewer than inputs. Rerank: one result fewer than documents. A
    /// chat endpoint answers 500, naming the script mistake.
    WrongCount,
    /// Embeddings: vectors with one dimension more than asked. Rerank: a result whose index
    /// names no document. A chat endpoint answers 500, naming the script mistake.
    WrongShape,
    /// Assistant text, finishing with "stop" (`end_turn` on the Anthropic endpoint).
    Text(String),
    /// Tool calls as (tool name, arguments JSON text); the arguments may be deliberately
    /// malformed.
    ToolCalls(Vec<(String, String)>),
    /// The inner reply with the reported usage overridden; `cost_usd` goes into `usage.cost`
    /// (OpenRouter style) on the OpenAI endpoint and is not reported on the Anthropic one.
    Usage {
        /// The reply whose usage is overridden.
        reply: Box<MockReply>,
        /// Reported prompt tokens.
        input_tokens: u64,
        /// Reported completion tokens.
        output_tokens: u64,
        /// Reported cost, if any.
        cost_usd: Option<f64>,
    },
    /// An HTTP error, e.g. 429 with `Retry-After: 1`, 500 or 401.
    Status {
        /// HTTP status code.
        code: u16,
        /// Value of the `Retry-After` header, sent only when given.
        retry_after: Option<String>,
        /// The error message, wrapped in the provider's error object; a body that already is a
        /// JSON object is sent verbatim.
        body: String,
    },
    /// Never answers, until the client gives up or the server stops.
    Hang,
    /// Status 200 with a body that is not JSON (for a streaming request: an SSE event whose data
    /// is not JSON).
    MalformedJson,
    /// For a streaming request: some SSE events, then the connection drops without `[DONE]`
    /// (`message_stop` on the Anthropic endpoint). For a non-streaming request: status 200 with a
    /// JSON body cut in half.
    TruncatedStream,
    /// The inner reply after an extra delay.
    Delay(Duration, Box<MockReply>),
    /// The inner reply once the test calls [`MockLlmServer::release_held`]: a call that stays
    /// in flight exactly as long as a test needs, whatever the machine's speed.
    Held(Box<MockReply>),
}

impl MockReply {
    /// Builds a text reply.
    pub fn text(text: impl Into<String>) -> Self {
        MockReply::Text(text.into())
    }

    /// Builds a reply calling one tool with `arguments` as JSON text.
    pub fn tool_call(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        MockReply::ToolCalls(vec![(name.into(), arguments.into())])
    }

    /// Builds an error reply without `Retry-After`.
    pub fn status(code: u16, body: impl Into<String>) -> Self {
        MockReply::Status {
            code,
            retry_after: None,
            body: body.into(),
        }
    }

    /// Builds a 429 reply carrying `Retry-After: retry_after`.
    pub fn rate_limited(retry_after: impl Into<String>) -> Self {
        MockReply::Status {
            code: 429,
            retry_after: Some(retry_after.into()),
            body: "rate limit exceeded".to_string(),
        }
    }

    /// Builds `reply` delayed by `delay`.
    pub fn delayed(delay: Duration, reply: MockReply) -> Self {
        MockReply::Delay(delay, Box::new(reply))
    }

    /// Builds `reply` held back until [`MockLlmServer::release_held`].
    pub fn held(reply: MockReply) -> Self {
        MockReply::Held(Box::new(reply))
    }
}

/// A running mock server; dropping it stops the server and ends requests still hanging.
pub struct MockLlmServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// How many abandoned requests [`MockLlmServer::wait_for_abandoned_request`] has returned.
    abandoned_returned: Mutex<usize>,
}

impl std::fmt::Debug for MockLlmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlmServer")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .field("abandoned", &self.abandoned_requests())
            .finish_non_exhaustive()
    }
}

impl MockLlmServer {
    /// Starts a server on `127.0.0.1` on a free port, answering from `script`.
    pub async fn start(script: MockScript) -> std::io::Result<MockLlmServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;

        let (shutdown, _) = watch::channel(false);
        let (abandoned, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            latency: script.latency,
            chunk_pause: script.chunk_pause.unwrap_or(CHUNK_PAUSE),
            recording: script.recording,
            alarms: AlarmClock::start()?,
            embedding_dimension: script
                .embedding_dimension
                .unwrap_or(DEFAULT_EMBEDDING_DIMENSION),
            script: Mutex::new(ScriptCursor::new(script)),
            requests: Mutex::new(Vec::new()),
            abandoned,
            shutdown,
            released: watch::Sender::new(false),
            next_id: AtomicU64::new(1),
        });

        let listener = TimedListener {
            listener,
            shared: Arc::clone(&shared),
        };
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<Peer>();
        let mut stop = shared.shutdown.subscribe();
        let signal = async move {
            // An error means the sender is gone, which also means the server should stop.
            let _ = stop.wait_for(|stopping| *stopping).await;
        };
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(%error, "mock llm server failed");
            }
        });

        Ok(MockLlmServer {
            addr,
            shared,
            abandoned_returned: Mutex::new(0),
        })
    }

    /// Returns the address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the server's root URL without a path, e.g. `http://127.0.0.1:PORT`, the base for
    /// Azure-style `/openai/deployments/{deployment}/chat/completions` URLs.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the OpenAI-style base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Returns every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// Lets every [`MockReply::Held`] reply go, those waiting and those to come.
    pub fn release_held(&self) {
        self.shared.released.send_replace(true);
    }

    /// Returns how many requests the server has recorded: all it received, but none with
    /// [`Recording::Off`].
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().len()
    }

    /// Waits for the next abandoned request, one the client dropped before the server finished
    /// answering it (during latency, a delay, a hang or mid-stream), and returns how long after
    /// its arrival it was dropped.
    ///
    /// Each abandoned request is returned once, in order; returns `None` when no further request
    /// is abandoned within `timeout`.
    pub async fn wait_for_abandoned_request(&self, timeout: Duration) -> Option<Duration> {
        let mut abandoned = self.shared.abandoned.subscribe();
        let next = async {
            loop {
                {
                    let durations = abandoned.borrow_and_update();
                    let mut returned = self.abandoned_returned.lock();
                    if let Some(elapsed) = durations.get(*returned) {
                        *returned += 1;
                        return Some(*elapsed);
                    }
                }
                if abandoned.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, next).await.ok().flatten()
    }

    /// Returns how many requests clients have abandoned so far.
    pub fn abandoned_requests(&self) -> usize {
        self.shared.abandoned.borrow().len()
    }
}

impl Drop for MockLlmServer {
    fn drop(&mut self) {
        // Graceful shutdown alone would wait for hanging requests forever; they watch the same
        // flag and end with 503.
        self.shared.shutdown.send_replace(true);
    }
}

/// State shared by the server handle and the request handlers.
struct Shared {
    latency: Duration,
    embedding_dimension: usize,
    chunk_pause: Duration,
    alarms: AlarmClock,
    script: Mutex<ScriptCursor>,
    recording: Recording,
    requests: Mutex<Vec<RecordedRequest>>,
    /// How long after arrival each abandoned request was dropped, in order.
    abandoned: watch::Sender<Vec<Duration>>,
    shutdown: watch::Sender<bool>,
    /// Whether held replies may go.
    released: watch::Sender<bool>,
    /// Source of response and tool-call ids, unique for the server's lifetime.
    next_id: AtomicU64,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sleeps until `deadline`, or forever when it is `None`, unless the server stops first.
    async fn pause_until(&self, deadline: Option<Instant>) -> Result<(), Stopping> {
        if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
            return Ok(());
        }
        let mut shutdown = self.shutdown.subscribe();
        let sleep = async {
            match deadline {
                Some(deadline) => self.alarms.sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => Ok(()),
            _ = shutdown.wait_for(|stopping| *stopping) => Err(Stopping),
        }
    }
}

/// The server is stopping.
struct Stopping;

/// Wakes sleepers at their deadlines from a thread of its own. Tokio's timer counts in 1 ms
/// ticks and fires up to a tick late, plus the wake-up: a scripted 50 ms latency would take
/// 51–52 ms, and benchmarks that subtract the configured latency would blame the difference on
/// the client. A thread waiting on a channel with a timeout wakes within tens of microseconds.
struct AlarmClock {
    requests: std::sync::mpsc::Sender<Alarm>,
}

struct Alarm {
    at: Instant,
    wake: oneshot::Sender<()>,
}

impl AlarmClock {
    /// Starts the clock's thread, which ends once the clock is dropped and no alarm is left.
    fn start() -> std::io::Result<AlarmClock> {
        let (requests, pending) = std::sync::mpsc::channel::<Alarm>();
        std::thread::Builder::new()
            .name("mock-llm-alarms".into())
            .spawn(move || ring_alarms(&pending))?;
        Ok(AlarmClock { requests })
    }

    async fn sleep_until(&self, at: Instant) {
        let (wake, woken) = oneshot::channel();
        if self.requests.send(Alarm { at, wake }).is_err() {
            // The thread is gone (it cannot be while the clock exists); keep time anyway.
            tokio::time::sleep_until(at.into()).await;
            return;
        }
        // An error means the thread dropped the alarm, which it only does when it ends.
        let _ = woken.await;
    }
}

/// Runs the alarm thread: keeps the pending alarms ordered by deadline and sleeps until the
/// earliest one, or until a new alarm arrives.
fn ring_alarms(pending: &std::sync::mpsc::Receiver<Alarm>) {
    let mut queue: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut wakers: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = queue.peek() {
            if at > now {
                break;
            }
            queue.pop();
            if let Some(wake) = wakers.remove(&id) {
                // A gone sleeper was cancelled: nothing to wake.
                let _ = wake.send(());
            }
        }
        let received = match queue.peek() {
            Some(&Reverse((at, _))) => pending.recv_timeout(at.saturating_duration_since(now)),
            None => pending
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(alarm) => {
                queue.push(Reverse((alarm.at, next_id)));
                wakers.insert(next_id, alarm.wake);
                next_id += 1;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) if queue.is_empty() => return,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(&Reverse((at, _))) = queue.peek() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
            }
        }
    }
}

/// Position in the script.
struct ScriptCursor {
    /// (marker, replies, index of the next reply).
    conversations: Vec<(String, Vec<MockReply>, usize)>,
    defaults: Vec<MockReply>,
    next_default: usize,
    embeddings: ServiceQueue,
    reranks: ServiceQueue,
    /// The conversation each first user message was found to belong to: every turn of a
    /// conversation repeats that message, and a script may hold thousands of markers.
    matched: HashMap<String, Option<usize>>,
}

impl ScriptCursor {
    fn new(script: MockScript) -> Self {
        ScriptCursor {
            conversations: script
                .conversations
                .into_iter()
                .map(|(marker, replies)| (marker, replies, 0))
                .collect(),
            defaults: script.default_replies,
            next_default: 0,
            embeddings: ServiceQueue::new(script.embedding_replies),
            reranks: ServiceQueue::new(script.rerank_replies),
            matched: HashMap::new(),
        }
    }

    /// Takes the reply for a request whose first user message is `first_user_text`.
    fn next_reply(&mut self, first_user_text: &str) -> MockReply {
        let conversation = match self.matched.get(first_user_text) {
            Some(&conversation) => conversation,
            None => {
                let conversation = self
                    .conversations
                    .iter()
                    .position(|(marker, _, _)| first_user_text.contains(marker.as_str()));
                self.matched
                    .insert(first_user_text.to_string(), conversation);
                conversation
            }
        };
        let (replies, next) = match conversation.and_then(|index| self.conversations.get_mut(index))
        {
            Some((_, replies, next)) => (&*replies, next),
            None => (&self.defaults, &mut self.next_default),
        };
        let reply = replies.get(*next).or_else(|| replies.last()).cloned();
        *next = next.saturating_add(1);
        reply.unwrap_or_else(|| MockReply::text(FALLBACK_TEXT))
    }

    /// Takes the reply for a request to an embeddings or rerank endpoint.
    fn next_service_reply(&mut self, service: Service) -> MockReply {
        match service {
            Service::Embeddings => self.embeddings.next(),
            Service::Rerank => self.reranks.next(),
        }
    }
}

/// Replies of one non-chat endpoint, in order, the last repeating.
struct ServiceQueue {
    replies: Vec<MockReply>,
    next: usize,
}

impl ServiceQueue {
    fn new(replies: Vec<MockReply>) -> Self {
        ServiceQueue { replies, next: 0 }
    }

    fn next(&mut self) -> MockReply {
        let reply = self
            .replies
            .get(self.next)
            .or_else(|| self.replies.last())
            .cloned();
        self.next = self.next.saturating_add(1);
        reply.unwrap_or(MockReply::Correct)
    }
}

/// Counts a request as abandoned when dropped while still armed: axum drops the handler future,
/// or hyper the response body, when the client goes away before the answer is complete.
struct AbandonGuard {
    shared: Arc<Shared>,
    arrived: Instant,
    armed: bool,
}

impl AbandonGuard {
    fn new(shared: Arc<Shared>, arrived: Instant) -> Self {
        AbandonGuard {
            shared,
            arrived,
            armed: true,
        }
    }

    /// Marks the answer as complete: the socket records how long it took as it writes it.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if self.armed {
            let elapsed = self.arrived.elapsed();
            tracing::debug!(?elapsed, "mock llm request abandoned by the client");
            self.shared
                .abandoned
                .send_modify(|durations| durations.push(elapsed));
        }
    }
}

#[cfg(test)]
mod tests;
