//! `deeprecall bench engine`: what the engine adds to a model's own latency, with the scripted
//! OpenAI-compatible mock in the loop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::probes::{cold_cache_probe, transport_floor_probe};
use super::{BenchArgs, BenchServer, Corpus, median, middle, percentiles};
use crate::api::pb;
use crate::cli::{CliError, connect};
use crate::config::{Backend, CacheBackend};
use crate::llm::mock_server::{MockLlmServer, MockReply, MockScript, RecordedRequest, Recording};

pub(super) const QUESTION_PREFIX: &str = "bench question ";

/// Measures what the engine adds to a model's own latency: each query runs a three-call script
/// (two searches, then submit) against the scripted OpenAI-compatible mock over HTTP, through
/// the real gRPC server. Overhead is the end-to-end latency minus the time the mock spent on
/// that query's three requests.
pub(super) async fn engine_overhead(
    args: &BenchArgs,
    latency: Duration,
    concurrency: usize,
) -> Result<(), CliError> {
    // At least 16 rounds of `concurrency` queries: the first round arrives all at once and the
    // last one drains, and with only a few rounds those two would decide the throughput.
    let queries = (args.samples / 4).max(concurrency * 16);
    let mock = MockLlmServer::start(three_call_script(latency, 0..queries))
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
    let base_url = mock.base_url();
    let server = BenchServer::start_with(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock".into();
        config.llm.base_url = base_url;
        config.llm.stream = !args.no_stream;
        config.cache.backend = CacheBackend::None;
    })
    .await?;
    let mut client = connect(&server.endpoint, None).await?;
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: Corpus::new(5, args.zipf_offset).proto_documents(200),
        })
        .await?;

    // The queries run on the runtime's workers, as the server's tasks do: from the thread that
    // blocks on the benchmark, every event would be a hand-off to one more thread.
    let measured = tokio::spawn(async move {
        let started = Instant::now();
        let latencies = futures::stream::iter(0..queries)
            .map(|n| {
                let mut client = client.clone();
                async move {
                    let request = pb::QueryRequest {
                        query: format!("{QUESTION_PREFIX}{n}?"),
                        ..pb::QueryRequest::default()
                    };
                    let began = Instant::now();
                    let mut stream = client.query(request).await?.into_inner();
                    let mut phases = Phases::default();
                    while let Some(event) = stream.message().await? {
                        phases.observe(&event);
                    }
                    let elapsed = began.elapsed();
                    phases.outside_run = elapsed.saturating_sub(phases.run);
                    Ok::<(usize, Duration, Phases), tonic::Status>((n, elapsed, phases))
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        (latencies, started.elapsed())
    });
    let (latencies, wall) = measured
        .await
        .map_err(|error| CliError::Io(format!("the measurement task failed: {error}")))?;

    // The mock's own latency is what its socket measured, per request, from the first byte
    // read to the start of the write of its answer's last bytes: the configured latency plus
    // its HTTP work.
    let mock_time = mock_time_by_query(&mock.requests());
    let mut overheads = Vec::with_capacity(latencies.len());
    let mut end_to_end = Vec::with_capacity(latencies.len());
    let mut mock_share = Vec::with_capacity(latencies.len());
    let mut phases = Vec::with_capacity(latencies.len());
    for outcome in latencies {
        let (n, elapsed, query_phases) = outcome?;
        // Without the mock's own time the overhead would be a guess; better no number.
        let mock = mock_time.get(&n).copied().ok_or_else(|| {
            CliError::Io(format!(
                "the mock has no timing for bench query {n}: its requests no longer carry the question"
            ))
        })?;
        overheads.push(elapsed.saturating_sub(mock));
        end_to_end.push(elapsed);
        mock_share.push(mock);
        phases.push(query_phases);
    }
    let throughput = queries as f64 / wall.as_secs_f64();
    let bound = if latency.is_zero() {
        String::new()
    } else {
        let bound = concurrency as f64 / (latency.as_secs_f64() * 3.0);
        format!(
            " ({:.0}% of the {bound:.0}/s the mock allows)",
            throughput / bound * 100.0
        )
    };
    println!(
        "engine ({}): mock latency {} ms, concurrency {concurrency}: overhead {}; end to end {}, of which mock {}; {throughput:.0} queries/s{bound}",
        if args.no_stream {
            "whole replies"
        } else {
            "streamed replies"
        },
        latency.as_millis(),
        percentiles(&mut overheads),
        median(&mut end_to_end),
        median(&mut mock_share),
    );
    // Where the time goes is only readable without queueing.
    if concurrency == 1 {
        let phase = |pick: fn(&Phases) -> Duration| {
            let mut times: Vec<Duration> = phases.iter().map(pick).collect();
            format!("{:.3} ms", middle(&mut times).as_secs_f64() * 1000.0)
        };
        println!(
            "  where a query's time goes (p50 of each part): model calls {} (the mock's time included), searches {}, the rest of the run {}, gRPC and request handling around the run {}",
            phase(|phases| phases.model_calls),
            phase(|phases| phases.searches),
            phase(|phases| phases
                .run
                .saturating_sub(phases.model_calls + phases.searches)),
            phase(|phases| phases.outside_run),
        );
        println!("  {}", transport_floor_probe(latency).await?);
        if !latency.is_zero() {
            println!("  {}", cold_cache_probe(latency).await);
        }
    }
    Ok(())
}

/// The mock's script for bench questions `numbers`: each answers with two searches, then a
/// submit, every reply after `latency`.
pub(super) fn three_call_script(latency: Duration, numbers: std::ops::Range<usize>) -> MockScript {
    let tool = |name: &str, arguments: serde_json::Value| {
        MockReply::tool_call(name, arguments.to_string())
    };
    let mut script = MockScript::default()
        .with_latency(latency)
        .with_chunk_pause(Duration::ZERO)
        .with_recording(Recording::Light);
    for n in numbers {
        script = script.with_conversation(
            format!("{QUESTION_PREFIX}{n}?"),
            vec![
                tool("search_db", serde_json::json!({"query": "first hop"})),
                tool("search_db", serde_json::json!({"query": "second hop"})),
                tool(
                    "submit",
                    serde_json::json!({"answer": "done [doc-1]", "citations": ["doc-1"]}),
                ),
            ],
        );
    }
    script
}

/// Sums the mock's own time per bench query, recognised by its question in each request's
/// first user message.
pub(super) fn mock_time_by_query(requests: &[RecordedRequest]) -> HashMap<usize, Duration> {
    let mut mock_time: HashMap<usize, Duration> = HashMap::new();
    for request in requests {
        if let (Some(n), Some(service_time)) = (
            bench_query_number(&request.first_user_text),
            request.service_time,
        ) {
            *mock_time.entry(n).or_default() += service_time;
        }
    }
    mock_time
}

/// Returns `n` from the bench question `"{QUESTION_PREFIX}{n}?"` somewhere in `text`.
fn bench_query_number(text: &str) -> Option<usize> {
    text.split(QUESTION_PREFIX)
        .nth(1)?
        .split('?')
        .next()?
        .parse()
        .ok()
}

/// How one query's time divides, from the server's own timestamps on its trace events: a
/// model call is the time from a step's start to the call's event, a search the time from
/// the event before it (the call that asked for it) to its own.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    model_calls: Duration,
    searches: Duration,
    /// From the run's start to its last event.
    run: Duration,
    /// The rest of the round trip: the request reaching the run, and the last event the client.
    outside_run: Duration,
}

impl Phases {
    fn observe(&mut self, event: &pb::QueryEvent) {
        use pb::query_event::Event;
        let at = Duration::try_from_secs_f64(event.elapsed_seconds).unwrap_or_default();
        let since_previous = at.saturating_sub(self.run);
        match event.event {
            Some(Event::LlmCall(_)) => self.model_calls += since_previous,
            Some(Event::Search(_)) => self.searches += since_previous,
            _ => {}
        }
        self.run = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::prompts;

    fn recorded(first_user_text: String, service_time: Option<Duration>) -> RecordedRequest {
        RecordedRequest {
            path: "/v1/chat/completions".into(),
            headers: Vec::new(),
            body: serde_json::Value::Null,
            first_user_text,
            service_time,
        }
    }

    #[test]
    fn the_mock_time_of_each_query_is_found_in_the_prompt_the_engine_sends() {
        let prompt =
            |n: usize| prompts::user_message(&format!("{QUESTION_PREFIX}{n}?"), "default", 200, "");
        let requests = [
            recorded(prompt(7), Some(Duration::from_millis(50))),
            recorded(prompt(12), Some(Duration::from_millis(40))),
            recorded(prompt(7), Some(Duration::from_millis(51))),
            // Not answered yet: no time to count.
            recorded(prompt(12), None),
            recorded(
                "a question of no bench query".into(),
                Some(Duration::from_secs(1)),
            ),
        ];

        let mock_time = mock_time_by_query(&requests);

        assert_eq!(mock_time.len(), 2);
        assert_eq!(mock_time[&7], Duration::from_millis(101));
        assert_eq!(mock_time[&12], Duration::from_millis(40));
    }

    #[test]
    fn bench_query_numbers_need_the_whole_question() {
        assert_eq!(bench_query_number(&format!("{QUESTION_PREFIX}3?")), Some(3));
        assert_eq!(bench_query_number(&format!("{QUESTION_PREFIX}x?")), None);
        assert_eq!(bench_query_number("bench 3?"), None);
    }
}
