//! `deeprecall bench soak`: mixed traffic against a server for a set time, with a row per
//! interval of what a leak or a slowdown would show: the server's resident memory, open file
//! descriptors, live tokio tasks and threads, and p50/p99 per kind of call; then a verdict
//! against the targets, failing the command when one is missed.
//!
//! The server runs in a process of its own (`deeprecall serve`, as deployed), so the figures
//! are the server's alone; the scripted model and the clients run in this one, and keep no
//! state that grows: the mock keeps no record of requests (`Recording::Off`), writes reuse a
//! bounded set of ids, and queries come from bounded pools.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::process::{ProcessSample, ServerProcess};
use super::{BenchArgs, Corpus, middle};
use crate::api::pb;
use crate::cli::{CliError, ServerClient, connect};
use crate::llm::mock_server::{MockLlmServer, MockReply, MockScript, Recording};

/// Collection the queries search; it is only written before the traffic starts, so its
/// content version, and with it every cache key, stays put.
const QUERIED: &str = "default";
/// Collection the traffic writes and deletes in.
const WRITTEN: &str = "soak-writes";
/// Ids the writes cycle through: the written collection never holds more.
const WRITE_IDS: usize = 500;
/// Documents per AddDocuments or DeleteDocuments call.
const WRITE_BATCH: usize = 10;
/// Distinct questions of model queries (asked with `skip_cache`, so each runs the loop).
const MODEL_QUESTIONS: usize = 256;
/// Distinct questions of cache hits, answered once before the traffic starts.
const CACHED_QUESTIONS: usize = 16;
/// Allowed growth of resident memory after warm-up, as a fraction of its first value.
const RSS_GROWTH: f64 = 0.10;
/// Descriptors that may come and go between samples (a connection being replaced, a
/// WAL file opened by a checkpoint) without counting as growth.
const FD_SLACK: u64 = 4;
/// Tasks that may come and go between samples, at least; 10% of the first value otherwise.
const TASK_SLACK: u64 = 16;
/// Streams the disconnecting client drops on one connection before it opens another. The
/// server's frames for a stream the client already dropped may arrive after the client's h2
/// has forgotten the stream, and h2 answers each with a reset of its own, counted over the
/// connection's life: at 1,024 it closes the connection as abusive, which a 30-minute run
/// reached in its 29th minute on a connection shared with every other client.
const DISCONNECTS_PER_CONNECTION: usize = 256;
/// The memory target, and the traffic it is set for.
const PEAK_RSS_TARGET_MIB: f64 = 100.0;
const TARGET_CONCURRENCY: usize = 64;
const TARGET_DOCUMENTS: usize = 2_000;

/// The kinds of call the traffic makes, in the report's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    /// A Query with `skip_cache`: the loop runs against the scripted model.
    Model,
    /// A Query asked before: answered from the cache (or refilling it after a clear).
    Hit,
    /// AddDocuments of [`WRITE_BATCH`] documents.
    Ingest,
    /// DeleteDocuments of [`WRITE_BATCH`] ids.
    Delete,
    /// ClearCache of everything.
    Clear,
    /// A Query whose client goes away after the first event, mid-stream.
    Disconnect,
}

impl Call {
    const ALL: [Call; 6] = [
        Call::Model,
        Call::Hit,
        Call::Ingest,
        Call::Delete,
        Call::Clear,
        Call::Disconnect,
    ];

    fn name(self) -> &'static str {
        match self {
            Call::Model => "query",
            Call::Hit => "hit",
            Call::Ingest => "ingest",
            Call::Delete => "delete",
            Call::Clear => "clear",
            Call::Disconnect => "disconnect",
        }
    }

    /// Picks a call from a draw in `0..1000`: mostly queries, some writes, a rare clear.
    fn from_draw(draw: u32) -> Call {
        match draw {
            0..450 => Call::Model,
            450..800 => Call::Hit,
            800..900 => Call::Ingest,
            900..999 => Call::Delete,
            _ => Call::Clear,
        }
    }
}

/// What the clients saw during one interval.
#[derive(Debug, Default)]
struct Window {
    latencies: BTreeMap<Call, Vec<Duration>>,
    /// Failed calls by kind and status code.
    errors: BTreeMap<String, u64>,
}

