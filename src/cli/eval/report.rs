//! Totals per mode, the Markdown table, and the files of a run: `report.md`, `results.jsonl`
//! and `summary.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ask::{Mode, QuestionRecord};
use super::judge::Verdict;
use super::metrics::{mean_of, percentile};
use crate::cli::CliError;

/// The totals of one mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModeSummary {
    /// Questions asked.
    pub questions: usize,
    /// Questions whose call failed (they score 0).
    pub failed: usize,
    /// Mean exact match.
    pub exact_match: f64,
    /// Mean token F1.
    pub f1: f64,
    /// Mean answer-contains.
    pub contains: f64,
    /// Mean citation precision over the questions where it is defined.
    pub citation_precision: Option<f64>,
    /// Questions with supporting ids and at least one citation.
    pub citation_precision_questions: usize,
    /// Mean share of supporting ids cited, over questions with supporting ids.
    pub supporting_recall_cited: Option<f64>,
    /// Mean share of supporting ids retrieved, over questions with supporting ids.
    pub supporting_recall_retrieved: Option<f64>,
    /// Questions with supporting ids.
    pub supporting_questions: usize,
    /// Share of questions answered partially.
    pub partial_rate: f64,
    /// Model calls in all.
    pub model_calls: u64,
    /// Searches in all.
    pub searches: u64,
    /// Tokens in all, input and output.
    pub tokens: u64,
    /// US dollars in all.
    pub cost_usd: f64,
    /// Median latency in seconds.
    pub latency_p50_seconds: Option<f64>,
    /// 95th percentile latency in seconds.
    pub latency_p95_seconds: Option<f64>,
    /// The judge's totals, with `--judge`.
    pub judge: Option<JudgeSummary>,
}

/// The judge's totals of one mode, apart from the server's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeSummary {
    /// The judge model.
    pub model: String,
    /// Mean worth of the verdicts given (correct 1, partial 0.5, incorrect 0).
    pub score: Option<f64>,
    /// Verdicts `correct`.
    pub correct: usize,
    /// Verdicts `partial`.
    pub partial: usize,
    /// Verdicts `incorrect`.
    pub incorrect: usize,
    /// Replies without a verdict, and failed calls.
    pub ungraded: usize,
    /// Tokens the judge used.
    pub tokens: u64,
    /// US dollars the judge cost.
    pub cost_usd: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The dataset file.
    pub dataset: String,
    /// Questions in it.
    pub questions: usize,
    /// The collection asked about; empty is the server's default.
    pub collection: String,
    /// Totals by mode.
    pub modes: BTreeMap<Mode, ModeSummary>,
}

/// Totals of the records of one mode.
pub fn summarize(records: &[&QuestionRecord], judge_model: Option<&str>) -> ModeSummary {
    let count = records.len();
    let mean = |value: fn(&QuestionRecord) -> f64| {
        if count == 0 {
            0.0
        } else {
            records.iter().map(|record| value(record)).sum::<f64>() / count as f64
        }
    };
    let (citation_precision, citation_precision_questions) =
        mean_of(records.iter().map(|r| r.scores.citation_precision));
    let (supporting_recall_cited, supporting_questions) =
        mean_of(records.iter().map(|r| r.scores.supporting_recall_cited));
    let (supporting_recall_retrieved, _) =
        mean_of(records.iter().map(|r| r.scores.supporting_recall_retrieved));
    let latencies: Vec<f64> = records.iter().map(|r| r.latency_seconds).collect();
    ModeSummary {
        questions: count,
        failed: records.iter().filter(|r| r.failed).count(),
        exact_match: mean(|r| r.scores.exact_match),
        f1: mean(|r| r.scores.f1),
        contains: mean(|r| r.scores.contains),
        citation_precision,
        citation_precision_questions,
        supporting_recall_cited,
        supporting_recall_retrieved,
        supporting_questions,
        partial_rate: mean(|r| f64::from(u8::from(r.partial))),
        model_calls: records.iter().map(|r| u64::from(r.model_calls)).sum(),
        searches: records.iter().map(|r| u64::from(r.searches)).sum(),
        tokens: records
            .iter()
            .map(|r| r.input_tokens + r.output_tokens)
            .sum(),
        cost_usd: records.iter().map(|r| r.cost_usd).sum(),
        latency_p50_seconds: percentile(&latencies, 50.0),
        latency_p95_seconds: percentile(&latencies, 95.0),
        judge: judge_model.map(|model| judge_summary(model, records)),
    }
}

