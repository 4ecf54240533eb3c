//! A scripted, misbehaving OpenAI- and Anthropic-compatible HTTP server for tests of the HTTP
//! model backends.
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

mod socket;

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
    /// Replies to requests of no conversation, consumed in order; the last one repeats once
    /// they run out, and an empty list answers a plain text "ok".
    pub default_replies: Vec<MockReply>,
    /// Pause between the events of a streamed reply; `None` is 2 ms, enough for a client to
    /// see the text arrive piece by piece. Benchmarks set zero.
    pub chunk_pause: Option<Duration>,
    /// How much of each request the server keeps.
    pub recording: Recording,
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

    /// Returns the script with one more conversation, matched after the ones already added.
    pub fn with_conversation(mut self, marker: impl Into<String>, replies: Vec<MockReply>) -> Self {
        self.conversations.push((marker.into(), replies));
        self
    }
}

/// One scripted reply.
#[derive(Debug, Clone, PartialEq)]
pub enum MockReply {
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

/// The wire format of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// What a request asked for, as far as the reply depends on it.
struct Exchange {
    api: Api,
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u64,
}

/// A scripted reply with its wrappers applied.
struct Plan {
    held: bool,
    delay: Duration,
    usage: Option<Usage>,
    action: Action,
}

enum Action {
    Answer(Answer),
    Status {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    Hang,
    MalformedJson,
    TruncatedStream,
}

/// A successful model answer.
enum Answer {
    Text(String),
    ToolCalls(Vec<Call>),
}

struct Call {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: Option<f64>,
}

/// How an SSE body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// After the last event, normally.
    Complete,
    /// With a broken connection after the last event.
    Cut,
}

/// Records the request before anything else, so hung requests are recorded too, then answers it
/// from the script.
async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let api = route(&parts.method, parts.uri.path());
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await;
    let body = bytes
        .as_ref()
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .unwrap_or(Value::Null);
    tracing::debug!(method = %parts.method, %path, "mock llm request");
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .or_else(|| azure_deployment(parts.uri.path()))
        .unwrap_or(FALLBACK_MODEL)
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let prompt_tokens = token_count(prompt_chars(&body));
    let first_user_text = first_user_text(&body);
    let (headers, body) = match shared.recording {
        Recording::Full => (headers, body),
        Recording::Light | Recording::Off => (Vec::new(), Value::Null),
    };
    let index = if shared.recording == Recording::Off {
        // No record has this index, so the socket's timing of the answer goes nowhere.
        usize::MAX
    } else {
        let mut requests = shared.requests.lock();
        requests.push(RecordedRequest {
            path,
            headers,
            body,
            first_user_text: first_user_text.clone(),
            service_time: None,
        });
        requests.len() - 1
    };
    let arrived = peer.clock.serve(index);

    let Some(api) = api else {
        let message = format!("no route for {} {}", parts.method, parts.uri.path());
        return error_response(Api::OpenAi, StatusCode::NOT_FOUND, &message);
    };
    if bytes.is_err() {
        return error_response(api, StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }

    let guard = AbandonGuard::new(Arc::clone(&shared), arrived);
    let exchange = Exchange {
        api,
        model,
        stream,
        include_usage,
        prompt_tokens,
    };
    let reply = shared.script.lock().next_reply(&first_user_text);
    let plan = plan_reply(reply, &shared, api);
    respond(&shared, exchange, plan, guard).await
}

/// Returns the wire format served at `path`, or `None` for an unknown endpoint.
fn route(method: &Method, path: &str) -> Option<Api> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Api::OpenAi),
        "/v1/messages" => Some(Api::Anthropic),
        _ => azure_deployment(path).map(|_| Api::OpenAi),
    }
}

/// Returns the deployment of an Azure OpenAI chat completions path.
fn azure_deployment(path: &str) -> Option<&str> {
    let deployment = path
        .strip_prefix("/openai/deployments/")?
        .strip_suffix("/chat/completions")?;
    (!deployment.is_empty() && !deployment.contains('/')).then_some(deployment)
}

/// Unwraps delays and usage overrides and gives tool calls their ids.
fn plan_reply(reply: MockReply, shared: &Shared, api: Api) -> Plan {
    let mut held = false;
    let mut delay = Duration::ZERO;
    let mut usage = None;
    let mut reply = reply;
    let action = loop {
        match reply {
            MockReply::Held(inner) => {
                held = true;
                reply = *inner;
            }
            MockReply::Delay(extra, inner) => {
                delay = delay.saturating_add(extra);
                reply = *inner;
            }
            MockReply::Usage {
                reply: inner,
                input_tokens,
                output_tokens,
                cost_usd,
            } => {
                // The outermost override wins, as it is the one the script author sees first.
                usage.get_or_insert(Usage {
                    input_tokens,
                    output_tokens,
                    cost_usd,
                });
                reply = *inner;
            }
            MockReply::Text(text) => break Action::Answer(Answer::Text(text)),
            MockReply::ToolCalls(calls) => {
                let prefix = match api {
                    Api::OpenAi => "call_",
                    Api::Anthropic => "toolu_",
                };
                let calls = calls
                    .into_iter()
                    .map(|(name, arguments)| Call {
                        id: format!("{prefix}{}", shared.next_id()),
                        name,
                        arguments,
                    })
                    .collect();
                break Action::Answer(Answer::ToolCalls(calls));
            }
            MockReply::Status {
                code,
                retry_after,
                body,
            } => {
                break Action::Status {
                    code,
                    retry_after,
                    body,
                };
            }
            MockReply::Hang => break Action::Hang,
            MockReply::MalformedJson => break Action::MalformedJson,
            MockReply::TruncatedStream => break Action::TruncatedStream,
        }
    };
    Plan {
        held,
        delay,
        usage,
        action,
    }
}

