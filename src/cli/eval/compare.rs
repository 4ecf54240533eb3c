//! `--compare OLD_DIR`: what changed since an earlier run, question by question, and
//! `--baseline FILE`: whether the quality scores kept at or above committed ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::ask::{Mode, QuestionRecord};
use super::report::{self, ModeSummary, Summary, markdown_cell, score_cell};
use crate::cli::CliError;

/// Differences below this are rounding, not change.
const EPSILON: f64 = 1e-9;

/// How a question fared against the earlier run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Higher F1, or the same F1 and now containing an accepted answer.
    Better,
    /// The reverse.
    Worse,
    /// Neither.
    Same,
}

/// Judges a question's change: by token F1 first, then by answer-contains.
pub fn change(old: &QuestionRecord, new: &QuestionRecord) -> Change {
    let by = |old: f64, new: f64| {
        if new > old + EPSILON {
            Some(Change::Better)
        } else if new < old - EPSILON {
            Some(Change::Worse)
        } else {
            None
        }
    };
    by(old.scores.f1, new.scores.f1)
        .or_else(|| by(old.scores.contains, new.scores.contains))
        .unwrap_or(Change::Same)
}

/// Reads the `results.jsonl` of an earlier run.
pub fn read_results(dir: &Path) -> Result<Vec<QuestionRecord>, CliError> {
    let path = dir.join("results.jsonl");
    let text = report::read(&path)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|error| {
                CliError::Io(format!("{} line {}: {error}", path.display(), index + 1))
            })
        })
        .collect()
}

/// The comparison as Markdown: counts per mode, every question that changed, and the totals
/// side by side. Questions are matched by mode and id.
pub fn compare_markdown(old_dir: &Path, old: &[QuestionRecord], new: &[QuestionRecord]) -> String {
    let old_by_key: BTreeMap<(Mode, &str), &QuestionRecord> = old
        .iter()
        .map(|record| ((record.mode, record.id.as_str()), record))
        .collect();
    let new_by_key: BTreeMap<(Mode, &str), &QuestionRecord> = new
        .iter()
        .map(|record| ((record.mode, record.id.as_str()), record))
        .collect();
    let modes: Vec<Mode> = {
        let mut modes: Vec<Mode> = new.iter().map(|record| record.mode).collect();
        modes.sort();
        modes.dedup();
        modes
    };

    let mut out = format!("## Compared with {}\n\n", old_dir.display());
    out.push_str("| mode | better | worse | same | new | gone |\n|---|---:|---:|---:|---:|---:|\n");
    let mut changed = String::new();
    for mode in &modes {
        let (mut better, mut worse, mut same, mut added) = (0, 0, 0, 0);
        for ((_, id), record) in new_by_key.iter().filter(|((m, _), _)| m == mode) {
            match old_by_key.get(&(*mode, id)) {
                None => added += 1,
                Some(before) => match change(before, record) {
                    Change::Same => same += 1,
                    direction => {
                        if direction == Change::Better {
                            better += 1;
                        } else {
                            worse += 1;
                        }
                        let _ = writeln!(
                            changed,
                            "| {} | {} | {} | {} → {} | {:.0} → {:.0} | {} |",
                            if direction == Change::Better {
                                "better"
                            } else {
                                "worse"
                            },
                            mode.name(),
                            markdown_cell(id),
                            score_cell(Some(before.scores.f1)),
                            score_cell(Some(record.scores.f1)),
                            before.scores.contains,
                            record.scores.contains,
                            markdown_cell(&record.question),
                        );
                    }
                },
            }
        }
        let gone = old_by_key
            .keys()
            .filter(|(m, id)| m == mode && !new_by_key.contains_key(&(*m, id)))
            .count();
        let _ = writeln!(
            out,
            "| {} | {better} | {worse} | {same} | {added} | {gone} |",
            mode.name()
        );
    }
    if !changed.is_empty() {
        out.push_str(
            "\n| change | mode | id | F1 | contains | question |\n|---|---|---|---|---|---|\n",
        );
        out.push_str(&changed);
    }

    let old_summary = totals(old);
    let new_summary = totals(new);
    out.push_str("\n| metric | mode | before | after |\n|---|---|---:|---:|\n");
    for mode in &modes {
        let (Some(before), Some(after)) = (old_summary.get(mode), new_summary.get(mode)) else {
            continue;
        };
        for (name, value) in QUALITY {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} |",
                mode.name(),
                score_cell(value(before)),
                score_cell(value(after))
            );
        }
        let _ = writeln!(
            out,
            "| cost (USD) | {} | {:.4} | {:.4} |",
            mode.name(),
            before.cost_usd,
            after.cost_usd
        );
    }
    out
}

fn totals(records: &[QuestionRecord]) -> BTreeMap<Mode, ModeSummary> {
    let mut by_mode: BTreeMap<Mode, Vec<&QuestionRecord>> = BTreeMap::new();
    for record in records {
        by_mode.entry(record.mode).or_default().push(record);
    }
    by_mode
        .into_iter()
        .map(|(mode, records)| (mode, report::summarize(&records, None)))
        .collect()
}