fn judge_summary(model: &str, records: &[&QuestionRecord]) -> JudgeSummary {
    let verdicts: Vec<_> = records.iter().filter_map(|r| r.judge.as_ref()).collect();
    let count = |verdict: Verdict| verdicts.iter().filter(|v| v.verdict == verdict).count();
    JudgeSummary {
        model: model.to_string(),
        score: mean_of(verdicts.iter().map(|v| v.verdict.score())).0,
        correct: count(Verdict::Correct),
        partial: count(Verdict::Partial),
        incorrect: count(Verdict::Incorrect),
        ungraded: count(Verdict::Unparsed) + count(Verdict::Failed),
        tokens: verdicts
            .iter()
            .map(|v| v.input_tokens + v.output_tokens)
            .sum(),
        cost_usd: verdicts.iter().map(|v| v.cost_usd).sum(),
    }
}

/// A score with three decimals, or `–` when undefined.
pub fn score_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |value| format!("{value:.3}"))
}

fn seconds_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |value| format!("{value:.3} s"))
}

fn per_question(total: f64, questions: usize) -> String {
    if questions == 0 {
        "–".to_string()
    } else {
        format!("{:.1}", total / questions as f64)
    }
}

/// The totals as a Markdown table, one column per mode.
pub fn summary_table(summary: &Summary) -> String {
    let modes: Vec<(&Mode, &ModeSummary)> = summary.modes.iter().collect();
    let mut rows: Vec<(&str, Vec<String>)> = vec![
        ("questions", cells(&modes, |s| s.questions.to_string())),
        (
            "exact match",
            cells(&modes, |s| score_cell(Some(s.exact_match))),
        ),
        ("token F1", cells(&modes, |s| score_cell(Some(s.f1)))),
        (
            "answer contains",
            cells(&modes, |s| score_cell(Some(s.contains))),
        ),
        (
            "citation precision",
            cells(&modes, |s| score_cell(s.citation_precision)),
        ),
        (
            "supporting recall (cited)",
            cells(&modes, |s| score_cell(s.supporting_recall_cited)),
        ),
        (
            "supporting recall (retrieved)",
            cells(&modes, |s| score_cell(s.supporting_recall_retrieved)),
        ),
        (
            "partial rate",
            cells(&modes, |s| score_cell(Some(s.partial_rate))),
        ),
        ("failed", cells(&modes, |s| s.failed.to_string())),
        (
            "model calls / question",
            cells(&modes, |s| per_question(s.model_calls as f64, s.questions)),
        ),
        (
            "searches / question",
            cells(&modes, |s| per_question(s.searches as f64, s.questions)),
        ),
        (
            "tokens / question",
            cells(&modes, |s| per_question(s.tokens as f64, s.questions)),
        ),
        (
            "cost (USD)",
            cells(&modes, |s| format!("{:.4}", s.cost_usd)),
        ),
        (
            "latency p50",
            cells(&modes, |s| seconds_cell(s.latency_p50_seconds)),
        ),
        (
            "latency p95",
            cells(&modes, |s| seconds_cell(s.latency_p95_seconds)),
        ),
    ];
    if modes.iter().any(|(_, s)| s.judge.is_some()) {
        let judge = |s: &ModeSummary, cell: fn(&JudgeSummary) -> String| {
            s.judge.as_ref().map_or_else(|| "–".to_string(), cell)
        };
        rows.push((
            "judge score",
            cells(&modes, |s| judge(s, |j| score_cell(j.score))),
        ));
        rows.push((
            "judge correct / partial / incorrect / ungraded",
            cells(&modes, |s| {
                judge(s, |j| {
                    format!(
                        "{} / {} / {} / {}",
                        j.correct, j.partial, j.incorrect, j.ungraded
                    )
                })
            }),
        ));
        rows.push((
            "judge cost (USD)",
            cells(&modes, |s| judge(s, |j| format!("{:.4}", j.cost_usd))),
        ));
    }
    let mut table = String::from("| metric |");
    for (mode, _) in &modes {
        let _ = write!(table, " {} |", mode.name());
    }
    table.push_str("\n|---|");
    table.push_str(&"---:|".repeat(modes.len()));
    table.push('\n');
    for (name, values) in rows {
        let _ = writeln!(table, "| {name} | {} |", values.join(" | "));
    }
    table
}

