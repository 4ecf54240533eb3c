//! Budgets: searches, iterations, tokens, time and dollars, each checked before the call it
//! would overrun, sub-model calls planned against them like root calls.

use super::*;

#[tokio::test]
async fn the_search_budget_ends_the_run_with_a_partial_answer() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
        ],
    ));
    let engine = engine_with(corpus(), model);
    let mut request = question("Who manufactures the Zephyr blender?");
    request.budget.max_search_calls = Some(1);
    let (result, events) = run_collecting(&engine, request).await;

    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::SearchCalls));
    assert!(
        result
            .error
            .as_deref()
            .unwrap_or("")
            .contains("max_search_calls")
    );
    assert_eq!(result.citations, vec!["zephyr"]);
    assert!(result.answer.contains("Klaxon Industries"));
    assert_eq!(result.usage.search_calls, 1);
    assert_eq!(
        result.usage.llm_calls(),
        2,
        "usage is reported for the stopped run"
    );
    assert!(events.iter().any(|event| matches!(
        &event.kind,
        EventKind::BudgetWarning(warning) if warning.resource == BudgetResource::SearchCalls
    )));
}

#[tokio::test]
async fn the_iteration_budget_is_checked_before_each_model_call() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
            ScriptedModel::text("Klaxon makes it [zephyr], as far as the search got."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr?");
    request.budget.max_iterations = Some(2);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Iterations));
    assert_eq!(result.budget.used.iterations, 2);

    // The third call is not an iteration but the one summing-up call, without tools.
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[2].tools.is_empty());
    assert!(requests[2].messages[1].content.contains("[zephyr]"));
    assert_eq!(
        result.answer,
        "Klaxon makes it [zephyr], as far as the search got."
    );
    assert_eq!(result.citations, vec!["zephyr"]);
    assert_eq!(
        result.usage.llm_calls(),
        3,
        "the summing-up call is counted"
    );
}

#[tokio::test]
async fn a_token_budget_too_small_for_the_next_prompt_stops_before_the_call() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedReply::Respond(crate::llm::ChatResponse {
                content: String::new(),
                tool_calls: vec![crate::llm::ToolCall {
                    id: "c".into(),
                    name: "search_db".into(),
                    arguments: json!({"query": "zephyr"}).to_string(),
                }],
                usage: crate::llm::TokenUsage {
                    input_tokens: 850,
                    output_tokens: 50,
                },
                cost_usd: None,
            }),
            ScriptedModel::text("never asked"),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr blender?");
    // The first call fits; it reports 900 tokens, and the second prompt (system prompt, tools
    // and a search result, several hundred tokens) cannot fit in the 100 left.
    request.budget.max_tokens = Some(1_000);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Tokens));
    assert_eq!(
        model.requests().len(),
        1,
        "the call that could not fit was not made"
    );
    assert_eq!(result.usage.llm_calls(), 1);
    assert_eq!(result.budget.used.tokens, 900);
}

#[tokio::test]
async fn completions_are_capped_to_the_token_budget_left() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![ScriptedModel::text("done")],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr?");
    request.budget.max_tokens = Some(2_000);
    run_collecting(&engine, request).await;
    let sent = &model.requests()[0];
    // The prompt is estimated at a token per four characters of every message, with four
    // tokens of framing each, and of every tool's name, description and schema.
    use crate::llm::estimate_tokens;
    let messages: u64 = sent
        .messages
        .iter()
        .map(|message| 4 + estimate_tokens(&message.content))
        .sum();
    let tools: u64 = sent
        .tools
        .iter()
        .map(|tool| {
            estimate_tokens(tool.name)
                + estimate_tokens(tool.description)
                + estimate_tokens(&tool.parameters.to_string())
        })
        .sum();
    assert!(messages > 100 && tools > 100, "{messages} {tools}");
    let cap = u64::from(sent.max_tokens.expect("a cap"));
    assert_eq!(cap, 2_000 - messages - tools);
}