async fn respond(
    shared: &Shared,
    exchange: Exchange,
    plan: Plan,
    mut guard: AbandonGuard,
) -> Response {
    // Latency counts from the request's first byte, as a real model's does: the mock's own
    // parsing and bookkeeping happen within it, not on top of it.
    if plan.held {
        let mut released = shared.released.subscribe();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            _ = released.wait_for(|released| *released) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return stopping(exchange.api, guard),
        }
    }
    let wait = shared.latency.saturating_add(plan.delay);
    if shared
        .pause_until(Some(guard.arrived + wait))
        .await
        .is_err()
    {
        return stopping(exchange.api, guard);
    }
    let id = match exchange.api {
        Api::OpenAi => format!("chatcmpl-mock-{}", shared.next_id()),
        Api::Anthropic => format!("msg_mock_{}", shared.next_id()),
    };
    match plan.action {
        Action::Answer(answer) => {
            let usage = plan.usage.unwrap_or_else(|| Usage {
                input_tokens: exchange.prompt_tokens,
                output_tokens: answer_tokens(&answer),
                cost_usd: None,
            });
            match (exchange.api, exchange.stream) {
                (Api::OpenAi, false) => {
                    guard.disarm();
                    json_response(&openai_completion(&exchange, &id, &answer, &usage))
                }
                (Api::Anthropic, false) => {
                    guard.disarm();
                    json_response(&anthropic_message(&exchange, &id, &answer, &usage))
                }
                (Api::OpenAi, true) => sse_response(
                    openai_events(&exchange, &id, &answer, &usage),
                    StreamEnd::Complete,
                    guard,
                ),
                (Api::Anthropic, true) => sse_response(
                    anthropic_events(&exchange, &id, &answer, &usage),
                    StreamEnd::Complete,
                    guard,
                ),
            }
        }
        Action::Status {
            code,
            retry_after,
            body,
        } => {
            guard.disarm();
            status_response(exchange.api, code, retry_after.as_deref(), &body)
        }
        Action::Hang => {
            // Only the server stopping ends a hang; a client giving up drops this future.
            let _ = shared.pause_until(None).await;
            stopping(exchange.api, guard)
        }
        Action::MalformedJson => malformed(&exchange, &id, guard),
        Action::TruncatedStream => truncated(&exchange, &id, guard),
    }
}

/// Answers a request the server stopped waiting for because it is shutting down.
fn stopping(api: Api, mut guard: AbandonGuard) -> Response {
    guard.disarm();
    error_response(
        api,
        StatusCode::SERVICE_UNAVAILABLE,
        "mock server is stopping",
    )
}

fn malformed(exchange: &Exchange, id: &str, mut guard: AbandonGuard) -> Response {
    if !exchange.stream {
        guard.disarm();
        return raw_json_response(MALFORMED_BODY.as_bytes().to_vec());
    }
    let broken = format!("{MALFORMED_BODY}\n\n");
    let events = match exchange.api {
        Api::OpenAi => {
            let first = openai_chunk(
                exchange,
                id,
                unix_now(),
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            );
            vec![
                first,
                Bytes::from(format!("data: {broken}")),
                sse_data("[DONE]"),
            ]
        }
        Api::Anthropic => {
            let usage = Usage {
                input_tokens: exchange.prompt_tokens,
                output_tokens: 1,
                cost_usd: None,
            };
            vec![
                anthropic_message_start(exchange, id, &usage),
                Bytes::from(format!("event: content_block_delta\ndata: {broken}")),
                sse_event("message_stop", &json!({"type": "message_stop"})),
            ]
        }
    };
    sse_response(events, StreamEnd::Complete, guard)
}

fn truncated(exchange: &Exchange, id: &str, mut guard: AbandonGuard) -> Response {
    let answer = Answer::Text(TRUNCATED_TEXT.to_string());
    let usage = Usage {
        input_tokens: exchange.prompt_tokens,
        output_tokens: answer_tokens(&answer),
        cost_usd: None,
    };
    if !exchange.stream {
        guard.disarm();
        let whole = match exchange.api {
            Api::OpenAi => openai_completion(exchange, id, &answer, &usage),
            Api::Anthropic => anthropic_message(exchange, id, &answer, &usage),
        };
        let mut bytes = whole.to_string().into_bytes();
        bytes.truncate(bytes.len() / 2);
        return raw_json_response(bytes);
    }
    let mut events = match exchange.api {
        Api::OpenAi => openai_events(exchange, id, &answer, &usage),
        Api::Anthropic => anthropic_events(exchange, id, &answer, &usage),
    };
    // Keeps the head of the text deltas; whatever would have finished the message is lost.
    events.truncate(events.len() / 2);
    sse_response(events, StreamEnd::Cut, guard)
}

