//! The dataset: JSONL, one question a line. Bad lines are reported together, each with its
//! line number, before any question is asked.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::pb;

/// Bad lines listed in one error, at most; the rest are counted.
const MAX_REPORTED_ERRORS: usize = 20;

/// One question of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The line it came from, from 1.
    pub line: usize,
    /// The `id` given, or `line-N`.
    pub id: String,
    /// The question.
    pub question: String,
    /// Accepted answers, at least one.
    pub answers: Vec<String>,
    /// Documents an answer needs (ids, or ingested files whose chunks all count).
    pub supporting_ids: Vec<String>,
    /// Metadata filters bounding the question's searches.
    pub filters: Option<Map<String, Value>>,
    /// Budget of the question; unset limits take the server's defaults.
    pub budget: Option<DatasetBudget>,
}

/// A question's budget, as in the Query request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetBudget {
    /// Most reasoning iterations.
    pub max_iterations: Option<u32>,
    /// Most searches.
    pub max_search_calls: Option<u32>,
    /// Most tokens.
    pub max_tokens: Option<u64>,
    /// Most seconds.
    pub max_time_seconds: Option<f64>,
    /// Most US dollars.
    pub max_cost_usd: Option<f64>,
}

impl DatasetBudget {
    /// The Query request's budget.
    pub fn to_proto(self) -> pb::Budget {
        pb::Budget {
            max_iterations: self.max_iterations,
            max_search_calls: self.max_search_calls,
            max_tokens: self.max_tokens,
            max_time_seconds: self.max_time_seconds,
            max_cost_usd: self.max_cost_usd,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    question: String,
    answers: Vec<String>,
    #[serde(default)]
    supporting_ids: Vec<String>,
    #[serde(default)]
    filters: Option<Map<String, Value>>,
    #[serde(default)]
    budget: Option<DatasetBudget>,
    #[serde(default)]
    id: Option<String>,
}

/// Why a dataset cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Lines are wrong.
    #[error("{path}: {}", .problems.join("; "))]
    Invalid {
        /// The file.
        path: String,
        /// `line N: what is wrong`, in line order.
        problems: Vec<String>,
    },
}

/// Reads and checks a dataset file.
pub fn load(path: &Path) -> Result<Vec<Question>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|error| DatasetError::Read {
        path: path.display().to_string(),
        message: error.to_string(),
    })?;
    parse(&text).map_err(|problems| DatasetError::Invalid {
        path: path.display().to_string(),
        problems,
    })
}

/// Parses JSONL text. Blank lines are skipped; every bad line is reported as `line N: …`.
pub fn parse(text: &str) -> Result<Vec<Question>, Vec<String>> {
    let mut questions = Vec::new();
    let mut problems = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match parse_line(raw, line) {
            Err(problem) => problems.push(format!("line {line}: {problem}")),
            Ok(question) => match first_line_of.get(&question.id) {
                Some(first) => problems.push(format!(
                    "line {line}: id {:?} is already used on line {first}",
                    question.id
                )),
                None => {
                    first_line_of.insert(question.id.clone(), line);
                    questions.push(question);
                }
            },
        }
    }
    if questions.is_empty() && problems.is_empty() {
        problems.push("no questions: the file holds no non-blank line".into());
    }
    if problems.is_empty() {
        return Ok(questions);
    }
    if problems.len() > MAX_REPORTED_ERRORS {
        let more = problems.len() - MAX_REPORTED_ERRORS;
        problems.truncate(MAX_REPORTED_ERRORS);
        problems.push(format!("and {more} more bad line(s)"));
    }
    Err(problems)
}

fn parse_line(raw: &str, line: usize) -> Result<Question, String> {
    let parsed: Line = serde_json::from_str(raw).map_err(|error| {
        // serde's own position is "line 1 column N" of this one line: keep only the column.
        let message = error.to_string();
        match message.rsplit_once(" at line 1 column ") {
            Some((what, column)) => format!("{what} (column {column})"),
            None => message,
        }
    })?;
    if parsed.question.trim().is_empty() {
        return Err("`question` must not be empty".into());
    }
    if parsed.answers.is_empty() {
        return Err("`answers` must hold at least one accepted answer".into());
    }
    if let Some(position) = parsed
        .answers
        .iter()
        .position(|answer| answer.trim().is_empty())
    {
        return Err(format!("`answers[{position}]` must not be empty"));
    }
    if let Some(position) = parsed.supporting_ids.iter().position(|id| id.is_empty()) {
        return Err(format!("`supporting_ids[{position}]` must not be empty"));
    }
    let id = match parsed.id {
        Some(id) if id.trim().is_empty() => return Err("`id` must not be empty".into()),
        Some(id) => id,
        None => format!("line-{line}"),
    };
    Ok(Question {
        line,
        id,
        question: parsed.question,
        answers: parsed.answers,
        supporting_ids: parsed.supporting_ids,
        filters: parsed.filters,
        budget: parsed.budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let text = r#"{"question": "Where?", "answers": ["Porto"]}

{"id": "q2", "question": "Who?", "answers": ["Ada", "Ada L."], "supporting_ids": ["a.md"], "filters": {"team": "x"}, "budget": {"max_search_calls": 2}}
"#;
        let questions = parse(text).expect("valid");
        assert_eq!(questions.len(), 2);
        assert_eq!(questions[0].id, "line-1");
        assert!(questions[0].supporting_ids.is_empty());
        assert_eq!(questions[1].id, "q2");
        assert_eq!(questions[1].line, 3);
        assert_eq!(
            questions[1].budget.map(|budget| budget.max_search_calls),
            Some(Some(2))
        );
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = r#"{"question": "Where?", "answers": ["Porto"], "id": "a"}
not json
{"question": "", "answers": ["x"]}
{"question": "Who?", "answers": []}
{"question": "Who?", "answer": ["x"]}
{"question": "When?", "answers": ["1987"], "id": "a"}
{"question": "How?", "answers": ["x"], "budget": {"max_searches": 1}}
"#;
        let problems = parse(text).expect_err("invalid");
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems[0].starts_with("line 2: "), "{}", problems[0]);
        assert!(problems[0].contains("(column ") && !problems[0].contains("line 1"));
        assert_eq!(problems[1], "line 3: `question` must not be empty");
        assert_eq!(
            problems[2],
            "line 4: `answers` must hold at least one accepted answer"
        );
        assert!(problems[3].starts_with("line 5: unknown field `answer`"));
        assert_eq!(problems[4], "line 6: id \"a\" is already used on line 1");
        assert!(problems[5].starts_with("line 7: unknown field `max_searches`"));
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert_eq!(
            parse("\n  \n").expect_err("empty"),
            vec!["no questions: the file holds no non-blank line"]
        );
    }
}
