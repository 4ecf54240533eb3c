//! `deeprecall bench replicas`: queries/s through one replica and through two sharing one
//! PostgreSQL and one Redis, with the scripted model in the loop, against the bound the
//! model's latency sets.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::engine::three_call_script;
use super::{BenchArgs, BenchServer, Corpus, QUESTION_PREFIX};
use crate::api::pb;
use crate::cli::{CliError, connect};
use crate::config::{Backend, CacheBackend, RateLimitStore, StoreBackend, StoreConfig};
use crate::llm::mock_server::MockLlmServer;
use crate::secret::Secret;

/// Model calls of each query in the script: two searches, then the answer.
const CALLS_PER_QUERY: f64 = 3.0;

/// Runs the same queries through one replica on the embedded store with its cache in memory
/// (the reference: nothing shared), then through one and through two replicas on the
/// postgres store at `database_url` with their cache and rate limits in the Redis at
/// `redis_url`; the client sends query `n` to replica `n % replicas`.
pub(super) async fn replicas(
    args: &BenchArgs,
    database_url: &str,
    redis_url: &str,
) -> Result<(), CliError> {
    let latency = Duration::from_millis(args.mock_latency_ms.unwrap_or(50));
    if latency.is_zero() {
        return Err(CliError::Usage(
            "bench replicas: --mock-latency-ms must be above 0: the bound is set by it".into(),
        ));
    }
    let concurrency = args.concurrency.unwrap_or(64);
    let queries = (args.samples / 4).max(concurrency * 16);
    // A collection of its own, so that an existing database keeps its data and runs do not
    // see each other's documents.
    let collection = format!("bench-replicas-{}", std::process::id());
    let bound = concurrency as f64 / (latency.as_secs_f64() * CALLS_PER_QUERY);
    for (shared, count) in [(false, 1usize), (true, 1), (true, 2)] {
        let mock = MockLlmServer::start(three_call_script(latency, 0..queries))
            .await
            .map_err(|error| CliError::Io(error.to_string()))?;
        let mut servers = Vec::with_capacity(count);
        for _ in 0..count {
            let base_url = mock.base_url();
            let prefix = format!("{collection}-{count}-{shared}");
            servers.push(
                BenchServer::start_with(|config| {
                    config.llm.backend = Backend::Openai;
                    config.llm.model = "mock".into();
                    config.llm.base_url = base_url;
                    config.llm.stream = !args.no_stream;
                    if shared {
                        config.store = StoreConfig {
                            backend: StoreBackend::Postgres,
                            database_url: Secret::new(database_url.to_string()),
                            ..StoreConfig::default()
                        };
                        config.cache.backend = CacheBackend::Redis;
                        config.cache.redis_url = redis_url.to_string();
                        config.cache.redis_prefix = prefix.clone();
                        config.limits.store = RateLimitStore::Redis;
                        config.limits.redis_url = redis_url.to_string();
                        config.limits.redis_prefix = format!("{prefix}:ratelimit");
                    }
                })
                .await?,
            );
        }
        let mut clients = Vec::with_capacity(count);
        for server in &servers {
            clients.push(connect(&server.endpoint, None).await?);
        }
        // The embedded store starts empty each time; the postgres one keeps what the first
        // shared run wrote.
        if let (true, Some(client)) = (!shared || count == 1, clients.first_mut()) {
            client
                .add_documents(pb::AddDocumentsRequest {
                    collection: collection.clone(),
                    documents: Corpus::new(5, args.zipf_offset).proto_documents(200),
                })
                .await?;
        }

        let measured = tokio::spawn({
            let collection = collection.clone();
            async move {
                let started = Instant::now();
                let outcomes = futures::stream::iter(0..queries)
                    .map(|n| {
                        let mut client = clients[n % clients.len()].clone();
                        let collection = collection.clone();
                        async move {
                            let request = pb::QueryRequest {
                                query: format!("{QUESTION_PREFIX}{n}?"),
                                collection,
                                ..pb::QueryRequest::default()
                            };
                            let mut stream = client.query(request).await?.into_inner();
                            while stream.message().await?.is_some() {}
                            Ok::<(), tonic::Status>(())
                        }
                    })
                    .buffer_unordered(concurrency)
                    .collect::<Vec<_>>()
                    .await;
                (outcomes, started.elapsed())
            }
        });
        let (outcomes, wall) = measured
            .await
            .map_err(|error| CliError::Io(format!("the measurement task failed: {error}")))?;
        let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
        if let Some(Err(status)) = outcomes.into_iter().find(Result::is_err) {
            return Err(CliError::Io(format!(
                "bench replicas: {failed} of {queries} queries failed, the first with {status}"
            )));
        }
        let throughput = queries as f64 / wall.as_secs_f64();
        println!(
            "replicas: {count} on {}, concurrency {concurrency}, mock latency {} ms: {throughput:.0} queries/s ({:.0}% of the {bound:.0}/s the mock allows)",
            if shared {
                "one postgres and one redis"
            } else {
                "the embedded store, cache in memory (nothing shared)"
            },
            latency.as_millis(),
            throughput / bound * 100.0,
        );
        if let (true, 2, Some(server)) = (shared, count, servers.first()) {
            connect(&server.endpoint, None)
                .await?
                .delete_collection(pb::DeleteCollectionRequest {
                    collection: collection.clone(),
                })
                .await?;
        }
    }
    Ok(())
}