#[tokio::test]
async fn listed_prices_give_the_cost_of_models_that_report_none() {
    let model = Arc::new(ScriptedModel::new(
        "priced",
        Duration::ZERO,
        vec![ScriptedReply::Respond(crate::llm::ChatResponse {
            content: "done".into(),
            tool_calls: Vec::new(),
            usage: crate::llm::TokenUsage {
                input_tokens: 1_000,
                output_tokens: 100,
            },
            cost_usd: None,
        })],
    ));
    let engine = Engine::new(
        EngineParts {
            prices: crate::llm::PriceTable::new(vec![("priced".into(), 2.0, 10.0)]),
            ..parts(corpus(), model.clone(), model)
        },
        EngineConfig::default(),
    );
    let (result, _) = run_collecting(&engine, question("Zephyr?")).await;
    // 1,000 × $2/M + 100 × $10/M = $0.003
    assert!((result.usage.cost_usd() - 0.003).abs() < 1e-9);
    assert!((result.budget.used.cost_usd - 0.003).abs() < 1e-9);
}

#[tokio::test]
async fn the_time_budget_aborts_a_hanging_model_call() {
    let engine = engine_that_hangs_after_one_search();
    let mut request = question("Zephyr blender maker?");
    request.budget.max_time = Some(Duration::from_millis(200));
    // The model never answers: only the time budget can end the run.
    let (result, _) = tokio::time::timeout(HANG, run_collecting(&engine, request))
        .await
        .expect("the time budget ended the run");
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Time));
    assert_eq!(result.citations, vec!["zephyr"]);
}

#[tokio::test]
async fn a_sub_model_call_is_planned_against_the_tokens_left() {
    let root = Arc::new(ScriptedModel::new(
        "root",
        Duration::ZERO,
        vec![
            ScriptedModel::tool(
                "llm_query_batched",
                json!({"prompts": ["digest the zephyr passage", "and the klaxon one"]}),
            ),
            ScriptedModel::text("done"),
        ],
    ));
    let sub = Arc::new(ScriptedModel::new(
        "sub",
        Duration::ZERO,
        vec![ScriptedModel::text("a"), ScriptedModel::text("b")],
    ));
    let engine = engine_of(root, sub.clone(), EngineConfig::default());
    let mut request = question("Digest?");
    request.budget.max_tokens = Some(2_000);
    run_collecting(&engine, request).await;

    // The root call used 120 tokens. The two prompts, each with the sub-model's system
    // prompt, and room for the first one's minimal completion, are planned against the rest,
    // and the completion cap left is shared between them.
    use crate::llm::estimate_tokens;
    let system = estimate_tokens(prompts::sub_model_system_prompt());
    let planned = estimate_tokens("digest the zephyr passage")
        + estimate_tokens("and the klaxon one")
        + 2 * system
        + budget::MIN_COMPLETION_TOKENS;
    let each = u32::try_from((2_000 - 120 - planned) / 2).unwrap();
    let caps: Vec<Option<u32>> = sub
        .requests()
        .iter()
        .map(|request| request.max_tokens)
        .collect();
    assert_eq!(caps, [Some(each), Some(each)]);
}

