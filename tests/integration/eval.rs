//! `deeprecall eval` against the real server, and the single-pass query mode, with the scripted
//! mock model, whose every reply (and so every score, call and cost) is known in advance.

use std::path::Path;
use std::process::{Command, Output};

use deeprecall::api::pb;
use deeprecall::api::pb::query_event::Event;
use deeprecall::cli::eval::ask::{Mode, QuestionRecord};
use deeprecall::cli::eval::report::{JudgeSummary, ModeSummary, Summary};
use deeprecall::config::Backend;
use deeprecall::llm::mock_server::{MockLlmServer, MockReply, MockScript};
use serde_json::json;

use crate::common::*;

/// Tokens and dollars every scripted reply reports.
const TOKENS_IN: u64 = 100;
const TOKENS_OUT: u64 = 10;
const CALL_COST: f64 = 0.001;
const JUDGE_COST: f64 = 0.002;

const ZEPHYR: &str = "Where is the maker of the Zephyr blender headquartered?";
const BRAMBLE_CITY: &str = "Which city is Bramble Works based in?";
const BRAMBLE_FOUNDER: &str = "Who founded Bramble Works?";
/// The start of the judge's user message, which no engine prompt contains.
const JUDGE_MARKER: &str = "Accepted answers for the question below";

fn costed(reply: MockReply, cost: f64) -> MockReply {
    MockReply::Usage {
        reply: Box::new(reply),
        input_tokens: TOKENS_IN,
        output_tokens: TOKENS_OUT,
        cost_usd: Some(cost),
    }
}

fn search(query: &str) -> MockReply {
    costed(
        MockReply::tool_call("search_db", json!({ "query": query }).to_string()),
        CALL_COST,
    )
}

fn submit(answer: &str, citations: &[&str]) -> MockReply {
    costed(
        MockReply::tool_call(
            "submit",
            json!({"answer": answer, "citations": citations, "certainty": 0.9}).to_string(),
        ),
        CALL_COST,
    )
}

fn text(answer: &str) -> MockReply {
    costed(MockReply::text(answer), CALL_COST)
}

fn verdict(reply: &str) -> MockReply {
    costed(MockReply::text(reply), JUDGE_COST)
}

/// The server of the model tests (zephyr and klaxon), with one more document.
async fn server_for(mock: &MockLlmServer) -> TestServer {
    let mut server = crate::models::server_for(mock, Backend::Openai).await;
    add(
        &mut server.client,
        "",
        vec![document(
            "bramble",
            "Bramble Works is headquartered in Oslo.",
            json!({}),
        )],
    )
    .await;
    server
}

/// Runs the real binary off the test's runtime (the server runs on it).
async fn deeprecall(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deeprecall"));
    command
        .args(&args)
        .envs(env)
        .env_remove("DEEPRECALL_CONFIG");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the runner does not panic")
        .expect("the binary starts")
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

fn close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what} is undefined"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual} is not {expected}"
    );
}

fn read_summary(dir: &Path) -> Summary {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary parses")
}

fn read_records(dir: &Path) -> Vec<QuestionRecord> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .expect("results.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("record parses"))
        .collect()
}