/// One interval's sample of the server process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Health {
    rss_bytes: u64,
    /// The fewest open descriptors seen in the interval: the model client's pooled
    /// connections to the mock open and close with demand; a leak raises the floor.
    fds: u64,
    /// The fewest live tasks seen in the interval, for the same reason.
    tasks: u64,
    /// OS threads at the interval's end: tokio's workers and its blocking pool, which grows
    /// with the store calls waiting at once.
    threads: u64,
}

/// Runs the soak and prints its report; fails when a target is missed.
pub(super) async fn soak(args: &BenchArgs) -> Result<(), CliError> {
    let duration = Duration::try_from_secs_f64(args.minutes * 60.0)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| CliError::Usage("--minutes must be positive".into()))?;
    let interval = Duration::try_from_secs_f64(args.interval_seconds)
        .ok()
        .filter(|interval| *interval >= Duration::from_millis(100))
        .ok_or_else(|| CliError::Usage("--interval-seconds must be at least 0.1".into()))?;
    let concurrency = args.concurrency.unwrap_or(64);
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let latency = Duration::from_millis(args.mock_latency_ms.unwrap_or(5));

    // Every model call asks for a search, so a query runs two model calls and two searches
    // before its iteration budget ends it with a partial answer built from what it found.
    let script = MockScript::replies(vec![MockReply::tool_call(
        "search_db",
        serde_json::json!({"query": "soak hop"}).to_string(),
    )])
    .with_latency(latency)
    .with_chunk_pause(Duration::ZERO)
    .with_recording(Recording::Off);
    let mock = MockLlmServer::start(script)
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
    let base_url = mock.base_url();
    let server = ServerProcess::spawn(&[
        "--backend",
        "openai",
        "--model",
        "mock",
        "--base-url",
        &base_url,
        "--shutdown-grace-seconds",
        "1",
    ])
    .await?;
    let client = connect(&server.endpoint, None).await?;
    let traffic = Traffic::prepare(client.clone(), args, seed).await?;

    println!(
        "soak: {:.1} min, rows every {:.0} s, {concurrency} clients and one that disconnects mid-stream, {} documents queried, writes over {WRITE_IDS} ids, mock latency {} ms, seed {seed}",
        args.minutes,
        interval.as_secs_f64(),
        args.documents,
        latency.as_millis()
    );
    let window = Arc::new(Mutex::new(Window::default()));
    let stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        workers.spawn(traffic.clone().worker(
            seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            Arc::clone(&window),
            stop.clone(),
        ));
    }
    workers.spawn(traffic.clone().disconnecting(
        server.endpoint.clone(),
        Arc::clone(&window),
        stop.clone(),
    ));

    println!("{}", header());
    let started = tokio::time::Instant::now();
    let tick = (interval / 10).min(Duration::from_secs(1));
    let mut rows = Vec::new();
    let mut ticks = tokio::time::interval(tick);
    let (mut task_floor, mut fd_floor) = (u64::MAX, u64::MAX);
    let mut next_row = started + interval;
    loop {
        ticks.tick().await;
        let sample = server.sample().await;
        task_floor = task_floor.min(sample.tasks);
        fd_floor = fd_floor.min(sample.fds);
        if tokio::time::Instant::now() < next_row {
            continue;
        }
        let health = Health {
            rss_bytes: sample.rss_bytes,
            fds: fd_floor,
            tasks: task_floor,
            threads: sample.threads,
        };
        let seen = std::mem::take(&mut *window.lock());
        println!("{}", row(started.elapsed(), health, &seen));
        rows.push((health, seen.errors.values().sum::<u64>()));
        (task_floor, fd_floor) = (u64::MAX, u64::MAX);
        next_row += interval;
        if started.elapsed() >= duration {
            break;
        }
    }
    stop.cancel();
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|error| CliError::Io(format!("a soak client failed: {error}")))?;
    }
    let late = std::mem::take(&mut *window.lock());
    let errors =
        rows.iter().map(|(_, errors)| errors).sum::<u64>() + late.errors.values().sum::<u64>();
    let ProcessSample { peak_rss_bytes, .. } = server.sample().await;
    println!(
        "peak RSS of the server {:.1} MiB (target at concurrency {TARGET_CONCURRENCY} with {TARGET_DOCUMENTS} documents: {PEAK_RSS_TARGET_MIB} MiB)",
        mib(peak_rss_bytes)
    );
    let health: Vec<Health> = rows.iter().map(|(health, _)| *health).collect();
    let mut checks = judge(&health, errors);
    checks.push(judge_peak(
        peak_rss_bytes,
        concurrency == TARGET_CONCURRENCY && args.documents == TARGET_DOCUMENTS,
    ));
    let mut missed = Vec::new();
    for check in &checks {
        let mark = match check.passed {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "not judged",
        };
        println!("  {mark}: {}: {}", check.name, check.detail);
        if check.passed == Some(false) {
            missed.push(check.name);
        }
    }
    drop(server);
    if missed.is_empty() {
        println!("soak: every target met");
        Ok(())
    } else {
        Err(CliError::TargetsMissed(format!(
            "soak: targets missed: {}",
            missed.join(", ")
        )))
    }
}