#[tokio::test]
async fn a_batched_call_reserves_a_minimal_completion_for_each_prompt_but_the_first() {
    let root = Arc::new(ScriptedModel::new(
        "root",
        Duration::ZERO,
        vec![
            ScriptedModel::tool(
                "llm_query_batched",
                json!({"prompts": ["one", "two", "three"]}),
            ),
            ScriptedModel::text("done"),
        ],
    ));
    let sub = Arc::new(ScriptedModel::new(
        "sub",
        Duration::ZERO,
        vec![
            ScriptedModel::text("a"),
            ScriptedModel::text("b"),
            ScriptedModel::text("c"),
        ],
    ));
    let engine = engine_of(root, sub.clone(), EngineConfig::default());
    let mut request = question("Digest?");
    request.budget.max_tokens = Some(2_000);
    let (_, events) = run_collecting(&engine, request).await;

    use crate::llm::estimate_tokens;
    let system = estimate_tokens(prompts::sub_model_system_prompt());
    let planned = ["one", "two", "three"]
        .iter()
        .map(|prompt| estimate_tokens(prompt) + system)
        .sum::<u64>()
        + 2 * budget::MIN_COMPLETION_TOKENS;
    let each = u32::try_from((2_000 - 120 - planned) / 3).unwrap();
    let caps: Vec<Option<u32>> = sub
        .requests()
        .iter()
        .map(|request| request.max_tokens)
        .collect();
    assert_eq!(caps, [Some(each), Some(each), Some(each)]);
    // The call's record adds up its prompts' usage.
    assert!(events.iter().any(|event| matches!(
        &event.kind,
        EventKind::SubLlmCall(record) if record.prompts == 3 && record.failed == 0
            && record.input_tokens == 300 && record.output_tokens == 60
            && (record.cost_usd - 0.003).abs() < 1e-12
    )));
}

#[tokio::test]
async fn a_run_that_stopped_with_nothing_found_is_not_summed_up() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr"})),
            ScriptedModel::text("A summary of nothing."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Zephyr blender maker?");
    request.budget.max_search_calls = Some(0);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::SearchCalls));
    // There is nothing to sum up from: no second call, and no summary.
    assert_eq!(model.requests().len(), 1);
    assert_ne!(result.answer, "A summary of nothing.");
    assert!(result.citations.is_empty());
}

#[tokio::test]
async fn a_run_that_stopped_with_passages_is_summed_up_by_the_model_in_one_call() {
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::ZERO,
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
            ScriptedModel::text("Klaxon makes it [zephyr] [invented]."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Who manufactures the Zephyr blender?");
    request.budget.max_search_calls = Some(1);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(result.answer, "Klaxon makes it [zephyr].");
    assert_eq!(result.citations, vec!["zephyr"]);
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    let summing_up = &requests[2];
    assert!(summing_up.tools.is_empty());
    assert_eq!(
        summing_up.messages[0].content,
        prompts::synthesis_system_prompt()
    );
    assert!(summing_up.messages[1].content.contains("[zephyr]"));
}

#[tokio::test]
async fn a_model_that_writes_no_summaries_is_not_asked_to_sum_up() {
    let model = Arc::new(
        ScriptedModel::new(
            "scripted",
            Duration::ZERO,
            vec![
                ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
                ScriptedModel::tool("search_db", json!({"query": "klaxon"})),
                ScriptedModel::text("A summary."),
            ],
        )
        .without_summaries(),
    );
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Who manufactures the Zephyr blender?");
    request.budget.max_search_calls = Some(1);
    let (result, _) = run_collecting(&engine, request).await;
    assert!(result.partial);
    assert_eq!(model.requests().len(), 2);
    assert_ne!(result.answer, "A summary.");
    assert_eq!(result.citations, vec!["zephyr"]);
}

#[tokio::test]
async fn a_run_with_no_time_left_for_a_summary_stitches_its_answer() {
    // Each call takes 400 ms and the run has 600: after the first, neither a second call nor
    // a summing-up call fits. A slower machine only leaves less time.
    let model = Arc::new(ScriptedModel::new(
        "scripted",
        Duration::from_millis(400),
        vec![
            ScriptedModel::tool("search_db", json!({"query": "zephyr blender"})),
            ScriptedModel::text("A summary."),
        ],
    ));
    let engine = engine_with(corpus(), model.clone());
    let mut request = question("Who manufactures the Zephyr blender?");
    request.budget.max_time = Some(Duration::from_millis(600));
    let (result, _) = tokio::time::timeout(HANG, run_collecting(&engine, request))
        .await
        .expect("the run ended");
    assert!(result.partial);
    assert_eq!(result.budget.exhausted, Some(BudgetResource::Time));
    assert_eq!(model.requests().len(), 1);
    assert_ne!(result.answer, "A summary.");
    assert_eq!(result.citations, vec!["zephyr"]);
}
