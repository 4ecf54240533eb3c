//! The in-process embedder (`--embedder local`) behind the real server, with the offline
//! extractive loop: all-MiniLM-L6-v2 from `scripts/install-models.sh`.

use std::path::{Path, PathBuf};

use deeprecall::api::pb;
use deeprecall::config::EmbedderKind;

use crate::common::*;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("DEEPRECALL_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".models/all-minilm-l6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}: run scripts/install-models.sh",
        dir.display()
    );
    dir
}

/// Two hops in the handbook: the security policy says incidents go to Saoirse Lindqvist, her
/// page says she works in Tallinn. Asked in other words ("break-in by hackers" for "security
/// incidents"), word overlap leads elsewhere: BM25 and hashed vectors rank the expense policy
/// first ("report"), and the loop follows it to Ledgerline.
const QUESTION: &str = "In which city is the person based to whom we report a break-in by hackers?";

async fn answer_with(embedder: EmbedderKind) -> (pb::QueryResult, Vec<String>) {
    let mut server = TestServer::start_with(|config| {
        config.embedding.embedder = embedder;
        config.embedding.model_dir = Some(model_dir());
    })
    .await;
    ingest_handbook(&mut server.client).await;
    let events = query_events(&mut server.client, question(QUESTION)).await;
    let searches: Vec<String> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(pb::query_event::Event::Search(search)) => Some(search.query.clone()),
            _ => None,
        })
        .collect();
    let result = match events.last().and_then(|event| event.event.clone()) {
        Some(pb::query_event::Event::Result(result)) => result,
        other => panic!("no result: {other:?}"),
    };
    (result, searches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrased_two_hop_question_is_answered_by_meaning_and_missed_by_word_overlap() {
    let (local, searches) = answer_with(EmbedderKind::Local).await;
    assert!(local.answer.contains("Tallinn"), "{:?}", local.answer);
    assert!(
        local
            .citations
            .iter()
            .any(|id| id == "saoirse-lindqvist.md#0"),
        "{:?}",
        local.citations
    );
    // The loop followed the person the first search found into a second search.
    assert!(
        searches.iter().any(|query| query == "Saoirse Lindqvist"),
        "{searches:?}"
    );

    let (hashing, _) = answer_with(EmbedderKind::Hashing).await;
    assert!(!hashing.answer.contains("Tallinn"), "{:?}", hashing.answer);
}
