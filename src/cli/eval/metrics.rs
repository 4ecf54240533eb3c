//! Scores of one answer: SQuAD's exact match and token F1, answer-contains, and the citation
//! and retrieval scores against a question's supporting documents. Pure functions, no I/O.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Scores of one answer against its question.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// 1 when the normalised answer equals a normalised accepted answer, else 0.
    pub exact_match: f64,
    /// Token F1 against the best accepted answer.
    pub f1: f64,
    /// 1 when a normalised accepted answer appears, as whole words, in the normalised answer.
    pub contains: f64,
    /// The accepted answer with the best F1 (the first listed on a tie).
    pub best_answer: String,
    /// Share of cited ids that are supporting; `None` without supporting ids or citations.
    pub citation_precision: Option<f64>,
    /// Share of supporting ids the answer cites; `None` without supporting ids.
    pub supporting_recall_cited: Option<f64>,
    /// Share of supporting ids some search of the run returned; `None` without supporting ids.
    pub supporting_recall_retrieved: Option<f64>,
}

/// Scores `answer` (its `[id]` citation markers removed first) against the accepted answers,
/// and its citations and retrieved ids against the supporting ids.
pub fn score(
    answer: &str,
    accepted: &[String],
    citations: &[String],
    retrieved: &[String],
    supporting: &[String],
) -> Scores {
    let answer = strip_citations(answer, citations.iter().chain(retrieved));
    let mut best: Option<(f64, &String)> = None;
    let mut exact_match: f64 = 0.0;
    let mut contains: f64 = 0.0;
    for candidate in accepted {
        let f1 = token_f1(&answer, candidate);
        // Strictly greater: on a tie the answer listed first stays the best.
        if best.is_none_or(|(best_f1, _)| f1 > best_f1) {
            best = Some((f1, candidate));
        }
        exact_match = exact_match.max(exact_match_score(&answer, candidate));
        contains = contains.max(contains_score(&answer, candidate));
    }
    Scores {
        exact_match,
        f1: best.map_or(0.0, |(f1, _)| f1),
        contains,
        best_answer: best.map(|(_, answer)| answer.clone()).unwrap_or_default(),
        citation_precision: citation_precision(citations, supporting),
        supporting_recall_cited: supporting_recall(citations, supporting),
        supporting_recall_retrieved: supporting_recall(retrieved, supporting),
    }
}

/// Normalises an answer as the SQuAD evaluation script does: lower case, punctuation removed,
/// the articles `a`, `an` and `the` removed, whitespace collapsed.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let without_punctuation: String = lowered.chars().filter(|c| !is_punctuation(*c)).collect();
    without_punctuation
        .split_whitespace()
        .filter(|word| !matches!(*word, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD removes `string.punctuation` (ASCII); typographic quotes and dashes go too, so that
/// an answer is not wrong for its typography.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || matches!(c, '‘' | '’' | '“' | '”' | '–' | '—' | '…')
}

/// 1 when both normalise to the same text, else 0.
pub fn exact_match_score(prediction: &str, accepted: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(accepted),
    ))
}

