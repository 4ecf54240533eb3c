//! The trace log: an optional JSONL file of every trace event, one object per line,
//! `{"time": …, "query_id": …, "event": {…}}`, rotated by size to `FILE.1`, `FILE.2`, ….
//!
//! One thread owns the file. Callers serialize their line (JSON escapes newlines, so a line is
//! always one line) and hand it over through a bounded queue without waiting; the thread writes
//! whole lines, so lines of concurrent queries never interleave, and the async runtime never
//! waits on the disk.
//!
//! When the disk is slower than the events, the queue fills and new lines are dropped and
//! counted (`dropped()`, and the `deeprecall_trace_log_dropped_lines_total` metric when the
//! counter comes from [`super::Metrics::trace_log_dropped`]) rather than slowing queries down:
//! the log is for diagnosis, the answers are the product. Lines that fail to be written
//! (disk full, file removed) are counted the same way, and the file is reopened for the next
//! ones.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::engine::events::{EventKind, TraceEvent};
use crate::engine::result::QueryResult;

/// Lines the queue holds before new ones are dropped: a few seconds of a busy server's events,
/// at a few megabytes at most.
pub const DEFAULT_QUEUE_LINES: usize = 8192;
/// Bytes gathered before a write: one system call per batch rather than per line.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Settings of the trace log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLogSettings {
    /// The live file; rotated files get `.1` (newest) to `.N` appended.
    pub path: PathBuf,
    /// Size past which the live file is rotated. A single line longer than this still goes
    /// into a file of its own.
    pub max_bytes: u64,
    /// Rotated files kept; 0 truncates the live file instead of keeping any.
    pub keep_files: usize,
    /// Lines the queue holds; see [`DEFAULT_QUEUE_LINES`].
    pub queue_lines: usize,
}

/// A handle to the trace log. Cloning is cheap; the file is closed once every clone is gone
/// and the queued lines are written.
#[derive(Debug, Clone)]
pub struct TraceLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sender: mpsc::Sender<Message>,
    dropped: Counter,
    path: PathBuf,
}

#[derive(Debug)]
enum Message {
    Line(String),
    Flush(oneshot::Sender<io::Result<()>>),
}

impl TraceLog {
    /// Opens (or creates, appending) the trace log at `path` with the default queue and a
    /// drop counter of its own.
    pub fn open(
        path: impl Into<PathBuf>,
        max_bytes: u64,
        keep_files: usize,
    ) -> io::Result<TraceLog> {
        TraceLog::open_with(
            TraceLogSettings {
                path: path.into(),
                max_bytes,
                keep_files,
                queue_lines: DEFAULT_QUEUE_LINES,
            },
            Counter::default(),
        )
    }

    /// Opens the trace log counting dropped lines in `dropped`. The file is opened here, so a
    /// bad path fails at start-up rather than at the first event.
    pub fn open_with(settings: TraceLogSettings, dropped: Counter) -> io::Result<TraceLog> {
        if let Some(parent) = settings
            .path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs::create_dir_all(parent)?;
        }
        let file = open_append(&settings.path)?;
        let size = file.metadata()?.len();
        let (sender, receiver) = mpsc::channel(settings.queue_lines.max(1));
        let writer = Writer {
            path: settings.path.clone(),
            max_bytes: settings.max_bytes.max(1),
            keep_files: settings.keep_files,
            file: Some(file),
            size,
            pending: Vec::with_capacity(WRITE_CHUNK_BYTES),
            pending_lines: 0,
            dropped: dropped.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("trace-log".to_string())
            .spawn(move || writer.run(receiver))?;
        Ok(TraceLog {
            shared: Arc::new(Shared {
                sender,
                dropped,
                path: settings.path,
            }),
        })
    }

    /// Returns the path of the live file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queues one event of query `query_id`. Never waits: when the queue is full the line is
    /// dropped and counted.
    pub fn record(&self, query_id: &str, event: Value) {
        let line = json!({
            "time": rfc3339_millis(SystemTime::now()),
            "query_id": query_id,
            "event": event,
        });
        let mut text = line.to_string();
        text.push('\n');
        if self.shared.sender.try_send(Message::Line(text)).is_err() {
            self.shared.dropped.inc();
        }
    }

    /// Queues one engine trace event, as [`event_json`] renders it.
    pub fn record_event(&self, query_id: &str, event: &TraceEvent) {
        self.record(query_id, event_json(event));
    }

    /// Returns the lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// Waits until every line queued before this call is written to the file (handed to the
    /// operating system, not synced). Returns the error of a write that failed since the last
    /// flush. Call it at shutdown.
    pub async fn flush(&self) -> io::Result<()> {
        let (done, written) = oneshot::channel();
        let gone = || io::Error::other("the trace log writer has stopped");
        self.shared
            .sender
            .send(Message::Flush(done))
            .await
            .map_err(|_| gone())?;
        written.await.map_err(|_| gone())?
    }
}

