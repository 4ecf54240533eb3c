//! The result and search caches as the engine uses them: what is kept, what is never served,
//! and what a cache key tells apart.

use super::*;

#[tokio::test]
async fn a_partial_result_is_never_served_from_the_cache() {
    let replies = || {
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
        ]
    };
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        replies().into_iter().chain(replies()).collect(),
    ));
    let engine = engine_with(corpus(), model.clone());
    let stopped_early = || {
        let mut request = question("Who manufactures the Zephyr blender?");
        request.budget.max_search_calls = Some(1);
        request
    };
    let (first, _) = run_collecting(&engine, stopped_early()).await;
    assert!(first.partial);
    let calls = model.requests().len();
    let (second, events) = run_collecting(&engine, stopped_early()).await;
    assert!(second.partial);
    assert!(!second.cached, "a partial result was served from the cache");
    assert!(model.requests().len() > calls, "the query ran again");
    assert!(events.len() > 1, "the second run streamed its own trace");
    let stats = engine.stats().await.unwrap();
    assert_eq!(stats.result_cache.hits, 0);
}

#[tokio::test]
async fn a_repeated_query_is_served_from_the_cache() {
    let engine = engine_with(corpus(), Arc::new(ExtractiveModel::default()));
    let (first, _) = run_collecting(&engine, question("Zephyr blender maker?")).await;
    let (second, events) = run_collecting(&engine, question("Zephyr blender maker?")).await;
    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(first.answer, second.answer);
    assert_eq!(events.len(), 1);

    let mut fresh = question("Zephyr blender maker?");
    fresh.skip_cache = true;
    let (third, _) = run_collecting(&engine, fresh).await;
    assert!(!third.cached);
}

#[tokio::test]
async fn a_repeated_search_is_served_from_the_search_cache_until_skipped() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("first"),
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("second"),
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("third"),
        ],
    ));
    let store = corpus();
    let engine = engine_with(store.clone(), model);
    let search_hit = |events: &[TraceEvent]| {
        events.iter().find_map(|event| match &event.kind {
            EventKind::Search(search) => Some(search.cache_hit),
            _ => None,
        })
    };
    let (_, first) = run_collecting(&engine, question("Who makes the Zephyr?")).await;
    let (second, events) = run_collecting(&engine, question("Which firm makes the Zephyr?")).await;
    assert_eq!(search_hit(&first), Some(false));
    assert_eq!(search_hit(&events), Some(true));
    assert_eq!(second.sources[0].id, "zephyr");
    assert_eq!(
        store.searches.lock().len(),
        1,
        "the store was searched once"
    );

    let mut fresh = question("And who makes the Zephyr?");
    fresh.skip_cache = true;
    let (_, events) = run_collecting(&engine, fresh).await;
    assert_eq!(search_hit(&events), Some(false));
    let stats = engine.stats().await.unwrap();
    assert_eq!((stats.search_cache.hits, stats.search_cache.misses), (1, 1));
}

#[tokio::test]
async fn a_store_ranking_otherwise_does_not_share_cached_searches() {
    let script = || {
        Arc::new(ScriptedModel::new(
            "scripted",
            Duration::ZERO,
            vec![
                ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
                ScriptedModel::text("done"),
            ],
        ))
    };
    let shared = memory_level("search");
    let engine_over = |store: Arc<MemoryStore>| {
        Engine::new(
            EngineParts {
                searches: shared.clone(),
                ..parts(store, script(), script())
            },
            EngineConfig::default(),
        )
    };
    let search_hit = |events: &[TraceEvent]| {
        events.iter().find_map(|event| match &event.kind {
            EventKind::Search(search) => Some(search.cache_hit),
            _ => None,
        })
    };
    let first = engine_over(corpus());
    let (_, events) = run_collecting(&first, question("Who makes the Zephyr?")).await;
    assert_eq!(search_hit(&events), Some(false));
    // The same store settings on another replica share the cached search...
    let (_, events) = run_collecting(&engine_over(corpus()), question("Who makes it?")).await;
    assert_eq!(search_hit(&events), Some(true));
    // ...and a store fusing its rankings otherwise does not.
    let mut reweighted = Arc::try_unwrap(corpus()).expect("one owner");
    reweighted.ranking = "rrf:k=10:vector_weight=3".into();
    let (_, events) = run_collecting(&engine_over(Arc::new(reweighted)), question("Who?")).await;
    assert_eq!(search_hit(&events), Some(false));
}

#[tokio::test]
async fn without_a_search_cache_every_search_reaches_the_store() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("done"),
        ],
    ));
    let store = corpus();
    let engine = Engine::new(
        EngineParts {
            searches: crate::cache::CacheLevel {
                name: "search",
                cache: Arc::new(crate::cache::NoCache),
                ttl: Duration::from_secs(60),
            },
            ..parts(store.clone(), model.clone(), model)
        },
        EngineConfig::default(),
    );

    let (result, events) = run_collecting(&engine, question("Who makes the Zephyr?")).await;

    let hits: Vec<bool> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Search(search) => Some(search.cache_hit),
            _ => None,
        })
        .collect();
    assert_eq!(hits, [false, false]);
    assert_eq!(
        store.searches.lock().len(),
        2,
        "both searches reached the store"
    );
    assert_eq!(result.sources[0].id, "zephyr");
}