/// What every client shares: its connection, the documents it writes, the questions it asks.
#[derive(Clone)]
struct Traffic {
    client: ServerClient,
    writes: Arc<Vec<pb::Document>>,
    model_questions: Arc<Vec<String>>,
    cached_questions: Arc<Vec<String>>,
}

impl Traffic {
    /// Loads the queried collection and the written one, and fills the cache with the
    /// cached questions.
    async fn prepare(
        mut client: ServerClient,
        args: &BenchArgs,
        seed: u64,
    ) -> Result<Traffic, CliError> {
        let mut corpus = Corpus::new(seed, args.zipf_offset);
        let documents = corpus.proto_documents(args.documents);
        for batch in documents.chunks(1_000) {
            client
                .add_documents(pb::AddDocumentsRequest {
                    collection: QUERIED.into(),
                    documents: batch.to_vec(),
                })
                .await?;
        }
        let writes: Vec<pb::Document> = corpus
            .proto_documents(WRITE_IDS)
            .into_iter()
            .map(|document| pb::Document {
                id: format!("w-{}", document.id),
                ..document
            })
            .collect();
        client
            .add_documents(pb::AddDocumentsRequest {
                collection: WRITTEN.into(),
                documents: writes.clone(),
            })
            .await?;
        let mut question = |n: usize, kind: &str| format!("soak {kind} {n}: {}?", corpus.query());
        let model_questions = (0..MODEL_QUESTIONS)
            .map(|n| question(n, "question"))
            .collect();
        let cached_questions: Vec<String> = (0..CACHED_QUESTIONS)
            .map(|n| question(n, "cached"))
            .collect();
        let traffic = Traffic {
            client,
            writes: Arc::new(writes),
            model_questions: Arc::new(model_questions),
            cached_questions: Arc::new(cached_questions),
        };
        for question in traffic.cached_questions.iter() {
            traffic.query(question.clone(), false).await?;
        }
        Ok(traffic)
    }

    fn request(question: String, skip_cache: bool) -> pb::QueryRequest {
        pb::QueryRequest {
            query: question,
            collection: QUERIED.into(),
            skip_cache,
            budget: Some(pb::Budget {
                max_iterations: Some(2),
                ..pb::Budget::default()
            }),
            ..pb::QueryRequest::default()
        }
    }

    /// Runs one query to its result.
    async fn query(&self, question: String, skip_cache: bool) -> Result<(), CliError> {
        let mut stream = self
            .client
            .clone()
            .query(Self::request(question, skip_cache))
            .await?
            .into_inner();
        let mut result = false;
        while let Some(event) = stream.message().await? {
            result |= matches!(event.event, Some(pb::query_event::Event::Result(_)));
        }
        if result {
            Ok(())
        } else {
            Err(CliError::Io("a query ended without a result".into()))
        }
    }

    /// Sends calls one after another until `stop`, each picked at random.
    async fn worker(self, seed: u64, window: Arc<Mutex<Window>>, stop: CancellationToken) {
        let mut rng = fastrand::Rng::with_seed(seed);
        while !stop.is_cancelled() {
            let call = Call::from_draw(rng.u32(..1000));
            let began = Instant::now();
            let outcome = self.call(call, &mut rng).await;
            record(&window, call, began.elapsed(), outcome);
        }
    }