/// The writing end, owned by the writer thread.
struct Writer {
    path: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    /// `None` after a failed write or rotation: reopened for the next line.
    file: Option<File>,
    /// Bytes in the live file, pending ones included.
    size: u64,
    pending: Vec<u8>,
    pending_lines: u64,
    dropped: Counter,
    /// A failure was reported and no write succeeded since: report the next one only once
    /// things recover and fail again.
    failing: bool,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Message>) {
        let mut last_error = None;
        while let Some(message) = receiver.blocking_recv() {
            let mut next = Some(message);
            // Whatever is queued goes out in the same batch.
            while let Some(message) = next {
                match message {
                    Message::Line(line) => {
                        if let Err(error) = self.push(&line) {
                            last_error = Some(error);
                        }
                    }
                    Message::Flush(done) => {
                        if let Err(error) = self.write_pending() {
                            last_error = Some(error);
                        }
                        drop(done.send(last_error.take().map_or(Ok(()), Err)));
                    }
                }
                next = receiver.try_recv().ok();
            }
            if let Err(error) = self.write_pending() {
                last_error = Some(error);
            }
        }
        drop(self.write_pending());
    }

    fn push(&mut self, line: &str) -> io::Result<()> {
        let length = line.len() as u64;
        let mut result = Ok(());
        if self.size > 0 && self.size + length > self.max_bytes {
            result = self.write_pending().and_then(|()| self.rotate());
            if let Err(error) = &result {
                self.report(error, "cannot rotate the trace log");
            }
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending_lines += 1;
        self.size += length;
        if self.pending.len() >= WRITE_CHUNK_BYTES {
            self.write_pending()?;
        }
        result
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.write_all_pending();
        match &result {
            Ok(()) => self.failing = false,
            Err(error) => {
                self.dropped.inc_by(self.pending_lines);
                self.report(error, "cannot write the trace log; lines dropped");
                // Reopen for the next batch: the file may have been removed or replaced.
                self.file = None;
            }
        }
        self.pending.clear();
        self.pending_lines = 0;
        result
    }

    fn write_all_pending(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len() + self.pending.len() as u64;
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(&self.pending),
            None => Ok(()),
        }
    }

    /// Moves `FILE.i` to `FILE.i+1` from the oldest down, dropping the one past `keep_files`,
    /// then `FILE` to `FILE.1`, and starts a new `FILE`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep_files == 0 {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.file = Some(file);
            self.size = 0;
            return Ok(());
        }
        ignore_missing(fs::remove_file(self.numbered(self.keep_files)))?;
        for index in (1..self.keep_files).rev() {
            ignore_missing(fs::rename(self.numbered(index), self.numbered(index + 1)))?;
        }
        fs::rename(&self.path, self.numbered(1))?;
        self.file = Some(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }

    fn numbered(&self, index: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    }

    fn report(&mut self, error: &io::Error, message: &str) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(path = %self.path.display(), %error, "{message}");
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Renders an engine trace event as a JSON object: `type` names the event (`step_started`,
/// `llm_call`, `search`, `sub_llm_call`, `step_completed`, `budget_warning`, `answer_delta`,
/// `result`), beside its sequence number, time since the start and budget used, and its own
/// fields. Durations are in milliseconds.
pub fn event_json(event: &TraceEvent) -> Value {
    let used = &event.budget_used;
    let mut object = Map::new();
    object.insert("sequence".into(), json!(event.sequence));
    object.insert("elapsed_ms".into(), json!(millis(event.elapsed)));
    object.insert(
        "budget_used".into(),
        json!({
            "iterations": used.iterations,
            "search_calls": used.search_calls,
            "tokens": used.tokens,
            "cost_usd": used.cost_usd,
            "elapsed_ms": millis(used.elapsed),
        }),
    );
    let (kind, details) = match &event.kind {
        EventKind::StepStarted { step } => ("step_started", json!({ "step": step })),
        EventKind::LlmCall(call) => (
            "llm_call",
            json!({
                "step": call.step,
                "model": call.model,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "latency_ms": millis(call.latency),
                "cost_usd": call.cost_usd,
                "tool_calls": call.tool_calls,
            }),
        ),
        EventKind::Search(search) => (
            "search",
            json!({
                "step": search.step,
                "collection": search.collection,
                "query": search.query,
                "filters": search.filters,
                "top_k": search.top_k,
                "hits": search
                    .hits
                    .iter()
                    .enumerate()
                    .map(|(position, (id, score))| match search.rerank_scores.get(position) {
                        Some(rerank_score) => {
                            json!({ "id": id, "score": score, "rerank_score": rerank_score })
                        }
                        None => json!({ "id": id, "score": score }),
                    })
                    .collect::<Vec<_>>(),
                "latency_ms": millis(search.latency),
                "cache_hit": search.cache_hit,
                "reranker": search.reranker,
                "rerank_failed": search.rerank_failed,
            }),
        ),
        EventKind::SubLlmCall(call) => (
            "sub_llm_call",
            json!({
                "step": call.step,
                "model": call.model,
                "prompts": call.prompts,
                "failed": call.failed,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "latency_ms": millis(call.latency),
                "cost_usd": call.cost_usd,
            }),
        ),
        EventKind::StepCompleted {
            step,
            tools,
            latency,
        } => (
            "step_completed",
            json!({ "step": step, "tools": tools, "latency_ms": millis(*latency) }),
        ),
        EventKind::BudgetWarning(warning) => (
            "budget_warning",
            json!({
                "resource": warning.resource.limit_name(),
                "used": warning.used,
                "limit": warning.limit,
                "message": warning.message,
            }),
        ),
        EventKind::AnswerDelta(text) => ("answer_delta", json!({ "text": text })),
        EventKind::Result(result) => ("result", result_json(result)),
    };
    object.insert("type".into(), json!(kind));
    if let Value::Object(fields) = details {
        object.extend(fields);
    }
    Value::Object(object)
}

/// The result without the passages' text, which the search events already located and which
/// would make one line the size of the sources.
fn result_json(result: &QueryResult) -> Value {
    json!({
        "answer": result.answer,
        "citations": result.citations,
        "sources": result
            .sources
            .iter()
            .map(|hit| json!({ "id": hit.id, "score": hit.score }))
            .collect::<Vec<_>>(),
        "usage": serde_json::to_value(&result.usage).unwrap_or(Value::Null),
        "execution_time_ms": millis(result.execution_time),
        "exhausted": result.budget.exhausted.map(|resource| resource.limit_name()),
        "confidence": result.confidence,
        "partial": result.partial,
        "error": result.error,
        "cached": result.cached,
        "coalesced": result.coalesced,
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Formats `time` as RFC 3339 in UTC with milliseconds, e.g. `2024-02-29T12:34:56.789Z`.
fn rfc3339_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Returns the Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days not before the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::engine::budget::BudgetUsage;
    use crate::engine::events::SearchRecord;

    fn lines(path: &Path) -> Vec<Value> {
        let text = fs::read_to_string(path).unwrap();
        text.lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}"))
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_produce_one_valid_object_per_line() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trace.jsonl");
        let log = TraceLog::open(&path, u64::MAX, 3).unwrap();
        let tasks = 16;
        let events = 200;
        // Long values make a torn or interleaved write show up as broken JSON.
        let filler = "x".repeat(3000);
        let mut handles = Vec::new();
        for task in 0..tasks {
            let log = log.clone();
            let filler = filler.clone();
            handles.push(tokio::spawn(async move {
                for sequence in 0..events {
                    log.record(
                        &format!("q-{task}"),
                        json!({ "sequence": sequence, "text": filler, "newline": "a\nb" }),
                    );
                    if sequence % 20 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        log.flush().await.unwrap();

        let objects = lines(&path);
        assert_eq!(log.dropped(), 0);
        assert_eq!(objects.len(), tasks * events);
        let mut seen = HashSet::new();
        for object in &objects {
            assert_eq!(object["event"]["text"].as_str().unwrap().len(), 3000);
            assert!(object["time"].as_str().unwrap().ends_with('Z'));
            let key = (
                object["query_id"].as_str().unwrap().to_string(),
                object["event"]["sequence"].as_u64().unwrap(),
            );
            assert!(seen.insert(key), "duplicate line {object}");
        }
        // Each query's events keep their order.
        for task in 0..tasks {
            let id = format!("q-{task}");
            let order: Vec<u64> = objects
                .iter()
                .filter(|object| object["query_id"] == id.as_str())
                .map(|object| object["event"]["sequence"].as_u64().unwrap())
                .collect();
            assert!(order.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[tokio::test]
    async fn rotation_keeps_the_newest_files_within_the_size() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trace.jsonl");
        let max_bytes = 2_000;
        let log = TraceLog::open(&path, max_bytes, 2).unwrap();
        for sequence in 0..100_u64 {
            log.record("q", json!({ "sequence": sequence, "pad": "p".repeat(60) }));
        }
        log.flush().await.unwrap();

        let rotated_1 = directory.path().join("trace.jsonl.1");
        let rotated_2 = directory.path().join("trace.jsonl.2");
        assert!(!directory.path().join("trace.jsonl.3").exists());
        let mut sequences = Vec::new();
        for file in [&rotated_2, &rotated_1, &path] {
            assert!(
                fs::metadata(file).unwrap().len() <= max_bytes,
                "{file:?} too big"
            );
            sequences.extend(
                lines(file)
                    .iter()
                    .map(|object| object["event"]["sequence"].as_u64().unwrap()),
            );
        }
        // The three files hold the newest lines, oldest first, with no gap.
        assert_eq!(sequences.last(), Some(&99));
        assert!(sequences.windows(2).all(|pair| pair[1] == pair[0] + 1));
        assert!(
            sequences.len() < 100,
            "older files should have been deleted"
        );
    }

    #[tokio::test]
    async fn keeping_no_files_truncates_in_place() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trace.jsonl");
        let log = TraceLog::open(&path, 500, 0).unwrap();
        for sequence in 0..50_u64 {
            log.record("q", json!({ "sequence": sequence }));
        }
        log.flush().await.unwrap();
        assert!(!directory.path().join("trace.jsonl.1").exists());
        let objects = lines(&path);
        assert!(fs::metadata(&path).unwrap().len() <= 500);
        assert_eq!(objects.last().unwrap()["event"]["sequence"], 49);
    }

    #[tokio::test]
    async fn reopening_appends_to_the_existing_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("nested").join("trace.jsonl");
        let first = TraceLog::open(&path, u64::MAX, 1).unwrap();
        first.record("q-1", json!({}));
        first.flush().await.unwrap();
        drop(first);
        let second = TraceLog::open(&path, u64::MAX, 1).unwrap();
        second.record("q-2", json!({}));
        second.flush().await.unwrap();
        let ids: Vec<Value> = lines(&path)
            .into_iter()
            .map(|object| object["query_id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("q-1"), json!("q-2")]);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failing_disk_drops_and_counts_lines_without_blocking() {
        let dropped = Counter::default();
        let log = TraceLog::open_with(
            TraceLogSettings {
                path: PathBuf::from("/dev/full"),
                max_bytes: u64::MAX,
                keep_files: 0,
                queue_lines: 16,
            },
            dropped.clone(),
        )
        .unwrap();
        for _ in 0..5 {
            log.record("q", json!({ "n": 1 }));
        }
        assert!(log.flush().await.is_err());
        assert_eq!(log.dropped(), 5);
        assert_eq!(dropped.get(), 5);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trace.jsonl");
        let log = TraceLog::open_with(
            TraceLogSettings {
                path: path.clone(),
                max_bytes: u64::MAX,
                keep_files: 0,
                queue_lines: 1,
            },
            Counter::default(),
        )
        .unwrap();
        let total = 5_000_u64;
        for sequence in 0..total {
            log.record("q", json!({ "sequence": sequence }));
        }
        log.flush().await.unwrap();
        let written = lines(&path).len() as u64;
        assert_eq!(written + log.dropped(), total);
    }

    #[test]
    fn events_render_with_their_type_and_fields() {
        let event = TraceEvent {
            sequence: 4,
            elapsed: Duration::from_millis(1500),
            budget_used: BudgetUsage {
                iterations: 1,
                search_calls: 2,
                tokens: 300,
                cost_usd: 0.01,
                elapsed: Duration::from_millis(1500),
            },
            kind: EventKind::Search(SearchRecord {
                step: 1,
                collection: "handbook".to_string(),
                query: "leave policy".to_string(),
                filters: Map::new(),
                top_k: 5,
                hits: vec![("doc-1".to_string(), 0.5)],
                latency: Duration::from_millis(3),
                cache_hit: true,
                reranker: Some("cohere:rerank-test".to_string()),
                rerank_scores: vec![0.93],
                rerank_failed: false,
            }),
        };
        let object = event_json(&event);
        assert_eq!(object["type"], "search");
        assert_eq!(object["sequence"], 4);
        assert_eq!(object["elapsed_ms"], 1500.0);
        assert_eq!(object["budget_used"]["search_calls"], 2);
        assert_eq!(object["hits"][0]["id"], "doc-1");
        assert_eq!(object["hits"][0]["rerank_score"], 0.93);
        assert_eq!(object["reranker"], "cohere:rerank-test");
        assert_eq!(object["cache_hit"], true);
        assert_eq!(object["latency_ms"], 3.0);

        let delta = TraceEvent {
            kind: EventKind::AnswerDelta("Twenty days".to_string()),
            ..event
        };
        assert_eq!(event_json(&delta)["type"], "answer_delta");
        assert_eq!(event_json(&delta)["text"], "Twenty days");
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |seconds: u64, millis: u64| {
            rfc3339_millis(
                UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis),
            )
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(946_684_799, 999), "1999-12-31T23:59:59.999Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_210_096, 789), "2024-02-29T12:34:56.789Z");
    }
}
