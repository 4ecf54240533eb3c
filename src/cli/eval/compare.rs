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