/// Token F1 of SQuAD: the harmonic mean of token precision and recall over the normalised
/// texts, counting repeated tokens. When either side has no token, 1 if both have none.
pub fn token_f1(prediction: &str, accepted: &str) -> f64 {
    let normalized_prediction = normalize_answer(prediction);
    let normalized_accepted = normalize_answer(accepted);
    let predicted: Vec<&str> = normalized_prediction.split_whitespace().collect();
    let expected: Vec<&str> = normalized_accepted.split_whitespace().collect();
    if predicted.is_empty() || expected.is_empty() {
        return f64::from(u8::from(predicted == expected));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for token in &expected {
        *counts.entry(token).or_default() += 1;
    }
    let mut same = 0usize;
    for token in &predicted {
        if let Some(count) = counts.get_mut(token)
            && *count > 0
        {
            *count -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / predicted.len() as f64;
    let recall = same as f64 / expected.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// 1 when the normalised accepted answer occurs in the normalised prediction as whole words
/// ("1987" is not in "19870"); an accepted answer that normalises to nothing never matches.
pub fn contains_score(prediction: &str, accepted: &str) -> f64 {
    let accepted = normalize_answer(accepted);
    if accepted.is_empty() {
        return 0.0;
    }
    let prediction = format!(" {} ", normalize_answer(prediction));
    f64::from(u8::from(prediction.contains(&format!(" {accepted} "))))
}

/// Whether document `id` is supporting document `supporting`: the same id, or one of its
/// chunks (`ingest` names chunks `<file>#<n>`, so `guide.md` covers `guide.md#3`).
pub fn is_supporting(id: &str, supporting: &str) -> bool {
    id == supporting
        || id
            .strip_prefix(supporting)
            .is_some_and(|rest| rest.starts_with('#'))
}

/// Share of distinct cited ids that are supporting; `None` when there is nothing to measure
/// (no supporting ids, or no citation).
pub fn citation_precision(cited: &[String], supporting: &[String]) -> Option<f64> {
    let cited = distinct(cited);
    if supporting.is_empty() || cited.is_empty() {
        return None;
    }
    let good = cited
        .iter()
        .filter(|id| supporting.iter().any(|s| is_supporting(id, s)))
        .count();
    Some(good as f64 / cited.len() as f64)
}

/// Share of distinct supporting ids that `found` covers; `None` without supporting ids.
pub fn supporting_recall(found: &[String], supporting: &[String]) -> Option<f64> {
    let supporting = distinct(supporting);
    if supporting.is_empty() {
        return None;
    }
    let covered = supporting
        .iter()
        .filter(|s| found.iter().any(|id| is_supporting(id, s)))
        .count();
    Some(covered as f64 / supporting.len() as f64)
}

fn distinct(ids: &[String]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id.as_str()) {
            seen.push(id);
        }
    }
    seen
}

/// Removes citation markers: `[id]` for every id in `ids` (cited or retrieved), and any other
/// bracketed word without spaces, such as an id a model made up, which the server leaves in a
/// plain-text answer. They are not part of the answer's words.
pub fn strip_citations<'a>(answer: &str, ids: impl Iterator<Item = &'a String>) -> String {
    let mut text = answer.to_string();
    for id in ids {
        text = text.replace(&format!("[{id}]"), " ");
    }
    let mut stripped = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if close > 0 && !after[..close].contains(char::is_whitespace) => {
                stripped.push_str(&rest[..open]);
                stripped.push(' ');
                rest = &after[close + 1..];
            }
            _ => {
                stripped.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    stripped.push_str(rest);
    stripped
}

/// The `percent` percentile by nearest rank: the smallest value with at least `percent`% of
/// the values at or below it. `None` for no values.
pub fn percentile(values: &[f64], percent: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The mean of the values that exist, with how many there were; `None` when none do.
pub fn mean_of(values: impl Iterator<Item = Option<f64>>) -> (Option<f64>, usize) {
    let (sum, count) = values.flatten().fold((0.0, 0usize), |(sum, count), value| {
        (sum + value, count + 1)
    });
    ((count > 0).then(|| sum / count as f64), count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn normalisation_drops_case_punctuation_articles_and_extra_space() {
        assert_eq!(
            normalize_answer("  The Site-Reliability  Lead! "),
            "sitereliability lead"
        );
        assert_eq!(
            normalize_answer("An apple, a pear; THE end."),
            "apple pear end"
        );
        assert_eq!(normalize_answer("“Tampere” — Finland…"), "tampere finland");
        // Articles go only as whole words.
        assert_eq!(normalize_answer("Theatre and Anna"), "theatre and anna");
        assert_eq!(normalize_answer(""), "");
    }

    #[test]
    fn exact_match_compares_normalised_texts() {
        assert_eq!(exact_match_score("The Tampere.", "tampere"), 1.0);
        assert_eq!(exact_match_score("Tampere, Finland", "Tampere"), 0.0);
    }

    #[test]
    fn f1_counts_shared_tokens_with_repeats() {
        // 1 shared of 2 predicted and 1 expected: precision 0.5, recall 1.
        assert!((token_f1("Tampere Finland", "Tampere") - 2.0 / 3.0).abs() < 1e-12);
        // Two shared tokens of three on each side: the repeated "x" counts once.
        assert!((token_f1("x x y", "x y y") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("Porto", "Lisbon"), 0.0);
        assert_eq!(token_f1("Finland Tampere", "Tampere, Finland"), 1.0);
    }

    #[test]
    fn empty_answers_match_only_empty_answers() {
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("", "Tampere"), 0.0);
        assert_eq!(token_f1("Tampere", "the"), 0.0);
        assert_eq!(exact_match_score("", "Tampere"), 0.0);
        assert_eq!(contains_score("Tampere", "the"), 0.0);
        let scores = score("", &strings(&["Tampere"]), &[], &[], &[]);
        assert_eq!(
            (scores.exact_match, scores.f1, scores.contains),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn the_best_accepted_answer_wins_and_ties_keep_the_first() {
        let scores = score(
            "It is in Tampere, Finland.",
            &strings(&["Helsinki", "Tampere Finland", "Tampere"]),
            &[],
            &[],
            &[],
        );
        assert_eq!(scores.best_answer, "Tampere Finland");
        assert!((scores.f1 - 2.0 * (2.0 / 5.0) / (2.0 / 5.0 + 1.0)).abs() < 1e-12);
        assert_eq!(scores.contains, 1.0);
        assert_eq!(scores.exact_match, 0.0);

        // "Porto" and "Lisbon" each share nothing: a tie at 0 keeps the first listed.
        let tie = score("Oslo", &strings(&["Porto", "Lisbon"]), &[], &[], &[]);
        assert_eq!(tie.best_answer, "Porto");
        // Both have F1 1 against "Tampere Finland": the first listed stays.
        let tie = score(
            "Tampere Finland",
            &strings(&["Finland Tampere", "Tampere Finland"]),
            &[],
            &[],
            &[],
        );
        assert_eq!(tie.best_answer, "Finland Tampere");
        assert_eq!(tie.exact_match, 1.0);
    }

    #[test]
    fn contains_needs_whole_words() {
        assert_eq!(contains_score("Founded in 19870.", "1987"), 0.0);
        assert_eq!(contains_score("Founded in 1987.", "1987"), 1.0);
        assert_eq!(
            contains_score("She is the Site Reliability Lead.", "site reliability lead"),
            1.0
        );
    }

    #[test]
    fn citation_markers_are_not_answer_words() {
        assert_eq!(
            normalize_answer(&strip_citations(
                "Oslo [a] [made-up], [not a marker]",
                [].iter()
            )),
            "oslo not marker"
        );
        let scores = score(
            "Tampere [kestrel.md#0]",
            &strings(&["Tampere"]),
            &strings(&["kestrel.md#0"]),
            &[],
            &[],
        );
        assert_eq!(scores.exact_match, 1.0);
    }

    #[test]
    fn citation_scores_against_supporting_documents_and_their_chunks() {
        let supporting = strings(&["aurora.md", "kestrel.md#0"]);
        let cited = strings(&["aurora.md#1", "other.md#0", "aurora.md#1"]);
        assert_eq!(citation_precision(&cited, &supporting), Some(0.5));
        assert_eq!(supporting_recall(&cited, &supporting), Some(0.5));
        let retrieved = strings(&["kestrel.md#0", "aurora.md#0", "x"]);
        assert_eq!(supporting_recall(&retrieved, &supporting), Some(1.0));
        // A prefix that is not a chunk boundary does not count.
        assert!(!is_supporting("aurora.md.bak", "aurora.md"));
    }

    #[test]
    fn without_supporting_ids_or_citations_there_is_nothing_to_measure() {
        let cited = strings(&["a"]);
        assert_eq!(citation_precision(&cited, &[]), None);
        assert_eq!(supporting_recall(&cited, &[]), None);
        assert_eq!(citation_precision(&[], &strings(&["a"])), None);
        assert_eq!(supporting_recall(&[], &strings(&["a"])), Some(0.0));
        let scores = score("x", &strings(&["x"]), &cited, &cited, &[]);
        assert_eq!(scores.citation_precision, None);
        assert_eq!(scores.supporting_recall_cited, None);
        assert_eq!(scores.supporting_recall_retrieved, None);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(10.0));
        assert_eq!(percentile(&values, 95.0), Some(19.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn means_skip_what_does_not_exist() {
        assert_eq!(
            mean_of([Some(1.0), None, Some(0.0)].into_iter()),
            (Some(0.5), 2)
        );
        assert_eq!(mean_of([None, None].into_iter()), (None, 0));
    }
}