#[tokio::test]
async fn eval_scores_both_modes_and_the_judge_exactly() {
    // Each conversation answers its question first in the loop, then in the single pass: the
    // modes run one after the other, and one question at a time.
    let script = MockScript::default()
        .with_conversation(
            JUDGE_MARKER,
            vec![
                verdict("VERDICT: correct\nREASON: Porto"),
                verdict("VERDICT: partial\nREASON: wordy"),
                verdict("VERDICT: incorrect\nREASON: no founder"),
                verdict("VERDICT: incorrect\nREASON: the maker, not the city"),
                verdict("VERDICT: correct\nREASON: Oslo"),
                verdict("I cannot tell."),
            ],
        )
        .with_conversation(
            ZEPHYR,
            vec![
                search("Zephyr blender maker"),
                search("Klaxon Industries"),
                submit("Porto [klaxon]", &["klaxon", "zephyr"]),
                submit("Klaxon Industries [zephyr]", &["zephyr"]),
            ],
        )
        .with_conversation(
            BRAMBLE_CITY,
            vec![
                search("Bramble Works"),
                text("Bramble Works is in Oslo [bramble] [made-up]."),
                text("Oslo"),
            ],
        )
        .with_conversation(
            BRAMBLE_FOUNDER,
            vec![
                search("Bramble Works founder"),
                // The summing-up call of the run that ran out of iterations.
                text("The passages do not say who founded Bramble Works."),
                text("Nobody is named."),
            ],
        );
    let mock = MockLlmServer::start(script).await.expect("mock starts");
    let server = server_for(&mock).await;

    let work = tempfile::tempdir().expect("temporary directory");
    let dataset = work.path().join("questions.jsonl");
    let lines = [
        json!({"id": "zephyr-city", "question": ZEPHYR, "answers": ["Porto"],
               "supporting_ids": ["zephyr", "klaxon"]}),
        json!({"id": "bramble-city", "question": BRAMBLE_CITY, "answers": ["Oslo", "Oslo, Norway"],
               "supporting_ids": ["bramble"]}),
        json!({"id": "bramble-founder", "question": BRAMBLE_FOUNDER, "answers": ["Ada Lund"],
               "budget": {"max_iterations": 1}}),
    ];
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&dataset, text).expect("dataset written");
    let out = work.path().join("out");

    let output = deeprecall(
        strings(&[
            "eval",
            "--dataset",
            &dataset.display().to_string(),
            "--server",
            &server.endpoint,
            "--mode",
            "both",
            "--concurrency",
            "1",
            "--out",
            &out.display().to_string(),
            "--judge",
            "--judge-backend",
            "openai",
            "--judge-model",
            "judge-model",
            "--judge-base-url",
            &mock.base_url(),
        ]),
        vec![("DEEPRECALL_LLM_API_KEY", "test-key".to_string())],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "eval failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("| metric | loop | single-pass |"),
        "{stdout}"
    );
    assert!(stdout.contains("| token F1 | 0.444 | 0.333 |"), "{stdout}");

    let summary = read_summary(&out);
    assert_eq!(summary.questions, 3);
    let check = |summary: &ModeSummary, expected: [f64; 6]| {
        close(Some(summary.exact_match), expected[0], "exact match");
        close(Some(summary.f1), expected[1], "F1");
        close(Some(summary.contains), expected[2], "contains");
        close(
            summary.citation_precision,
            expected[3],
            "citation precision",
        );
        close(summary.supporting_recall_cited, expected[4], "recall cited");
        close(
            summary.supporting_recall_retrieved,
            expected[5],
            "recall retrieved",
        );
    };
    let looped = &summary.modes[&Mode::Loop];
    // zephyr: exact; bramble-city: "bramble works is in oslo" against "oslo", F1 1/3;
    // bramble-founder: partial, nothing right, no supporting ids.
    check(looped, [1.0 / 3.0, 4.0 / 9.0, 2.0 / 3.0, 1.0, 1.0, 1.0]);
    assert_eq!(looped.citation_precision_questions, 2);
    assert_eq!(looped.supporting_questions, 2);
    close(Some(looped.partial_rate), 1.0 / 3.0, "partial rate");
    assert_eq!((looped.model_calls, looped.searches), (7, 4));
    assert_eq!(looped.tokens, 7 * (TOKENS_IN + TOKENS_OUT));
    close(Some(looped.cost_usd), 7.0 * CALL_COST, "loop cost");
    assert_eq!(looped.failed, 0);

    let single = &summary.modes[&Mode::SinglePass];
    // zephyr: wrong answer citing one of two supporting ids; bramble-city: exact, uncited.
    check(single, [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 1.0, 0.25, 1.0]);
    assert_eq!(single.citation_precision_questions, 1);
    close(Some(single.partial_rate), 0.0, "partial rate");
    assert_eq!((single.model_calls, single.searches), (3, 3));
    close(Some(single.cost_usd), 3.0 * CALL_COST, "single-pass cost");

    // The judge's verdicts and cost stand apart from the server's.
    let counts = |judged: &JudgeSummary| {
        (
            judged.correct,
            judged.partial,
            judged.incorrect,
            judged.ungraded,
        )
    };
    let judged = looped.judge.as_ref().expect("loop judged");
    assert_eq!(judged.model, "judge-model");
    assert_eq!(counts(judged), (1, 1, 1, 0));
    close(judged.score, 0.5, "loop judge score");
    close(Some(judged.cost_usd), 3.0 * JUDGE_COST, "loop judge cost");
    let judged = single.judge.as_ref().expect("single pass judged");
    assert_eq!(counts(judged), (1, 0, 1, 1));
    close(judged.score, 0.5, "single-pass judge score");

    let records = read_records(&out);
    assert_eq!(records.len(), 6);
    let zephyr = &records[0];
    assert_eq!(
        (zephyr.id.as_str(), zephyr.mode),
        ("zephyr-city", Mode::Loop)
    );
    assert_eq!(zephyr.answer, "Porto [klaxon]");
    assert_eq!(zephyr.citations, strings(&["klaxon", "zephyr"]));
    assert_eq!(zephyr.searches_made.len(), 2);
    assert_eq!(
        zephyr.trace.last().map(|step| step.action.as_str()),
        Some("submit")
    );
    let bramble = &records[1];
    // The unknown [made-up] the model wrote leaves the text as it leaves the citations.
    assert_eq!(bramble.answer, "Bramble Works is in Oslo [bramble].");
    assert_eq!(bramble.scores.best_answer, "Oslo");
    let founder = &records[2];
    assert!(founder.partial);
    assert!(
        founder
            .error
            .as_deref()
            .is_some_and(|e| e.contains("max_iterations"))
    );
    assert_eq!(founder.scores.citation_precision, None);
    assert_eq!(records[3].mode, Mode::SinglePass);

    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(
        report.contains("| zephyr-city | single-pass | 0 | 0.000 | 0 |"),
        "{report}"
    );
    // Six root-model requests for the questions of each mode, and six for the judge.
    assert_eq!(mock.request_count(), 10 + 6);
}

