//! Asks the server one question in one mode and keeps what came back: the answer, its
//! citations, every id a search returned, the trace, the usage and the time it took.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dataset::Question;
use super::judge::JudgeVerdict;
use super::metrics::{self, Scores};
use crate::api::convert::json_to_struct;
use crate::api::pb;
use crate::cli::ServerClient;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The recursive loop.
    Loop,
    /// One search and one answer call.
    SinglePass,
}

impl Mode {
    /// The name used on the command line, in files and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Loop => "loop",
            Mode::SinglePass => "single-pass",
        }
    }

    fn to_proto(self) -> pb::QueryMode {
        match self {
            Mode::Loop => pb::QueryMode::Loop,
            Mode::SinglePass => pb::QueryMode::SinglePass,
        }
    }
}

/// One search of a run, as the trace streamed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchMade {
    /// Search text.
    pub query: String,
    /// Ids returned, best first.
    pub hits: Vec<String>,
}

/// One step of the result's reasoning trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    /// Iteration, from 1.
    pub step: u32,
    /// Tool, or `answer`.
    pub action: String,
    /// Arguments as JSON text.
    pub input: String,
    /// What came back.
    pub output: String,
}

/// One question asked in one mode: a line of `results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionRecord {
    /// The question's id.
    pub id: String,
    /// Its line in the dataset.
    pub line: usize,
    /// How it was answered.
    pub mode: Mode,
    /// The question.
    pub question: String,
    /// Accepted answers.
    pub answers: Vec<String>,
    /// Supporting ids.
    pub supporting_ids: Vec<String>,
    /// The answer; empty when the call failed.
    pub answer: String,
    /// Ids the answer cites.
    pub citations: Vec<String>,
    /// Every id a search of the run returned, first seen first.
    pub retrieved_ids: Vec<String>,
    /// Whether the run stopped early.
    pub partial: bool,
    /// Whether the call itself failed (no result); such a question scores 0.
    pub failed: bool,
    /// Why the run stopped early, or why the call failed.
    pub error: Option<String>,
    /// Whether the result came from the server's cache.
    pub cached: bool,
    /// Model calls, root and sub-model.
    pub model_calls: u32,
    /// Searches.
    pub searches: u32,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// US dollars.
    pub cost_usd: f64,
    /// Seconds from sending the request to the result, as the client saw them.
    pub latency_seconds: f64,
    /// The scores.
    pub scores: Scores,
    /// The judge's verdict, with `--judge`.
    pub judge: Option<JudgeVerdict>,
    /// The searches, in order.
    pub searches_made: Vec<SearchMade>,
    /// The result's reasoning trace.
    pub trace: Vec<TraceStep>,
}

impl QuestionRecord {
    /// The record of `question` in `mode` before any answer: nothing found, nothing spent.
    pub fn unanswered(question: &Question, mode: Mode) -> Self {
        QuestionRecord {
            id: question.id.clone(),
            line: question.line,
            mode,
            question: question.question.clone(),
            answers: question.answers.clone(),
            supporting_ids: question.supporting_ids.clone(),
            answer: String::new(),
            citations: Vec::new(),
            retrieved_ids: Vec::new(),
            partial: false,
            failed: false,
            error: None,
            cached: false,
            model_calls: 0,
            searches: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            latency_seconds: 0.0,
            scores: Scores::default(),
            judge: None,
            searches_made: Vec::new(),
            trace: Vec::new(),
        }
    }
}

/// What a question is asked with besides itself.
#[derive(Debug, Clone)]
pub struct AskSettings {
    /// Collection; empty is the server's default.
    pub collection: String,
    /// Passages per search; 0 is the server's default.
    pub top_k: u32,
    /// Lets the server answer from its result cache.
    pub use_cache: bool,
    /// Longest wait for one answer; sent as the gRPC deadline, which also bounds the run.
    pub timeout: Duration,
}

/// Asks `question` in `mode` and scores the answer. A failed call becomes a failed record.
pub async fn ask(
    mut client: ServerClient,
    question: &Question,
    mode: Mode,
    settings: &AskSettings,
) -> QuestionRecord {
    let mut request = tonic::Request::new(pb::QueryRequest {
        query: question.question.clone(),
        collection: settings.collection.clone(),
        top_k: settings.top_k,
        filters: question.filters.clone().map(json_to_struct),
        budget: question.budget.map(|budget| budget.to_proto()),
        skip_cache: !settings.use_cache,
        mode: mode.to_proto() as i32,
        ..pb::QueryRequest::default()
    });
    request.set_timeout(settings.timeout);
    let started = Instant::now();
    let mut searches_made = Vec::new();
    let outcome = async {
        let mut stream = client.query(request).await?.into_inner();
        let mut result = None;
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(pb::query_event::Event::Search(search)) => searches_made.push(SearchMade {
                    query: search.query,
                    hits: search.hits.into_iter().map(|hit| hit.id).collect(),
                }),
                Some(pb::query_event::Event::Result(found)) => result = Some(found),
                _ => {}
            }
        }
        result.ok_or_else(|| tonic::Status::internal("the stream ended without a result"))
    }
    .await;
    let latency_seconds = started.elapsed().as_secs_f64();
    let mut record = QuestionRecord::unanswered(question, mode);
    record.latency_seconds = latency_seconds;
    match outcome {
        Err(status) => {
            record.failed = true;
            record.error = Some(format!("{:?}: {}", status.code(), status.message()));
        }
        Ok(result) => {
            let usage = result.usage.unwrap_or_default();
            record.answer = result.answer;
            record.citations = result.citations;
            record.partial = result.partial;
            record.error = (!result.error.is_empty()).then_some(result.error);
            record.cached = result.cached;
            record.model_calls = usage.llm_calls;
            record.searches = usage.search_calls;
            record.input_tokens = usage.input_tokens;
            record.output_tokens = usage.output_tokens;
            record.cost_usd = usage.cost_usd;
            record.trace = result
                .reasoning_trace
                .into_iter()
                .map(|step| TraceStep {
                    step: step.step,
                    action: step.action,
                    input: step.input,
                    output: step.output,
                })
                .collect();
            // A cached result streams no search: its sources stand for what was retrieved.
            let sources = result.sources.into_iter().map(|source| source.id);
            for id in searches_made
                .iter()
                .flat_map(|search| search.hits.iter().cloned())
                .chain(sources)
            {
                if !record.retrieved_ids.contains(&id) {
                    record.retrieved_ids.push(id);
                }
            }
        }
    }
    record.searches_made = searches_made;
    record.scores = metrics::score(
        &record.answer,
        &record.answers,
        &record.citations,
        &record.retrieved_ids,
        &record.supporting_ids,
    );
    record
}