/// The quality scores a baseline holds, by name.
type Metric = (&'static str, fn(&ModeSummary) -> Option<f64>);

const QUALITY: [Metric; 6] = [
    ("exact match", |s| Some(s.exact_match)),
    ("token F1", |s| Some(s.f1)),
    ("answer contains", |s| Some(s.contains)),
    ("citation precision", |s| s.citation_precision),
    ("supporting recall (cited)", |s| s.supporting_recall_cited),
    ("supporting recall (retrieved)", |s| {
        s.supporting_recall_retrieved
    }),
];

/// Checks that every quality score of every mode the baseline and this run share is at or
/// above the baseline's; returns what fell. Fails when they share no mode.
pub fn below_baseline(baseline: &Summary, current: &Summary) -> Result<Vec<String>, CliError> {
    let mut shared = 0;
    let mut fallen = Vec::new();
    for (mode, before) in &baseline.modes {
        let Some(now) = current.modes.get(mode) else {
            continue;
        };
        shared += 1;
        for (name, value) in QUALITY {
            if let Some(floor) = value(before) {
                let score = value(now);
                if score.is_none_or(|score| score < floor - EPSILON) {
                    fallen.push(format!(
                        "{} {name}: {} is below the baseline's {}",
                        mode.name(),
                        score_cell(score),
                        score_cell(Some(floor))
                    ));
                }
            }
        }
    }
    if shared == 0 {
        return Err(CliError::Usage(
            "the baseline holds none of the modes evaluated".into(),
        ));
    }
    Ok(fallen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::eval::dataset::Question;
    use crate::cli::eval::metrics::Scores;

    fn record(mode: Mode, id: &str, f1: f64, contains: f64) -> QuestionRecord {
        let question = Question {
            line: 1,
            id: id.to_string(),
            question: format!("Question {id}?"),
            answers: vec!["x".into()],
            supporting_ids: Vec::new(),
            filters: None,
            budget: None,
        };
        QuestionRecord {
            model_calls: 1,
            searches: 1,
            input_tokens: 10,
            output_tokens: 1,
            cost_usd: 0.5,
            latency_seconds: 0.1,
            scores: Scores {
                f1,
                contains,
                ..Scores::default()
            },
            ..QuestionRecord::unanswered(&question, mode)
        }
    }

    fn folder(records: &[QuestionRecord]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        let lines: String = records
            .iter()
            .map(|record| serde_json::to_string(record).expect("encodes") + "\n")
            .collect();
        std::fs::write(dir.path().join("results.jsonl"), lines).expect("written");
        dir
    }

    #[test]
    fn changes_are_told_question_by_question_from_two_result_folders() {
        let before = folder(&[
            record(Mode::Loop, "a", 0.5, 1.0),
            record(Mode::Loop, "b", 1.0, 1.0),
            record(Mode::Loop, "c", 0.0, 0.0),
            record(Mode::Loop, "gone", 0.0, 0.0),
            record(Mode::SinglePass, "a", 0.2, 0.0),
        ]);
        let after = folder(&[
            record(Mode::Loop, "a", 0.75, 1.0),
            record(Mode::Loop, "b", 0.5, 1.0),
            record(Mode::Loop, "c", 0.0, 1.0),
            record(Mode::Loop, "new", 1.0, 1.0),
            record(Mode::SinglePass, "a", 0.2, 0.0),
        ]);
        let old = read_results(before.path()).expect("old results");
        let new = read_results(after.path()).expect("new results");
        let text = compare_markdown(Path::new("runs/before"), &old, &new);
        let expected = "\
## Compared with runs/before

| mode | better | worse | same | new | gone |
|---|---:|---:|---:|---:|---:|
| loop | 2 | 1 | 0 | 1 | 1 |
| single-pass | 0 | 0 | 1 | 0 | 0 |

| change | mode | id | F1 | contains | question |
|---|---|---|---|---|---|
| better | loop | a | 0.500 → 0.750 | 1 → 1 | Question a? |
| worse | loop | b | 1.000 → 0.500 | 1 → 1 | Question b? |
| better | loop | c | 0.000 → 0.000 | 0 → 1 | Question c? |

| metric | mode | before | after |
|---|---|---:|---:|
| exact match | loop | 0.000 | 0.000 |
| token F1 | loop | 0.375 | 0.562 |
| answer contains | loop | 0.500 | 1.000 |
| citation precision | loop | – | – |
| supporting recall (cited) | loop | – | – |
| supporting recall (retrieved) | loop | – | – |
| cost (USD) | loop | 2.0000 | 2.0000 |
| exact match | single-pass | 0.000 | 0.000 |
| token F1 | single-pass | 0.200 | 0.200 |
| answer contains | single-pass | 0.000 | 0.000 |
| citation precision | single-pass | – | – |
| supporting recall (cited) | single-pass | – | – |
| supporting recall (retrieved) | single-pass | – | – |
| cost (USD) | single-pass | 0.5000 | 0.5000 |
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_score_under_the_baseline_is_named() {
        let summary = |f1: f64, precision: Option<f64>| Summary {
            modes: [(
                Mode::Loop,
                ModeSummary {
                    f1,
                    citation_precision: precision,
                    ..ModeSummary::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Summary::default()
        };
        let baseline = summary(0.5, Some(0.8));
        assert!(
            below_baseline(&baseline, &summary(0.5, Some(0.9)))
                .expect("comparable")
                .is_empty()
        );
        assert_eq!(
            below_baseline(&baseline, &summary(0.4, None)).expect("comparable"),
            vec![
                "loop token F1: 0.400 is below the baseline's 0.500",
                "loop citation precision: – is below the baseline's 0.800",
            ]
        );
        let other_mode = Summary {
            modes: [(Mode::SinglePass, ModeSummary::default())]
                .into_iter()
                .collect(),
            ..Summary::default()
        };
        assert!(below_baseline(&baseline, &other_mode).is_err());
    }
}
