//! A query's admission and its end from outside the loop: the `top_k` limit, the caller's
//! deadline against the time budget, and the server shutting down.

use std::time::Instant;

use super::*;

/// An engine whose root model never answers.
fn engine_that_hangs_at_once() -> Engine {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![ScriptedReply::Hang],
    ));
    engine_with(corpus(), model)
}

#[tokio::test]
async fn top_k_is_accepted_up_to_the_limit_and_refused_past_it() {
    let engine = engine_with(corpus(), Arc::new(ExtractiveModel::default()));
    let limit = engine.config().max_top_k;
    let at_limit = QueryRequest {
        top_k: Some(limit),
        ..question("q")
    };
    let prepared = engine.prepare(at_limit, None).await.expect("at the limit");
    assert_eq!(prepared.top_k, limit);

    let past_limit = QueryRequest {
        top_k: Some(limit + 1),
        ..question("q")
    };
    match engine.prepare(past_limit, None).await {
        Err(EngineError::InvalidArgument { field, message }) => {
            assert_eq!(field, "top_k");
            assert!(message.contains(&limit.to_string()), "{message}");
        }
        other => panic!("expected top_k refused, got {other:?}"),
    }
}

#[tokio::test]
async fn the_configured_limits_are_the_ones_applied() {
    let config = EngineConfig {
        max_top_k: 7,
        default_top_k: 3,
        ..EngineConfig::default()
    };
    let engine = engine_of(
        Arc::new(ExtractiveModel::default()),
        Arc::new(ExtractiveModel::default()),
        config.clone(),
    );
    assert_eq!(engine.config(), &config);
    let defaulted = engine.prepare(question("q"), None).await.expect("prepared");
    assert_eq!(defaulted.top_k, 3);
    let over = QueryRequest {
        top_k: Some(8),
        ..question("q")
    };
    assert!(matches!(
        engine.prepare(over, None).await,
        Err(EngineError::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn a_deadline_inside_the_reserve_is_refused_before_anything_runs() {
    let engine = engine_that_hangs_at_once();
    let reserve = Duration::from_millis(engine.config().deadline_reserve_ms);
    let deadline = Instant::now() + reserve / 2;
    assert!(matches!(
        engine.prepare(question("q"), Some(deadline)).await,
        Err(EngineError::DeadlineExceeded(_))
    ));
    let passed = Instant::now();
    assert!(matches!(
        engine.prepare(question("q"), Some(passed)).await,
        Err(EngineError::DeadlineExceeded(_))
    ));
}

#[tokio::test]
async fn a_deadline_limits_the_time_budget_to_what_it_leaves() {
    let engine = engine_that_hangs_at_once();
    let mut request = question("q");
    request.budget.max_time = Some(Duration::from_secs(3600));
    let before = Instant::now();
    let prepared = engine
        .prepare(request, Some(before + HANG))
        .await
        .expect("a deadline far enough");
    let max_time = prepared.limits.max_time.expect("a time limit");
    assert!(max_time <= HANG, "{max_time:?}");
    assert!(prepared.deadline_bound);
}

#[tokio::test]
async fn a_deadline_that_stops_a_run_with_nothing_found_is_deadline_exceeded() {
    let engine = engine_that_hangs_at_once();
    let mut request = question("Zephyr blender maker?");
    // The deadline comes first: the caller hears it passed, not a partial answer of nothing.
    request.budget.max_time = Some(HANG * 6);
    // Generous enough that a loaded machine still prepares the query before it passes.
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let prepared = engine
        .prepare(request, Some(deadline))
        .await
        .expect("prepared");
    let (sink, _events) = EventSink::channel(64, prepared.started);
    let outcome = tokio::time::timeout(HANG, engine.run(prepared, sink, CancellationToken::new()))
        .await
        .expect("the deadline ended the run");
    // The run's leader shares its outcome with identical queries, so the error comes wrapped.
    match &outcome {
        Err(EngineError::Shared(error)) => {
            assert!(
                matches!(**error, EngineError::DeadlineExceeded(_)),
                "{outcome:?}"
            )
        }
        other => panic!("expected the deadline to pass, got {other:?}"),
    }
}

#[tokio::test]
async fn a_time_budget_shorter_than_the_deadline_ends_partial() {
    let engine = engine_that_hangs_at_once();
    let mut request = question("Zephyr blender maker?");
    // The budget comes first: its end is the run's own, answered with what it has.
    request.budget.max_time = Some(Duration::from_millis(300));
    let prepared = engine
        .prepare(request, Some(Instant::now() + HANG))
        .await
        .expect("prepared");
    assert!(!prepared.deadline_bound);
    let (sink, _events) = EventSink::channel(64, prepared.started);
    let result = tokio::time::timeout(HANG, engine.run(prepared, sink, CancellationToken::new()))
        .await
        .expect("the time budget ended the run")
        .expect("a partial result");
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Time));
}

#[tokio::test]
async fn aborting_runs_ends_the_running_ones_partial_and_refuses_new_ones() {
    let engine = engine_that_hangs_after_one_search();
    let prepared = engine
        .prepare(question("Zephyr blender maker?"), None)
        .await
        .expect("prepared");
    let (sink, mut events) = EventSink::channel(64, prepared.started);
    let running = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run(prepared, sink, CancellationToken::new()).await }
    });
    // The search is done once its step completes; the model hangs after that.
    tokio::time::timeout(HANG, async {
        while let Some(event) = events.recv().await {
            if matches!(event.kind, EventKind::StepCompleted { .. }) {
                return;
            }
        }
        panic!("the run ended before its first step completed");
    })
    .await
    .expect("the first step completed");

    engine.abort_runs();
    let result = tokio::time::timeout(HANG, running)
        .await
        .expect("the abort ended the run")
        .expect("the run did not panic")
        .expect("a partial result");
    assert!(result.partial);
    assert_eq!(result.error.as_deref(), Some("the server is shutting down"));
    assert_eq!(result.citations, vec!["zephyr"]);
    assert!(matches!(
        engine.prepare(question("q"), None).await,
        Err(EngineError::ShuttingDown)
    ));
}

#[tokio::test]
async fn a_batch_is_checked_against_its_size_and_concurrency_limits() {
    let engine = engine_with(corpus(), Arc::new(ExtractiveModel::default()));
    let config = engine.config().clone();
    assert_eq!(
        refused(engine.validate_batch(0, 1)),
        "queries",
        "an empty batch"
    );
    assert_eq!(
        refused(engine.validate_batch(config.max_batch_queries + 1, 1)),
        "queries"
    );
    assert_eq!(
        engine
            .validate_batch(config.max_batch_queries, 0)
            .expect("at the limit"),
        config.default_batch_concurrency
    );
    assert_eq!(
        refused(engine.validate_batch(1, config.max_batch_concurrency + 1)),
        "max_concurrency"
    );
    assert_eq!(
        engine
            .validate_batch(1, config.max_batch_concurrency)
            .expect("at the limit"),
        config.max_batch_concurrency
    );
    assert_eq!(engine.validate_batch(1, 2).expect("within"), 2);
}

fn refused(outcome: Result<usize, EngineError>) -> String {
    match outcome {
        Err(EngineError::InvalidArgument { field, .. }) => field,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}