fn openai_completion(exchange: &Exchange, id: &str, answer: &Answer, usage: &Usage) -> Value {
    let (message, finish_reason) = match answer {
        Answer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Answer::ToolCalls(calls) => {
            let tool_calls: Vec<Value> = calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect();
            (
                json!({"role": "assistant", "content": null, "tool_calls": tool_calls}),
                "tool_calls",
            )
        }
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": exchange.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": openai_usage(usage),
    })
}

fn openai_usage(usage: &Usage) -> Value {
    let mut fields = Map::new();
    fields.insert("prompt_tokens".into(), json!(usage.input_tokens));
    fields.insert("completion_tokens".into(), json!(usage.output_tokens));
    fields.insert(
        "total_tokens".into(),
        json!(usage.input_tokens.saturating_add(usage.output_tokens)),
    );
    if let Some(cost) = usage.cost_usd {
        fields.insert("cost".into(), json!(cost));
    }
    Value::Object(fields)
}

fn openai_events(exchange: &Exchange, id: &str, answer: &Answer, usage: &Usage) -> Vec<Bytes> {
    let created = unix_now();
    let chunk = |delta: Value, finish_reason: Value| {
        openai_chunk(exchange, id, created, delta, finish_reason)
    };
    let mut events = Vec::new();
    let finish_reason = match answer {
        Answer::Text(text) => {
            events.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            for piece in word_pieces(text) {
                events.push(chunk(json!({"content": piece}), Value::Null));
            }
            "stop"
        }
        Answer::ToolCalls(calls) => {
            events.push(chunk(
                json!({"role": "assistant", "content": null}),
                Value::Null,
            ));
            for (index, call) in calls.iter().enumerate() {
                events.push(chunk(
                    json!({"tool_calls": [{
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }]}),
                    Value::Null,
                ));
                for piece in char_pieces(&call.arguments, ARGUMENT_PIECE_CHARS) {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
            }
            "tool_calls"
        }
    };
    events.push(chunk(json!({}), json!(finish_reason)));
    if exchange.include_usage {
        let last = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": exchange.model,
            "choices": [],
            "usage": openai_usage(usage),
        });
        events.push(sse_data(&last.to_string()));
    }
    events.push(sse_data("[DONE]"));
    events
}

fn openai_chunk(
    exchange: &Exchange,
    id: &str,
    created: u64,
    delta: Value,
    finish_reason: Value,
) -> Bytes {
    let mut chunk = Map::new();
    chunk.insert("id".into(), json!(id));
    chunk.insert("object".into(), json!("chat.completion.chunk"));
    chunk.insert("created".into(), json!(created));
    chunk.insert("model".into(), json!(exchange.model));
    chunk.insert(
        "choices".into(),
        json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]),
    );
    // OpenAI sends an explicit null usage on every chunk but the last once usage is requested.
    if exchange.include_usage {
        chunk.insert("usage".into(), Value::Null);
    }
    sse_data(&Value::Object(chunk).to_string())
}

fn anthropic_message(exchange: &Exchange, id: &str, answer: &Answer, usage: &Usage) -> Value {
    let (content, stop_reason) = match answer {
        Answer::Text(text) => (vec![json!({"type": "text", "text": text})], "end_turn"),
        Answer::ToolCalls(calls) => (
            calls
                .iter()
                .map(|call| {
                    json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": anthropic_input(&call.arguments),
                    })
                })
                .collect(),
            "tool_use",
        ),
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    })
}

/// Returns tool arguments as Anthropic's `input`: parsed JSON, or the raw text as a string when
/// it is malformed, so that the malformation still reaches the client.
fn anthropic_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}

fn anthropic_events(exchange: &Exchange, id: &str, answer: &Answer, usage: &Usage) -> Vec<Bytes> {
    let mut events = vec![
        anthropic_message_start(exchange, id, usage),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    let block_delta = |index: usize, delta: Value| {
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    };
    let block_stop = |index: usize| {
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        )
    };
    let stop_reason = match answer {
        Answer::Text(text) => {
            events.push(sse_event(
                "content_block_start",
                &json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }),
            ));
            for piece in word_pieces(text) {
                events.push(block_delta(0, json!({"type": "text_delta", "text": piece})));
            }
            events.push(block_stop(0));
            "end_turn"
        }
        Answer::ToolCalls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                events.push(sse_event(
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": {},
                        },
                    }),
                ));
                for piece in char_pieces(&call.arguments, ARGUMENT_PIECE_CHARS) {
                    events.push(block_delta(
                        index,
                        json!({"type": "input_json_delta", "partial_json": piece}),
                    ));
                }
                events.push(block_stop(index));
            }
            "tool_use"
        }
    };
    events.push(sse_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": usage.output_tokens},
        }),
    ));
    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    events
}

fn anthropic_message_start(exchange: &Exchange, id: &str, usage: &Usage) -> Bytes {
    sse_event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": exchange.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1},
            },
        }),
    )
}

