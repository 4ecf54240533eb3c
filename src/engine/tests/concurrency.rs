//! Runs side by side: batches bounded and stopped, identical queries sharing one run, runs
//! that stop when every caller has left.

use std::time::Duration;

use async_trait::async_trait;

use super::*;

/// Waits until `condition` holds; fails the test when it still does not after `HANG`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A model that answers in plain text, counting how many calls overlap. Its calls either
/// pause briefly, or, when gated, wait until the test lets them through one by one.
#[derive(Debug, Default)]
struct GaugeModel {
    in_flight: std::sync::atomic::AtomicUsize,
    most_in_flight: std::sync::atomic::AtomicUsize,
    started: std::sync::atomic::AtomicUsize,
    gate: Option<tokio::sync::Semaphore>,
}

impl GaugeModel {
    /// A model whose calls answer only as `release` lets them.
    fn gated() -> Self {
        GaugeModel {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..GaugeModel::default()
        }
    }

    /// Lets `calls` waiting or future calls answer.
    fn release(&self, calls: usize) {
        if let Some(gate) = &self.gate {
            gate.add_permits(calls);
        }
    }

    fn started(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl ChatModel for GaugeModel {
    fn name(&self) -> &str {
        "gauge"
    }

    async fn chat(
        &self,
        _request: crate::llm::ChatRequest,
    ) -> Result<crate::llm::ChatResponse, LlmError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.started.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most_in_flight.fetch_max(now, SeqCst);
        // Decrements even when the call is dropped while it waits.
        struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.in_flight);
        match &self.gate {
            Some(gate) => gate
                .acquire()
                .await
                .map_err(|_| LlmError::Unavailable("gate closed".into()))?
                .forget(),
            None => tokio::time::sleep(Duration::from_millis(30)).await,
        }
        Ok(crate::llm::ChatResponse {
            content: "answer".into(),
            tool_calls: Vec::new(),
            usage: Default::default(),
            cost_usd: None,
        })
    }
}

fn batch_of(count: usize) -> Vec<Result<QueryRequest, EngineError>> {
    (0..count)
        .map(|n| Ok(question(&format!("question {n}"))))
        .collect()
}

#[tokio::test]
async fn a_batch_never_runs_more_than_its_concurrency() {
    use futures::StreamExt;
    let model = Arc::new(GaugeModel::default());
    let engine = engine_with(corpus(), model.clone());
    let items: Vec<(usize, Result<QueryResult, EngineError>)> = engine
        .query_batch(
            batch_of(12),
            Arc::from("tester"),
            Arc::new(|_: &PreparedQuery| tracing::Span::none()),
            3,
            None,
            CancellationToken::new(),
        )
        .collect()
        .await;
    let mut indices: Vec<usize> = items.iter().map(|(index, _)| *index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..12).collect::<Vec<_>>());
    assert!(items.iter().all(|(_, outcome)| outcome.is_ok()));
    assert_eq!(
        model
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

#[tokio::test]
async fn dropping_a_batch_stream_stops_the_remaining_work() {
    use futures::StreamExt;
    let model = Arc::new(GaugeModel::gated());
    let engine = engine_with(corpus(), model.clone());
    let mut stream = Box::pin(engine.query_batch(
        batch_of(50),
        Arc::from("tester"),
        Arc::new(|_: &PreparedQuery| tracing::Span::none()),
        4,
        None,
        CancellationToken::new(),
    ));
    model.release(1);
    assert!(stream.next().await.is_some());
    drop(stream);
    // No call answers any more: the calls in flight end only by being dropped.
    eventually("the in-flight calls were dropped", || {
        model.in_flight() == 0
    })
    .await;
    assert!(
        model.started() <= 5,
        "only the one call that replaced the finished query started: {}",
        model.started()
    );
}

#[tokio::test]
async fn identical_concurrent_queries_share_one_run() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::from_millis(100),
        vec![ScriptedModel::text("the one answer")],
    ));
    let engine = engine_with(corpus(), model.clone());
    let runs = (0..100).map(|_| {
        let engine = engine.clone();
        async move {
            let prepared = engine.prepare(question("Zephyr?"), None).await.unwrap();
            let sink = EventSink::discard(prepared.started);
            engine.run(prepared, sink, CancellationToken::new()).await
        }
    });
    let results = futures::future::join_all(runs).await;
    assert_eq!(model.requests().len(), 1, "one model call for 100 queries");
    let coalesced = results
        .iter()
        .filter(|result| result.as_ref().unwrap().coalesced)
        .count();
    assert_eq!(coalesced, 99);
    assert!(
        results
            .iter()
            .all(|result| result.as_ref().unwrap().answer == "the one answer")
    );
    let usage = engine.stats().await.unwrap().usage;
    assert_eq!(
        (usage.queries, usage.coalesced_queries, usage.llm_calls),
        (100, 99, 1)
    );
}