#[tokio::test]
async fn single_pass_makes_exactly_one_search_and_one_model_call() {
    let mock = MockLlmServer::start(MockScript::replies(vec![submit(
        "Porto [klaxon]",
        &["klaxon"],
    )]))
    .await
    .expect("mock starts");
    let mut server = server_for(&mock).await;
    let events = query_events(
        &mut server.client,
        pb::QueryRequest {
            mode: pb::QueryMode::SinglePass as i32,
            ..question("Where is Klaxon Industries headquartered?")
        },
    )
    .await;

    let searches: Vec<&pb::SearchEvent> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(Event::Search(search)) => Some(search),
            _ => None,
        })
        .collect();
    assert_eq!(searches.len(), 1);
    assert_eq!(
        searches[0].query,
        "Where is Klaxon Industries headquartered?"
    );
    let model_calls = events
        .iter()
        .filter(|event| matches!(event.event, Some(Event::LlmCall(_))))
        .count();
    assert_eq!(model_calls, 1);
    let Some(Event::Result(result)) = events.last().and_then(|event| event.event.clone()) else {
        panic!("no result at the end");
    };
    assert_eq!(result.answer, "Porto [klaxon]");
    assert_eq!(result.citations, vec!["klaxon"]);
    assert!(!result.partial);
    let usage = result.usage.expect("usage");
    assert_eq!((usage.llm_calls, usage.search_calls), (1, 1));

    // At the mock: one request, which offers `submit` alone and shows the search's hits.
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let tools = requests[0].body["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["function"]["name"], "submit");
    let messages = requests[0].body["messages"].as_array().expect("messages");
    let hits = messages.last().expect("a last message");
    assert_eq!(hits["role"], "tool");
    assert!(
        hits["content"]
            .as_str()
            .is_some_and(|c| c.contains("klaxon"))
    );
}

#[tokio::test]
async fn single_pass_with_the_offline_reader_answers_from_one_search() {
    let mut server = TestServer::start().await;
    ingest_handbook(&mut server.client).await;
    let request = pb::QueryRequest {
        mode: pb::QueryMode::SinglePass as i32,
        ..question("Which city is Kestrel Fabrication headquartered in?")
    };
    let result = query_result(&mut server.client, request).await;
    let usage = result.usage.expect("usage");
    assert_eq!((usage.llm_calls, usage.search_calls), (1, 1));
    assert!(result.answer.contains("Tampere"), "{}", result.answer);
    assert_eq!(result.citations, vec!["kestrel-fabrication.md#0"]);

    // The loop asks the same question in more than one call.
    let looped = query_result(
        &mut server.client,
        question("Which city is Kestrel Fabrication headquartered in?"),
    )
    .await;
    assert!(looped.usage.expect("usage").llm_calls > 1);
}

#[tokio::test]
async fn an_unknown_query_mode_is_refused() {
    let mut server = TestServer::start().await;
    let status = server
        .client
        .query(pb::QueryRequest {
            mode: 7,
            ..question("Where?")
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("mode:"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_bad_dataset_is_refused_with_its_line_numbers_before_any_question() {
    let work = tempfile::tempdir().expect("temporary directory");
    let dataset = work.path().join("bad.jsonl");
    std::fs::write(
        &dataset,
        "{\"question\": \"Where?\", \"answers\": [\"Porto\"]}\n\n{\"question\": \"Who?\"}\n",
    )
    .expect("dataset written");
    // No server listens there: the dataset is refused before any connection.
    let output = deeprecall(
        strings(&[
            "eval",
            "--dataset",
            &dataset.display().to_string(),
            "--server",
            "http://127.0.0.1:9",
        ]),
        Vec::new(),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3: missing field `answers`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_judge_that_cannot_grade_is_refused_before_any_question() {
    let dataset = examples().join("questions.json");
    // No server listens there, and the offline reader cannot grade.
    let output = deeprecall(
        strings(&[
            "eval",
            "--dataset",
            &dataset.display().to_string(),
            "--server",
            "http://127.0.0.1:9",
            "--judge",
            "--judge-backend",
            "extractive",
        ]),
        Vec::new(),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--judge needs a model that can grade"),
        "{stderr}"
    );
}