fn status_response(api: Api, code: u16, retry_after: Option<&str>, body: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or_else(|_| {
        tracing::warn!(
            code,
            "mock llm script has an invalid status code, answering 500"
        );
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let mut response = match serde_json::from_str::<Value>(body) {
        Ok(object @ Value::Object(_)) => {
            let mut response = json_response(&object);
            *response.status_mut() = status;
            response
        }
        _ => error_response(api, status, body),
    };
    if let Some(retry_after) = retry_after {
        match HeaderValue::from_str(retry_after) {
            Ok(value) => {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Err(_) => tracing::warn!(retry_after, "mock llm script has an invalid retry-after"),
        }
    }
    response
}

/// Builds an error in the provider's format; an empty message becomes the status's reason.
fn error_response(api: Api, status: StatusCode, message: &str) -> Response {
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error")
    } else {
        message
    };
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    let body = match api {
        Api::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Api::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    };
    let mut response = json_response(&body);
    *response.status_mut() = status;
    response
}

fn json_response(body: &Value) -> Response {
    raw_json_response(body.to_string().into_bytes())
}

/// Answers 200 with `body` labelled as JSON, whether or not it is.
fn raw_json_response(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Streams `events` with a short pause before each but the first, guarded so that a client
/// dropping the stream early counts as abandoning the request.
fn sse_response(events: Vec<Bytes>, end: StreamEnd, guard: AbandonGuard) -> Response {
    let mut response = Response::new(Body::from_stream(sse_stream(events, end, guard)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct SseState {
    events: VecDeque<Bytes>,
    end: StreamEnd,
    guard: AbandonGuard,
    started: bool,
    finished: bool,
}

fn sse_stream(
    events: Vec<Bytes>,
    end: StreamEnd,
    guard: AbandonGuard,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let state = SseState {
        events: events.into(),
        end,
        guard,
        started: false,
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        // The pause returns Pending to hyper, which flushes what it has, so every event leaves
        // in its own write.
        let pause = state.guard.shared.chunk_pause;
        if state.started && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        state.started = true;
        if let Some(event) = state.events.pop_front() {
            if state.events.is_empty() && state.end == StreamEnd::Complete {
                state.guard.disarm();
                state.finished = true;
            }
            return Some((Ok(event), state));
        }
        state.guard.disarm();
        state.finished = true;
        match state.end {
            StreamEnd::Complete => None,
            // An error from the body makes hyper drop the connection without the final chunk,
            // which is what a client sees when a proxy or the provider cuts a stream.
            StreamEnd::Cut => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "mock llm server cut the stream",
                )),
                state,
            )),
        }
    })
}

fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn sse_event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// Splits text into deltas of a few words each, keeping the whitespace.
fn word_pieces(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
    words
        .chunks(WORDS_PER_DELTA)
        .map(|words| words.concat())
        .collect()
}

/// Splits text into pieces of `size` characters.
fn char_pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

/// Returns the text of the first user message, string content or concatenated text parts; the
/// same shape serves both wire formats.
fn first_user_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        })
        .map(|message| match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// Counts the characters of the prompt: message contents, tool calls and results, and the
/// Anthropic `system` field.
fn prompt_chars(body: &Value) -> usize {
    let messages: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .map(|message| {
                    ["content", "tool_calls"]
                        .iter()
                        .filter_map(|key| message.get(*key))
                        .map(text_chars)
                        .sum::<usize>()
                })
                .sum()
        })
        .unwrap_or(0);
    messages + body.get("system").map_or(0, text_chars)
}

/// Counts the characters of every string in `value` but ids and type tags.
fn text_chars(value: &Value) -> usize {
    match value {
        Value::String(text) => text.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(key, _)| {
                !matches!(
                    key.as_str(),
                    "type" | "id" | "tool_use_id" | "cache_control"
                )
            })
            .map(|(_, value)| text_chars(value))
            .sum(),
        _ => 0,
    }
}

fn answer_tokens(answer: &Answer) -> u64 {
    let tokens = match answer {
        Answer::Text(text) => estimate_tokens(text),
        Answer::ToolCalls(calls) => calls
            .iter()
            .map(|call| estimate_tokens(&call.name) + estimate_tokens(&call.arguments))
            .sum(),
    };
    tokens.max(1)
}

