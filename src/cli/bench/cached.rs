//! `deeprecall bench cached-query`: server-side and round-trip latency of cache hits on each
//! cache backend.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{BenchArgs, BenchServer, Corpus, percentiles};
use crate::api::pb;
use crate::cli::{CliError, ServerClient, connect};
use crate::config::CacheBackend;

pub(super) async fn cached_query(args: &BenchArgs) -> Result<(), CliError> {
    let mut backends = vec![CacheBackend::Memory, CacheBackend::Sqlite];
    match &args.redis_url {
        Some(_) => backends.push(CacheBackend::Redis),
        None => println!("cached query: redis skipped (no --redis-url)"),
    }
    for backend in backends {
        let cache_dir = tempfile::tempdir().map_err(|error| CliError::Io(error.to_string()))?;
        let server = BenchServer::start_with(|config| {
            config.cache.backend = backend;
            config.cache.path = cache_dir.path().join("cache.db");
            if let Some(url) = &args.redis_url {
                config.cache.redis_url = url.clone();
            }
        })
        .await?;
        let mut client = connect(&server.endpoint, None).await?;
        let mut corpus = Corpus::new(3, args.zipf_offset);
        client
            .add_documents(pb::AddDocumentsRequest {
                collection: String::new(),
                documents: corpus.proto_documents(200),
            })
            .await?;
        let request = pb::QueryRequest {
            query: corpus.query(),
            ..pb::QueryRequest::default()
        };
        // The first query fills the cache; only hits are measured.
        cached_once(&mut client, request.clone()).await?;
        for concurrency in [1, 64] {
            let started = Instant::now();
            let timings = futures::stream::iter(0..args.samples)
                .map(|_| {
                    let mut client = client.clone();
                    let request = request.clone();
                    async move {
                        let began = Instant::now();
                        let (server_side, cached) = cached_once(&mut client, request).await?;
                        if !cached {
                            return Err(CliError::Io(
                                "a repeated query was not served from the cache".into(),
                            ));
                        }
                        Ok((server_side, began.elapsed()))
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            let wall = started.elapsed();
            let mut server_side = Vec::with_capacity(timings.len());
            let mut round_trip = Vec::with_capacity(timings.len());
            for timing in timings {
                let (server, total) = timing?;
                server_side.push(server);
                round_trip.push(total);
            }
            println!(
                "cached query ({backend:?}), concurrency {concurrency}: {:.0} queries/s; server-side {}; gRPC round trip {}",
                args.samples as f64 / wall.as_secs_f64(),
                percentiles(&mut server_side),
                percentiles(&mut round_trip)
            );
        }
    }
    Ok(())
}

/// Runs one query; returns its server-side time and whether it was a cache hit.
pub(super) async fn cached_once(
    client: &mut ServerClient,
    request: pb::QueryRequest,
) -> Result<(Duration, bool), CliError> {
    let mut stream = client.query(request).await?.into_inner();
    let mut result = None;
    while let Some(event) = stream.message().await? {
        if let Some(pb::query_event::Event::Result(done)) = event.event {
            result = Some(done);
        }
    }
    let result = result.ok_or_else(|| CliError::Io("a query ended without a result".into()))?;
    Ok((
        Duration::from_secs_f64(result.execution_time_seconds),
        result.cached,
    ))
}