    async fn call(&self, call: Call, rng: &mut fastrand::Rng) -> Result<(), CliError> {
        let mut client = self.client.clone();
        let ids = |rng: &mut fastrand::Rng| -> Vec<usize> {
            (0..WRITE_BATCH).map(|_| rng.usize(..WRITE_IDS)).collect()
        };
        match call {
            Call::Model => {
                let question = &self.model_questions[rng.usize(..self.model_questions.len())];
                self.query(question.clone(), true).await
            }
            Call::Hit => {
                let question = &self.cached_questions[rng.usize(..self.cached_questions.len())];
                self.query(question.clone(), false).await
            }
            Call::Ingest => {
                let documents = ids(rng)
                    .into_iter()
                    .filter_map(|n| self.writes.get(n).cloned())
                    .collect();
                client
                    .add_documents(pb::AddDocumentsRequest {
                        collection: WRITTEN.into(),
                        documents,
                    })
                    .await?;
                Ok(())
            }
            Call::Delete => {
                let ids = ids(rng)
                    .into_iter()
                    .filter_map(|n| self.writes.get(n).map(|document| document.id.clone()))
                    .collect();
                client
                    .delete_documents(pb::DeleteDocumentsRequest {
                        collection: WRITTEN.into(),
                        ids,
                    })
                    .await?;
                Ok(())
            }
            Call::Clear => {
                client
                    .clear_cache(pb::ClearCacheRequest {
                        collection: String::new(),
                    })
                    .await?;
                Ok(())
            }
            Call::Disconnect => self.disconnect_once(&self.client, rng).await,
        }
    }

    /// The client that goes away: starts a query, reads its first event and drops the stream,
    /// over and over until `stop`, on connections of its own (a new one every
    /// [`DISCONNECTS_PER_CONNECTION`] streams).
    async fn disconnecting(
        self,
        endpoint: String,
        window: Arc<Mutex<Window>>,
        stop: CancellationToken,
    ) {
        let mut rng = fastrand::Rng::with_seed(0);
        let mut connection = None;
        let mut dropped = 0;
        while !stop.is_cancelled() {
            let began = Instant::now();
            if dropped % DISCONNECTS_PER_CONNECTION == 0 {
                connection = None;
            }
            let client = match connection.take() {
                Some(client) => Ok(client),
                None => connect(&endpoint, None).await,
            };
            let outcome = match client {
                Ok(client) => {
                    let outcome = self.disconnect_once(&client, &mut rng).await;
                    connection = Some(client);
                    dropped += 1;
                    outcome
                }
                Err(error) => Err(error),
            };
            record(&window, Call::Disconnect, began.elapsed(), outcome);
        }
    }

    async fn disconnect_once(
        &self,
        client: &ServerClient,
        rng: &mut fastrand::Rng,
    ) -> Result<(), CliError> {
        let question = &self.model_questions[rng.usize(..self.model_questions.len())];
        let mut stream = client
            .clone()
            .query(Self::request(question.clone(), true))
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| CliError::Io("a query ended before its first event".into()))?;
        // Dropping the stream resets it: the server sees the caller leave mid-run.
        drop(stream);
        Ok(())
    }
}