fn token_count(chars: usize) -> u64 {
    u64::try_from(chars).unwrap_or(u64::MAX).div_ceil(4).max(1)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// Longest a test waits for what should happen at once: it only bounds a hang.
    const HANG: Duration = Duration::from_secs(10);

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    fn openai_body(user: &str, stream: bool) -> Value {
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You answer questions."},
                {"role": "user", "content": user},
            ],
            "stream": stream,
            "stream_options": {"include_usage": true},
        })
    }

    fn anthropic_body(user: &str, stream: bool) -> Value {
        json!({
            "model": "claude-test",
            "system": "You answer questions.",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}],
            "tools": [{"name": "search_db", "input_schema": {"type": "object"}}],
            "stream": stream,
        })
    }

    async fn post(server: &MockLlmServer, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", server.origin()))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn post_json(server: &MockLlmServer, path: &str, body: &Value) -> Value {
        let response = post(server, path, body).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Reads a whole SSE body, returning the number of network chunks and the events as
    /// (event type, data).
    async fn read_sse(response: reqwest::Response) -> (usize, Vec<(Option<String>, String)>) {
        let mut chunks = 0;
        let mut text = String::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            chunks += 1;
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        (chunks, parse_sse(&text))
    }

    fn parse_sse(text: &str) -> Vec<(Option<String>, String)> {
        text.split("\n\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                let mut kind = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        kind = Some(value.to_string());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                (kind, data)
            })
            .collect()
    }

    fn json_events(events: &[(Option<String>, String)]) -> Vec<Value> {
        events
            .iter()
            .filter(|(_, data)| data != "[DONE]")
            .map(|(_, data)| serde_json::from_str(data).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn openai_text_reply_reports_content_and_estimated_usage() {
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::text(
            "Paris is the capital.",
        )]))
        .await
        .unwrap();

        let reply = post_json(
            &server,
            "/v1/chat/completions",
            &openai_body("Capital?", false),
        )
        .await;

        assert_eq!(reply["object"], "chat.completion");
        assert_eq!(reply["model"], "gpt-test");
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            "Paris is the capital."
        );
        assert_eq!(reply["choices"][0]["finish_reason"], "stop");
        // "You answer questions." + "Capital?" is 29 characters, the reply 21.
        assert_eq!(reply["usage"]["prompt_tokens"], 8);
        assert_eq!(reply["usage"]["completion_tokens"], 6);
        assert_eq!(reply["usage"]["total_tokens"], 14);
        assert!(reply["usage"].get("cost").is_none());
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/v1/chat/completions");
        assert_eq!(requests[0].body["model"], "gpt-test");
        assert_eq!(requests[0].header("Content-Type"), Some("application/json"));
        assert_eq!(requests[0].first_user_text, "Capital?");
        assert_eq!(server.abandoned_requests(), 0);
    }

    #[tokio::test]
    async fn light_recording_keeps_the_conversation_and_timing_but_not_the_body() {
        let script = MockScript::replies(vec![MockReply::text("ok")])
            .with_latency(Duration::from_millis(20))
            .with_recording(Recording::Light);
        let server = MockLlmServer::start(script).await.unwrap();

        let reply = post_json(
            &server,
            "/v1/chat/completions",
            &openai_body("Capital?", false),
        )
        .await;

        assert_eq!(reply["choices"][0]["message"]["content"], "ok");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/v1/chat/completions");
        assert_eq!(requests[0].first_user_text, "Capital?");
        assert_eq!(requests[0].body, Value::Null);
        assert!(requests[0].headers.is_empty());
        let service_time = requests[0].service_time.unwrap();
        assert!(
            service_time >= Duration::from_millis(20),
            "{service_time:?}"
        );
    }

    #[tokio::test]
    async fn with_recording_off_requests_are_answered_and_nothing_is_kept() {
        let script = MockScript::replies(vec![MockReply::text("ok")])
            .with_latency(Duration::from_millis(5))
            .with_recording(Recording::Off);
        let server = MockLlmServer::start(script).await.unwrap();

        for _ in 0..3 {
            let reply = post_json(
                &server,
                "/v1/chat/completions",
                &openai_body("Capital?", false),
            )
            .await;
            assert_eq!(reply["choices"][0]["message"]["content"], "ok");
        }

        assert!(server.requests().is_empty());
        assert_eq!(server.request_count(), 0);
    }

    #[tokio::test]
    async fn openai_tool_calls_have_ids_unique_across_requests() {
        let calls = MockReply::ToolCalls(vec![
            ("search_db".into(), r#"{"query":"paris"}"#.into()),
            ("submit".into(), r#"{"answer": "#.into()),
        ]);
        let server = MockLlmServer::start(MockScript::replies(vec![calls]))
            .await
            .unwrap();

        let first = post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;
        let second = post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;

        let message = &first["choices"][0]["message"];
        assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
        assert!(message["content"].is_null());
        assert_eq!(message["tool_calls"][0]["type"], "function");
        assert_eq!(message["tool_calls"][0]["function"]["name"], "search_db");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            r#"{"query":"paris"}"#
        );
        assert_eq!(
            message["tool_calls"][1]["function"]["arguments"],
            r#"{"answer": "#
        );
        let mut ids: Vec<String> = [&first, &second]
            .iter()
            .flat_map(|reply| {
                reply["choices"][0]["message"]["tool_calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|call| call["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(ids.iter().all(|id| id.starts_with("call_")));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4);
    }

    #[tokio::test]
    async fn usage_override_reports_tokens_and_cost() {
        let reply = MockReply::Usage {
            reply: Box::new(MockReply::text("hi")),
            input_tokens: 1000,
            output_tokens: 50,
            cost_usd: Some(0.25),
        };
        let server = MockLlmServer::start(MockScript::replies(vec![reply]))
            .await
            .unwrap();

        let reply = post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;

        assert_eq!(
            reply["usage"],
            json!({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050, "cost": 0.25})
        );
    }

    #[tokio::test]
    async fn openai_stream_arrives_in_several_chunks_and_ends_with_usage_and_done() {
        let text = "Paris has been the capital of France for a very long time.";
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::text(text)]))
            .await
            .unwrap();

        let response = post(&server, "/v1/chat/completions", &openai_body("q", true)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            "text/event-stream"
        );
        let (network_chunks, events) = read_sse(response).await;

        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks = json_events(&events);
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk["object"] == "chat.completion.chunk")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let pieces: Vec<&str> = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
            .filter(|piece| !piece.is_empty())
            .collect();
        assert!(pieces.len() >= 3, "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        assert!(network_chunks >= 3, "{network_chunks} network chunks");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 15);
        assert_eq!(server.abandoned_requests(), 0);
    }

    #[tokio::test]
    async fn openai_stream_tool_call_deltas_reassemble_to_the_scripted_arguments() {
        let arguments = r#"{"query": "capital of France", "k": 5}"#;
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::ToolCalls(vec![
            ("search_db".into(), arguments.into()),
            ("submit".into(), "{not json".into()),
        ])]))
        .await
        .unwrap();

        let mut body = openai_body("q", true);
        body["stream_options"] = json!({"include_usage": false});
        let response = post(&server, "/v1/chat/completions", &body).await;
        let (_, events) = read_sse(response).await;

        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks = json_events(&events);
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut argument_pieces = 0;
        for chunk in &chunks {
            assert!(chunk.get("usage").is_none());
            let Some(deltas) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
                continue;
            };
            for delta in deltas {
                let index = usize::try_from(delta["index"].as_u64().unwrap()).unwrap();
                if let Some(id) = delta["id"].as_str() {
                    assert_eq!(index, calls.len());
                    let name = delta["function"]["name"].as_str().unwrap();
                    calls.push((id.to_string(), name.to_string(), String::new()));
                }
                let piece = delta["function"]["arguments"].as_str().unwrap();
                if !piece.is_empty() {
                    argument_pieces += 1;
                }
                calls[index].2.push_str(piece);
            }
        }
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1, "search_db");
        assert_eq!(calls[0].2, arguments);
        assert_eq!(calls[1].2, "{not json");
        assert_ne!(calls[0].0, calls[1].0);
        assert!(argument_pieces > 2);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    }

    #[tokio::test]
    async fn conversations_route_by_marker_and_defaults_repeat_their_last_reply() {
        let script = MockScript::replies(vec![MockReply::text("d1"), MockReply::text("d2")])
            .with_conversation("alpha", vec![MockReply::text("a1"), MockReply::text("a2")])
            .with_conversation("beta", vec![MockReply::text("b1")]);
        let server = MockLlmServer::start(script).await.unwrap();

        let mut answers = Vec::new();
        for user in [
            "Question: alpha?",
            "beta",
            "gamma",
            "alpha",
            "gamma",
            "gamma",
            "beta",
        ] {
            let reply = post_json(&server, "/v1/chat/completions", &openai_body(user, false)).await;
            answers.push(
                reply["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }

        assert_eq!(answers, ["a1", "b1", "d1", "a2", "d2", "d2", "b1"]);
        assert_eq!(server.request_count(), 7);
    }

    #[tokio::test]
    async fn an_empty_script_answers_ok_on_the_azure_path() {
        let server = MockLlmServer::start(MockScript::default()).await.unwrap();
        let path = "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21";
        let mut body = openai_body("q", false);
        if let Some(fields) = body.as_object_mut() {
            fields.remove("model");
        }

        let reply = post_json(&server, path, &body).await;

        assert_eq!(reply["choices"][0]["message"]["content"], "ok");
        assert_eq!(reply["model"], "gpt4o-prod");
        assert_eq!(server.requests()[0].path, path);
    }

    #[tokio::test]
    async fn unknown_paths_are_recorded_and_refused() {
        let server = MockLlmServer::start(MockScript::default()).await.unwrap();

        let response = post(&server, "/v1/completions", &json!({"prompt": "x"})).await;

        assert_eq!(response.status(), 404);
        assert_eq!(server.requests()[0].path, "/v1/completions");
    }

    #[tokio::test]
    async fn rate_limit_carries_retry_after_and_a_provider_error() {
        let server = MockLlmServer::start(MockScript::replies(vec![
            MockReply::rate_limited("1"),
            MockReply::status(401, r#"{"error": {"message": "bad key"}}"#),
        ]))
        .await
        .unwrap();

        let limited = post(&server, "/v1/chat/completions", &openai_body("q", false)).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[reqwest::header::RETRY_AFTER], "1");
        let error: Value = limited.json().await.unwrap();
        assert_eq!(error["error"]["message"], "rate limit exceeded");
        assert_eq!(error["error"]["type"], "rate_limit_error");

        let refused = post(&server, "/v1/messages", &anthropic_body("q", false)).await;
        assert_eq!(refused.status(), 401);
        assert!(
            refused
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .is_none()
        );
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error, json!({"error": {"message": "bad key"}}));
    }

    #[tokio::test]
    async fn a_hung_request_is_recorded_and_seen_abandoned_when_the_client_gives_up() {
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::Hang]))
            .await
            .unwrap();

        let url = format!("{}/chat/completions", server.base_url());
        let waiting = tokio::spawn(async move {
            client()
                .post(url)
                .json(&openai_body("q", false))
                .send()
                .await
        });
        tokio::time::timeout(HANG, async {
            while server.request_count() < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the request arrived");
        assert_eq!(
            server.abandoned_requests(),
            0,
            "it hangs while the client waits"
        );
        waiting.abort();

        server
            .wait_for_abandoned_request(HANG)
            .await
            .expect("the mock saw the client give up");
        assert_eq!(server.abandoned_requests(), 1);
        assert_eq!(server.request_count(), 1);
        assert_eq!(server.requests()[0].body["model"], "gpt-test");
        assert_eq!(
            server
                .wait_for_abandoned_request(Duration::from_millis(20))
                .await,
            None
        );
    }

    #[tokio::test]
    async fn a_held_reply_goes_only_once_released() {
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::held(
            MockReply::text("now"),
        )]))
        .await
        .unwrap();
        let url = format!("{}/chat/completions", server.base_url());
        let mut reply = tokio::spawn(async move {
            let response = client()
                .post(url)
                .json(&openai_body("q", false))
                .send()
                .await?;
            response.json::<Value>().await
        });
        tokio::time::timeout(HANG, async {
            while server.request_count() < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the request arrived");
        // The request was served to the point of its held reply; only the release frees it.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut reply)
                .await
                .is_err(),
            "answered before the release"
        );
        server.release_held();
        let reply = tokio::time::timeout(HANG, reply)
            .await
            .expect("answered after the release")
            .unwrap()
            .unwrap();
        assert_eq!(reply["choices"][0]["message"]["content"], "now");
    }

    #[tokio::test]
    async fn a_request_dropped_during_latency_is_seen_by_a_spawned_waiter() {
        // Far longer than the test may take: the request can only be dropped during it.
        let latency = Duration::from_secs(600);
        let script =
            MockScript::replies(vec![MockReply::delayed(latency, MockReply::text("slow"))])
                .with_latency(latency);
        let server = Arc::new(MockLlmServer::start(script).await.unwrap());
        let waiter = tokio::spawn({
            let server = Arc::clone(&server);
            async move { server.wait_for_abandoned_request(HANG).await }
        });

        let result = client()
            .post(format!("{}/messages", server.base_url()))
            .timeout(Duration::from_millis(100))
            .json(&anthropic_body("q", false))
            .send()
            .await;

        assert!(result.unwrap_err().is_timeout());
        let abandoned_after = waiter.await.unwrap().expect("the drop was seen");
        assert!(abandoned_after < latency, "{abandoned_after:?}");
    }

    #[tokio::test]
    async fn dropping_a_stream_midway_counts_as_abandoned() {
        // Streamed at one word per chunk pause: seconds of answer left when the client drops it.
        let long = "word ".repeat(5000);
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::text(long)]))
            .await
            .unwrap();

        let response = post(&server, "/v1/messages", &anthropic_body("q", true)).await;
        let mut body = response.bytes_stream();
        body.next().await.unwrap().unwrap();
        drop(body);

        let abandoned_after = server.wait_for_abandoned_request(HANG).await;
        assert!(abandoned_after.is_some());
    }

    #[tokio::test]
    async fn truncated_stream_breaks_off_without_done() {
        let server = MockLlmServer::start(MockScript::replies(vec![MockReply::TruncatedStream]))
            .await
            .unwrap();

        let response = post(&server, "/v1/chat/completions", &openai_body("q", true)).await;
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut text = String::new();
        let mut failed = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }

        assert!(failed, "the body should end with a broken connection");
        let events = parse_sse(&text);
        assert!(events.len() >= 2);
        assert!(events.iter().all(|(_, data)| data != "[DONE]"));
        assert!(
            json_events(&events)
                .iter()
                .all(|chunk| chunk["choices"][0]["finish_reason"].is_null())
        );
        assert_eq!(server.abandoned_requests(), 0);
    }

    #[tokio::test]
    async fn truncated_and_malformed_bodies_are_not_json() {
        let server = MockLlmServer::start(MockScript::replies(vec![
            MockReply::TruncatedStream,
            MockReply::MalformedJson,
        ]))
        .await
        .unwrap();

        for _ in 0..2 {
            let response = post(&server, "/v1/chat/completions", &openai_body("q", false)).await;
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            assert!(!text.is_empty());
            assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn anthropic_replies_with_tool_use_and_text() {
        let server = MockLlmServer::start(MockScript::replies(vec![
            MockReply::ToolCalls(vec![
                ("search_db".into(), r#"{"query": "paris"}"#.into()),
                ("submit".into(), r#"{"answer": "#.into()),
            ]),
            MockReply::text("Paris."),
        ]))
        .await
        .unwrap();

        let tools = post_json(&server, "/v1/messages", &anthropic_body("q", false)).await;
        assert_eq!(tools["type"], "message");
        assert_eq!(tools["role"], "assistant");
        assert_eq!(tools["model"], "claude-test");
        assert_eq!(tools["stop_reason"], "tool_use");
        let blocks = tools["content"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "tool_use");
        assert!(blocks[0]["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(blocks[0]["name"], "search_db");
        assert_eq!(blocks[0]["input"], json!({"query": "paris"}));
        assert_eq!(blocks[1]["input"], json!(r#"{"answer": "#));
        assert_ne!(blocks[0]["id"], blocks[1]["id"]);

        let text = post_json(&server, "/v1/messages", &anthropic_body("q", false)).await;
        assert_eq!(text["stop_reason"], "end_turn");
        assert_eq!(text["content"], json!([{"type": "text", "text": "Paris."}]));
        // "You answer questions." + "q" is 22 characters.
        assert_eq!(
            text["usage"],
            json!({"input_tokens": 6, "output_tokens": 2})
        );
    }

    #[tokio::test]
    async fn anthropic_stream_follows_the_standard_event_order() {
        let server = MockLlmServer::start(MockScript::replies(vec![
            MockReply::text("Paris is the capital of France."),
            MockReply::tool_call("search_db", r#"{"query": "capital of France"}"#),
        ]))
        .await
        .unwrap();

        let (_, text_events) =
            read_sse(post(&server, "/v1/messages", &anthropic_body("q", true)).await).await;
        let (_, tool_events) =
            read_sse(post(&server, "/v1/messages", &anthropic_body("q", true)).await).await;

        for events in [&text_events, &tool_events] {
            for ((kind, _), data) in events.iter().zip(json_events(events)) {
                assert_eq!(kind.as_deref(), data["type"].as_str());
            }
        }
        let kinds = |events: &[(Option<String>, String)]| -> Vec<String> {
            let mut kinds: Vec<String> = events
                .iter()
                .map(|(kind, _)| kind.clone().unwrap())
                .filter(|kind| kind != "ping")
                .collect();
            kinds.dedup();
            kinds
        };
        let expected = [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ];
        assert_eq!(kinds(&text_events), expected);
        assert_eq!(kinds(&tool_events), expected);

        let text_data = json_events(&text_events);
        let text: String = text_data
            .iter()
            .filter(|event| event["type"] == "content_block_delta")
            .map(|event| {
                assert_eq!(event["delta"]["type"], "text_delta");
                event["delta"]["text"].as_str().unwrap()
            })
            .collect();
        assert_eq!(text, "Paris is the capital of France.");
        let delta = &text_data[text_data.len() - 2];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 8);

        let tool_data = json_events(&tool_events);
        let start = tool_data
            .iter()
            .find(|event| event["type"] == "content_block_start")
            .unwrap();
        assert_eq!(start["content_block"]["type"], "tool_use");
        assert_eq!(start["content_block"]["name"], "search_db");
        let partial: String = tool_data
            .iter()
            .filter(|event| event["type"] == "content_block_delta")
            .map(|event| {
                assert_eq!(event["delta"]["type"], "input_json_delta");
                event["delta"]["partial_json"].as_str().unwrap()
            })
            .collect();
        assert_eq!(partial, r#"{"query": "capital of France"}"#);
        assert_eq!(
            tool_data[tool_data.len() - 2]["delta"]["stop_reason"],
            "tool_use"
        );
    }

    #[tokio::test]
    async fn latency_applies_and_dropping_the_server_ends_hanging_requests() {
        let script = MockScript::replies(vec![MockReply::text("late"), MockReply::Hang])
            .with_latency(Duration::from_millis(50));
        let server = MockLlmServer::start(script).await.unwrap();

        let started = Instant::now();
        post_json(&server, "/v1/chat/completions", &openai_body("q", false)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));

        let url = format!("{}/chat/completions", server.base_url());
        let hanging = tokio::spawn(async move {
            client()
                .post(url)
                .json(&openai_body("q", false))
                .send()
                .await
                .map(|response| response.status())
        });
        let arrived = tokio::time::timeout(HANG, async {
            while server.request_count() < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        arrived.await.expect("the hanging request arrived");
        drop(server);

        // The bound only catches a request that keeps hanging.
        let outcome = tokio::time::timeout(HANG, hanging)
            .await
            .expect("the hanging request ended")
            .unwrap();
        assert_eq!(outcome.ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_holding_its_whole_answer_finds_the_request_timed() {
        let server = MockLlmServer::start(MockScript::default().with_recording(Recording::Light))
            .await
            .unwrap();
        let client = client();
        let url = format!("{}/chat/completions", server.base_url());
        // The race this guards against, a record written after the client read it, shows only
        // now and then: many round trips give it its chances.
        for n in 0..300 {
            let response = client
                .post(&url)
                .json(&openai_body("q", false))
                .send()
                .await
                .unwrap();
            response.bytes().await.unwrap();
            let timed = server.requests()[n].service_time;
            assert!(timed.is_some(), "request {n} was not timed yet");
        }
    }

    #[tokio::test]
    async fn each_request_on_a_kept_alive_connection_is_timed_from_its_own_first_byte() {
        let latency = Duration::from_millis(20);
        let server = MockLlmServer::start(MockScript::default().with_latency(latency))
            .await
            .unwrap();
        // One client, so both requests share one connection; the pause between them would be
        // counted in the second request's time if its clock started at the first.
        let client = client();
        let mut round_trips = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let response = client
                .post(format!("{}/chat/completions", server.base_url()))
                .json(&openai_body("q", false))
                .send()
                .await
                .unwrap();
            response.bytes().await.unwrap();
            round_trips.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        for (request, round_trip) in requests.iter().zip(round_trips) {
            let service_time = request.service_time.unwrap();
            assert!(service_time >= latency, "{service_time:?}");
            assert!(
                service_time <= round_trip,
                "{service_time:?} > {round_trip:?}"
            );
        }
    }
}