#[tokio::test]
async fn a_shared_run_outlives_its_leader_but_not_all_its_callers() {
    let model = Arc::new(GaugeModel::gated());
    let engine = engine_with(corpus(), model.clone());
    let zephyr = cache_key_of(&engine, "Zephyr?").await;
    let leader_cancel = CancellationToken::new();
    let leader = start_keyed(&engine, "Zephyr?", leader_cancel.clone());
    eventually("the leader's model call started", || model.started() == 1).await;
    let follower = start_keyed(&engine, "Zephyr?", CancellationToken::new());
    eventually("the follower joined", || callers_of(&engine, &zephyr) == 2).await;
    leader_cancel.cancel();
    assert!(matches!(leader.await.unwrap(), Err(EngineError::Cancelled)));
    model.release(1);
    let shared = tokio::time::timeout(HANG, follower)
        .await
        .expect("the follower got the run's outcome")
        .unwrap()
        .unwrap();
    assert!(shared.coalesced);
    assert_eq!(shared.answer, "answer");
    assert_eq!(model.started(), 1);

    // When every caller leaves, the run stops and its model call is dropped.
    let first_cancel = CancellationToken::new();
    let second_cancel = CancellationToken::new();
    let key = cache_key_of(&engine, "Klaxon?").await;
    let first = start_keyed(&engine, "Klaxon?", first_cancel.clone());
    eventually("the run's model call started", || model.in_flight() == 1).await;
    let second = start_keyed(&engine, "Klaxon?", second_cancel.clone());
    eventually("the second caller joined", || {
        callers_of(&engine, &key) == 2
    })
    .await;
    first_cancel.cancel();
    second_cancel.cancel();
    assert!(matches!(first.await.unwrap(), Err(EngineError::Cancelled)));
    assert!(matches!(second.await.unwrap(), Err(EngineError::Cancelled)));
    assert_run_stopped(&engine, &model, &key).await;
}

#[tokio::test]
async fn a_leader_dropped_mid_run_hands_the_run_on() {
    let model = Arc::new(GaugeModel::gated());
    let engine = engine_with(corpus(), model.clone());
    let zephyr = cache_key_of(&engine, "Zephyr?").await;

    // Dropped, not cancelled: its task is aborted, as a response stream is dropped.
    let leader = start_keyed(&engine, "Zephyr?", CancellationToken::new());
    eventually("the leader's model call started", || model.started() == 1).await;
    let follower = start_keyed(&engine, "Zephyr?", CancellationToken::new());
    eventually("the follower joined", || callers_of(&engine, &zephyr) == 2).await;
    leader.abort();
    assert!(leader.await.is_err_and(|error| error.is_cancelled()));
    model.release(1);
    let shared = tokio::time::timeout(HANG, follower)
        .await
        .expect("the follower got the run's outcome")
        .unwrap()
        .unwrap();
    assert!(shared.coalesced);
    assert_eq!(shared.answer, "answer");
    assert_eq!(model.started(), 1, "the run was not started again");

    // Alone, the dropped leader's run stops at once and is still accounted for.
    let before = engine.stats().await.unwrap().usage.queries;
    let key = cache_key_of(&engine, "Klaxon?").await;
    let leader = start_keyed(&engine, "Klaxon?", CancellationToken::new());
    eventually("the run's model call started", || model.in_flight() == 1).await;
    leader.abort();
    assert_run_stopped(&engine, &model, &key).await;
    assert_eq!(engine.stats().await.unwrap().usage.queries, before + 1);
}

/// The cache key, and so the flight, of a question.
async fn cache_key_of(engine: &Engine, text: &str) -> CacheKey {
    engine
        .prepare(question(text), None)
        .await
        .unwrap()
        .cache_key
}

/// Callers waiting for the run under `key`; 0 when there is none.
fn callers_of(engine: &Engine, key: &CacheKey) -> usize {
    engine
        .inner
        .flights
        .lock()
        .get(key)
        .map_or(0, |flight| flight.callers.load(Ordering::SeqCst))
}

/// Waits until every caller of the run under `key` has left and checks that its model call
/// was dropped and its flight is gone. The gated model never answers on its own, so its call
/// ends only by being dropped.
async fn assert_run_stopped(engine: &Engine, model: &GaugeModel, key: &CacheKey) {
    eventually("the model call was dropped", || model.in_flight() == 0).await;
    eventually("the flight ended", || {
        !engine.inner.flights.lock().contains_key(key)
    })
    .await;
}

fn start_keyed(
    engine: &Engine,
    text: &str,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<QueryResult, EngineError>> {
    let engine = engine.clone();
    let text = text.to_string();
    tokio::spawn(async move {
        let prepared = engine.prepare(question(&text), None).await.unwrap();
        let sink = EventSink::discard(prepared.started);
        engine.run(prepared, sink, cancel).await
    })
}