fn cells(modes: &[(&Mode, &ModeSummary)], cell: impl Fn(&ModeSummary) -> String) -> Vec<String> {
    modes.iter().map(|(_, summary)| cell(summary)).collect()
}

/// `report.md`: the totals, then every question.
pub fn report_markdown(summary: &Summary, records: &[QuestionRecord]) -> String {
    let mut report = format!(
        "# Evaluation of {}\n\n{} question(s){}.\n\n",
        summary.dataset,
        summary.questions,
        if summary.collection.is_empty() {
            String::new()
        } else {
            format!(", collection `{}`", summary.collection)
        }
    );
    report.push_str(&summary_table(summary));
    report.push_str(
        "\n## Questions\n\n| id | mode | EM | F1 | contains | cit. precision | recall cited | \
         recall retrieved | partial | calls | searches | latency | answer |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|\n",
    );
    for record in records {
        let answer = match &record.error {
            Some(error) if record.failed => format!("failed: {error}"),
            _ => record.answer.clone(),
        };
        let _ = writeln!(
            report,
            "| {} | {} | {:.0} | {:.3} | {:.0} | {} | {} | {} | {} | {} | {} | {:.3} s | {} |",
            markdown_cell(&record.id),
            record.mode.name(),
            record.scores.exact_match,
            record.scores.f1,
            record.scores.contains,
            score_cell(record.scores.citation_precision),
            score_cell(record.scores.supporting_recall_cited),
            score_cell(record.scores.supporting_recall_retrieved),
            if record.partial { "yes" } else { "no" },
            record.model_calls,
            record.searches,
            record.latency_seconds,
            markdown_cell(&answer),
        );
    }
    report
}

/// Text safe inside a Markdown table cell: one line, pipes escaped, at most 300 characters.
pub fn markdown_cell(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cell: String = line.chars().take(300).collect();
    if cell.len() < line.len() {
        cell.push('…');
    }
    cell.replace('|', "\\|")
}

/// Writes `report.md`, `results.jsonl` and `summary.json` into `dir`, creating it.
pub fn write_outputs(
    dir: &Path,
    summary: &Summary,
    records: &[QuestionRecord],
) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| CliError::Io(format!("cannot create {}: {error}", dir.display())))?;
    let mut results = String::new();
    for record in records {
        let line = serde_json::to_string(record)
            .map_err(|error| CliError::Io(format!("cannot encode a result: {error}")))?;
        results.push_str(&line);
        results.push('\n');
    }
    let summary_json = serde_json::to_string_pretty(summary)
        .map_err(|error| CliError::Io(format!("cannot encode the summary: {error}")))?;
    write(&dir.join("results.jsonl"), &results)?;
    write(&dir.join("summary.json"), &(summary_json + "\n"))?;
    write(&dir.join("report.md"), &report_markdown(summary, records))
}

/// Writes a file, naming it in the error.
pub fn write(path: &Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text)
        .map_err(|error| CliError::Io(format!("cannot write {}: {error}", path.display())))
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|error| CliError::Io(format!("cannot read {}: {error}", path.display())))
}
