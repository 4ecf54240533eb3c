//! `deeprecall bench protocols`: gRPC and the OpenAI-compatible HTTP API measured side by side
//! in one run, each row on the same server over both: the engine overhead with the scripted
//! model in the loop (end-to-end latency less the mock's own time per query, caches off as in
//! the engine suite), then cache hits per second (memory cache).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use super::{
    BenchArgs, BenchServer, Corpus, QUESTION_PREFIX, cached_once, mock_time_by_query, percentiles,
};
use crate::api::pb;
use crate::cli::{CliError, connect};
use crate::config::{Backend, CacheBackend};
use crate::llm::mock_server::{MockLlmServer, MockReply, MockScript, Recording};

/// Which protocol a measurement used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "gRPC",
            Protocol::Http => "HTTP",
        }
    }
}

/// Runs both measurements on one server with the HTTP API on.
pub(super) async fn protocols(args: &BenchArgs) -> Result<(), CliError> {
    let concurrencies = args.concurrency.map_or(vec![1, 16], |only| vec![only]);
    let per_run = (args.samples / 4).max(64);
    // One conversation per query of every run: the mock answers each with two searches and a
    // submit, and its timings are told apart by the question's number.
    let runs = concurrencies.len() * 2;
    let tool = |name: &str, arguments: Value| MockReply::tool_call(name, arguments.to_string());
    let mut script = MockScript::default()
        .with_latency(Duration::from_millis(args.mock_latency_ms.unwrap_or(0)))
        .with_chunk_pause(Duration::ZERO)
        .with_recording(Recording::Light);
    for n in 0..per_run * runs {
        script = script.with_conversation(
            format!("{QUESTION_PREFIX}{n}?"),
            vec![
                tool("search_db", json!({"query": "first hop"})),
                tool("search_db", json!({"query": "second hop"})),
                tool(
                    "submit",
                    json!({"answer": "done [doc-1]", "citations": ["doc-1"]}),
                ),
            ],
        );
    }
    let mock = MockLlmServer::start(script)
        .await
        .map_err(|error| CliError::Io(error.to_string()))?;
    let base_url = mock.base_url();
    // Caches off, as in the engine suite: every query runs its searches.
    let (server, http_base) = server_with_http(|config| {
        config.llm.backend = Backend::Openai;
        config.llm.model = "mock".into();
        config.llm.base_url = base_url;
        config.llm.stream = !args.no_stream;
        config.cache.backend = CacheBackend::None;
    })
    .await?;
    let mut client = connect(&server.endpoint, None).await?;
    let mut corpus = Corpus::new(5, args.zipf_offset);
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: corpus.proto_documents(200),
        })
        .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|error| CliError::Io(error.to_string()))?;

    let mut next = 0;
    for &concurrency in &concurrencies {
        for protocol in [Protocol::Grpc, Protocol::Http] {
            let numbers: Vec<usize> = (next..next + per_run).collect();
            next += per_run;
            let started = Instant::now();
            let latencies = futures::stream::iter(numbers)
                .map(|n| {
                    let mut client = client.clone();
                    let http = http.clone();
                    let http_base = http_base.clone();
                    async move {
                        let question = format!("{QUESTION_PREFIX}{n}?");
                        let began = Instant::now();
                        match protocol {
                            Protocol::Grpc => {
                                cached_once(
                                    &mut client,
                                    pb::QueryRequest {
                                        query: question,
                                        ..pb::QueryRequest::default()
                                    },
                                )
                                .await?;
                            }
                            Protocol::Http => {
                                http_completion(&http, &http_base, &question).await?;
                            }
                        }
                        Ok::<_, CliError>((n, began.elapsed()))
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            let wall = started.elapsed();
            let requests = mock.requests();
            let mock_time = mock_time_by_query(&requests);
            let calls = requests
                .iter()
                .filter(|request| request.first_user_text.contains(QUESTION_PREFIX))
                .count();
            // Every query of every row so far made its three model calls, or the overhead
            // would be measured on a shorter run than the script's.
            if calls != next * 3 {
                return Err(CliError::Io(format!(
                    "the mock answered {calls} model calls for {next} queries, not three each"
                )));
            }
            let mut overheads = Vec::with_capacity(latencies.len());
            for outcome in latencies {
                let (n, elapsed) = outcome?;
                let spent = mock_time.get(&n).copied().ok_or_else(|| {
                    CliError::Io(format!("the mock has no timing for bench query {n}"))
                })?;
                overheads.push(elapsed.saturating_sub(spent));
            }
            println!(
                "protocols: engine overhead over {}, concurrency {concurrency}: {}; {:.0} queries/s",
                protocol.name(),
                percentiles(&mut overheads),
                per_run as f64 / wall.as_secs_f64(),
            );
        }
    }

    // Cache hits, on a server with the memory cache and the offline model: the same question
    // over both protocols shares one cache entry.
    let (cached_server, http_base) =
        server_with_http(|config| config.cache.backend = CacheBackend::Memory).await?;
    let mut client = connect(&cached_server.endpoint, None).await?;
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: corpus.proto_documents(200),
        })
        .await?;
    let question = corpus.query();
    cached_once(
        &mut client,
        pb::QueryRequest {
            query: question.clone(),
            ..pb::QueryRequest::default()
        },
    )
    .await?;
    for concurrency in [1, 64] {
        for protocol in [Protocol::Grpc, Protocol::Http] {
            let started = Instant::now();
            let timings = futures::stream::iter(0..args.samples)
                .map(|_| {
                    let mut client = client.clone();
                    let http = http.clone();
                    let http_base = http_base.clone();
                    let question = question.clone();
                    async move {
                        let began = Instant::now();
                        let cached = match protocol {
                            Protocol::Grpc => {
                                cached_once(
                                    &mut client,
                                    pb::QueryRequest {
                                        query: question,
                                        ..pb::QueryRequest::default()
                                    },
                                )
                                .await?
                                .1
                            }
                            Protocol::Http => {
                                let body = http_completion(&http, &http_base, &question).await?;
                                body["deeprecall"]["cached"] == json!(true)
                            }
                        };
                        if !cached {
                            return Err(CliError::Io(
                                "a repeated query was not served from the cache".into(),
                            ));
                        }
                        Ok(began.elapsed())
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            let wall = started.elapsed();
            let mut round_trips = timings.into_iter().collect::<Result<Vec<_>, _>>()?;
            println!(
                "protocols: cache hits over {}, concurrency {concurrency}: {:.0} requests/s; round trip {}",
                protocol.name(),
                args.samples as f64 / wall.as_secs_f64(),
                percentiles(&mut round_trips),
            );
        }
    }
    Ok(())
}

/// A bench server with its HTTP API on a free port; returns it and the API's root.
async fn server_with_http(
    configure: impl FnOnce(&mut crate::config::Config),
) -> Result<(BenchServer, String), CliError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| CliError::Io(error.to_string()))?
        .port();
    let server = BenchServer::start_with(|config| {
        config.server.http_listen = format!("127.0.0.1:{port}");
        configure(config);
    })
    .await?;
    Ok((server, format!("http://127.0.0.1:{port}")))
}

/// One non-streamed chat completion; returns its body.
async fn http_completion(
    http: &reqwest::Client,
    base: &str,
    question: &str,
) -> Result<Value, CliError> {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "deeprecall",
            "messages": [{"role": "user", "content": question}],
        }))
        .send()
        .await
        .map_err(|error| CliError::Io(format!("HTTP request failed: {error}")))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|error| CliError::Io(format!("HTTP response unreadable: {error}")))?;
    if !status.is_success() {
        return Err(CliError::Io(format!("HTTP {status}: {body}")));
    }
    Ok(body)
}