fn record(window: &Mutex<Window>, call: Call, took: Duration, outcome: Result<(), CliError>) {
    let mut window = window.lock();
    match outcome {
        Ok(()) => window.latencies.entry(call).or_default().push(took),
        Err(error) => {
            let kind = match &error {
                CliError::Call(status) => format!("{} {:?}", call.name(), status.code()),
                other => format!("{} {other}", call.name()),
            };
            *window.errors.entry(kind).or_default() += 1;
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn header() -> String {
    let mut header = format!(
        "| {:>6} | {:>7} | {:>4} | {:>5} | {:>7} |",
        "min", "RSS MiB", "fds", "tasks", "threads"
    );
    for call in Call::ALL {
        header.push_str(&format!(
            " {:>19} |",
            format!("{} n p50/p99 ms", call.name())
        ));
    }
    header.push_str(" errors |");
    header
}

fn row(elapsed: Duration, health: Health, seen: &Window) -> String {
    let mut row = format!(
        "| {:>6.1} | {:>7.1} | {:>4} | {:>5} | {:>7} |",
        elapsed.as_secs_f64() / 60.0,
        mib(health.rss_bytes),
        health.fds,
        health.tasks,
        health.threads
    );
    for call in Call::ALL {
        let cell = match seen.latencies.get(&call) {
            None => "-".to_string(),
            Some(times) => {
                let mut times = times.clone();
                times.sort();
                let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
                let p99 = times
                    .get(((times.len() - 1) as f64 * 0.99).round() as usize)
                    .copied()
                    .unwrap_or_default();
                format!(
                    "{} {:.1}/{:.1}",
                    times.len(),
                    ms(middle(&mut times)),
                    ms(p99)
                )
            }
        };
        row.push_str(&format!(" {cell:>19} |"));
    }
    let errors = if seen.errors.is_empty() {
        "0".to_string()
    } else {
        seen.errors
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row.push_str(&format!(" {errors} |"));
    row
}

/// One target of the verdict; `passed` is `None` when the run was too short to judge it.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    name: &'static str,
    passed: Option<bool>,
    detail: String,
}

/// Intervals left out of the growth checks: the first tenth of the run (at least one), while
/// caches, pools and the allocator fill up.
fn warm_up(intervals: usize) -> usize {
    intervals.div_ceil(10).max(1)
}

/// Judges the server's peak resident memory against [`PEAK_RSS_TARGET_MIB`], when the run
/// sent the traffic the target is set for.
fn judge_peak(peak_rss_bytes: u64, target_traffic: bool) -> Check {
    let detail = format!(
        "{:.1} MiB at its peak (target {PEAK_RSS_TARGET_MIB} MiB at concurrency {TARGET_CONCURRENCY} with {TARGET_DOCUMENTS} documents)",
        mib(peak_rss_bytes)
    );
    Check {
        name: "peak RSS of the server",
        passed: target_traffic.then(|| mib(peak_rss_bytes) <= PEAK_RSS_TARGET_MIB),
        detail,
    }
}

/// Judges the run's samples, one per interval in order, and its failed calls. After warm-up:
/// resident memory stays within [`RSS_GROWTH`] of its first value; descriptors and the task
/// floor in the later half of the intervals exceed those of the earlier half by no more than
/// their slack; and no call failed (the traffic asks for no error: a disconnect is the
/// client's own doing and is not one).
fn judge(samples: &[Health], failed_calls: u64) -> Vec<Check> {
    let judged = samples.get(warm_up(samples.len())..).unwrap_or_default();
    let mut checks = Vec::new();
    let too_short = || {
        format!(
            "{} intervals, of which {} warm-up: at least two after warm-up are needed",
            samples.len(),
            warm_up(samples.len())
        )
    };
    if let [first, ..] = judged
        && judged.len() >= 2
    {
        let peak = judged
            .iter()
            .map(|health| health.rss_bytes)
            .max()
            .unwrap_or(0);
        let limit = first.rss_bytes as f64 * (1.0 + RSS_GROWTH);
        checks.push(Check {
            name: "RSS flat after warm-up",
            passed: Some(peak as f64 <= limit),
            detail: format!(
                "{:.1} MiB after warm-up, at most {:.1} MiB later (limit {:.1} MiB)",
                mib(first.rss_bytes),
                mib(peak),
                limit / (1024.0 * 1024.0)
            ),
        });
        let (earlier, later) = judged.split_at(judged.len() / 2);
        let most =
            |part: &[Health], pick: fn(&Health) -> u64| part.iter().map(pick).max().unwrap_or(0);
        for (name, pick, slack) in [
            (
                "open file descriptors not growing",
                (|health: &Health| health.fds) as fn(&Health) -> u64,
                FD_SLACK,
            ),
            ("tasks not growing", |health: &Health| health.tasks, 0),
        ] {
            let (before, after) = (most(earlier, pick), most(later, pick));
            let slack = if slack == 0 {
                TASK_SLACK.max(before / 10)
            } else {
                slack
            };
            checks.push(Check {
                name,
                passed: Some(after <= before + slack),
                detail: format!(
                    "at most {before} in the earlier half after warm-up, {after} in the later (slack {slack})"
                ),
            });
        }
    } else {
        for name in [
            "RSS flat after warm-up",
            "open file descriptors not growing",
            "tasks not growing",
        ] {
            checks.push(Check {
                name,
                passed: None,
                detail: too_short(),
            });
        }
    }
    checks.push(Check {
        name: "no unexpected errors",
        passed: Some(failed_calls == 0),
        detail: format!("{failed_calls} failed calls"),
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(rss_mib: u64, fds: u64, tasks: u64) -> Health {
        Health {
            rss_bytes: rss_mib << 20,
            fds,
            tasks,
            threads: 8,
        }
    }

    fn passed(checks: &[Check], name: &str) -> Option<bool> {
        checks
            .iter()
            .find(|check| check.name == name)
            .unwrap_or_else(|| panic!("no check {name:?} in {checks:?}"))
            .passed
    }

    #[test]
    fn a_steady_run_meets_every_target() {
        let samples: Vec<Health> = (0..30)
            .map(|n| health(80 + n % 3, 40 + n % 2, 200 + n % 5))
            .collect();
        let checks = judge(&samples, 0);
        assert!(
            checks.iter().all(|check| check.passed == Some(true)),
            "{checks:#?}"
        );
    }

    #[test]
    fn memory_growth_past_ten_percent_after_warm_up_is_a_miss_but_warm_up_growth_is_not() {
        // Warm-up (the first 3 of 30) climbs from 20 to 90 MiB: not judged.
        let mut samples: Vec<Health> = (0..30).map(|_| health(90, 40, 200)).collect();
        samples[0].rss_bytes = 20 << 20;
        samples[1].rss_bytes = 50 << 20;
        assert_eq!(
            passed(&judge(&samples, 0), "RSS flat after warm-up"),
            Some(true)
        );

        samples[20].rss_bytes = 100 << 20;
        assert_eq!(
            passed(&judge(&samples, 0), "RSS flat after warm-up"),
            Some(false)
        );
        samples[20].rss_bytes = 99 << 20;
        assert_eq!(
            passed(&judge(&samples, 0), "RSS flat after warm-up"),
            Some(true)
        );
    }

    #[test]
    fn descriptors_or_tasks_that_keep_climbing_are_a_miss() {
        let leaking_fds: Vec<Health> = (0..30).map(|n| health(90, 40 + n, 200)).collect();
        let checks = judge(&leaking_fds, 0);
        assert_eq!(
            passed(&checks, "open file descriptors not growing"),
            Some(false)
        );
        assert_eq!(passed(&checks, "tasks not growing"), Some(true));

        let leaking_tasks: Vec<Health> = (0..30).map(|n| health(90, 40, 200 + 10 * n)).collect();
        let checks = judge(&leaking_tasks, 0);
        assert_eq!(passed(&checks, "tasks not growing"), Some(false));
        assert_eq!(
            passed(&checks, "open file descriptors not growing"),
            Some(true)
        );
    }

    #[test]
    fn any_failed_call_is_a_miss() {
        let samples: Vec<Health> = (0..10).map(|_| health(90, 40, 200)).collect();
        assert_eq!(
            passed(&judge(&samples, 1), "no unexpected errors"),
            Some(false)
        );
        assert_eq!(
            passed(&judge(&samples, 0), "no unexpected errors"),
            Some(true)
        );
    }

    #[test]
    fn a_run_too_short_for_growth_is_not_judged_on_it() {
        let checks = judge(&[health(90, 40, 200), health(200, 99, 999)], 0);
        assert_eq!(passed(&checks, "RSS flat after warm-up"), None);
        assert_eq!(passed(&checks, "tasks not growing"), None);
        assert_eq!(passed(&checks, "no unexpected errors"), Some(true));
    }

    #[test]
    fn warm_up_is_the_first_tenth_of_the_intervals_and_at_least_one() {
        assert_eq!(warm_up(1), 1);
        assert_eq!(warm_up(10), 1);
        assert_eq!(warm_up(11), 2);
        assert_eq!(warm_up(30), 3);
    }

    #[test]
    fn the_peak_is_judged_only_at_the_traffic_the_target_is_set_for() {
        let under = judge_peak(99 << 20, true);
        assert_eq!(under.passed, Some(true), "{under:?}");
        assert_eq!(judge_peak(101 << 20, true).passed, Some(false));
        assert_eq!(judge_peak(101 << 20, false).passed, None);
    }

    #[test]
    fn the_mix_draws_every_kind_of_call_but_disconnects() {
        let drawn: std::collections::BTreeSet<Call> = (0..1000).map(Call::from_draw).collect();
        assert_eq!(
            drawn.into_iter().collect::<Vec<_>>(),
            vec![
                Call::Model,
                Call::Hit,
                Call::Ingest,
                Call::Delete,
                Call::Clear
            ]
        );
    }
}
