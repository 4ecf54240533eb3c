//! The optional judge: a model that grades each answer against the accepted ones with a fixed
//! rubric. It is built on the client, from the same `[llm]` settings `serve` reads (config
//! file, `DEEPRECALL_*` environment, and the `--judge-*` flags over them), through the same
//! backends; its verdicts and cost are reported apart from the server's.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::llm::{ChatModel, ChatRequest, LlmError, Message, PriceTable};

/// Completion tokens a verdict may take.
const VERDICT_MAX_TOKENS: u32 = 200;

/// The rubric. Changing it changes verdicts: results graded under another rubric are not
/// comparable.
const RUBRIC: &str = "\
You grade answers to questions about a document collection. You get the question, the \
accepted answers, and the answer to grade. Judge only whether the answer states what an \
accepted answer states; ignore citation markers like [id], wording, length and style.
- correct: the answer states the substance of at least one accepted answer and contradicts \
none of them.
- partial: the answer states part of an accepted answer (for example a city without the \
country asked for), or hedges between it and something else.
- incorrect: the answer is wrong, missing, or says the collection does not hold it.
Reply with exactly two lines:
VERDICT: correct|partial|incorrect
REASON: one short sentence";

/// A grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Worth 1.
    Correct,
    /// Worth 0.5.
    Partial,
    /// Worth 0.
    Incorrect,
    /// The judge replied without a verdict line; not counted in the score.
    Unparsed,
    /// The call to the judge failed; not counted in the score.
    Failed,
}

impl Verdict {
    /// The verdict's worth, for the ones that count.
    pub fn score(self) -> Option<f64> {
        match self {
            Verdict::Correct => Some(1.0),
            Verdict::Partial => Some(0.5),
            Verdict::Incorrect => Some(0.0),
            Verdict::Unparsed | Verdict::Failed => None,
        }
    }
}

/// The judge's grade of one answer, with what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    /// The grade.
    pub verdict: Verdict,
    /// The judge's reason, or why there is no verdict.
    pub reason: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// US dollars.
    pub cost_usd: f64,
}

/// A grading model.
#[derive(Debug, Clone)]
pub struct Judge {
    model: Arc<dyn ChatModel>,
    prices: PriceTable,
}

impl Judge {
    /// A judge asking `model`, priced from `prices` when its backend reports no cost.
    pub fn new(model: Arc<dyn ChatModel>, prices: PriceTable) -> Self {
        Judge { model, prices }
    }

    /// The judge model's name.
    pub fn name(&self) -> &str {
        self.model.name()
    }

    /// Grades `answer`. A failed call is a `Failed` verdict, not an error: one bad call does
    /// not sink the evaluation.
    pub async fn grade(&self, question: &str, accepted: &[String], answer: &str) -> JudgeVerdict {
        let mut prompt = String::from("Accepted answers for the question below:\n");
        for candidate in accepted {
            prompt.push_str(&format!("- {candidate}\n"));
        }
        prompt.push_str(&format!(
            "\nQuestion: {question}\n\nAnswer to grade:\n{answer}\n"
        ));
        let request = ChatRequest {
            messages: Arc::new(vec![Message::system(RUBRIC), Message::user(prompt)]),
            tools: Arc::from([]),
            max_tokens: Some(VERDICT_MAX_TOKENS),
            deadline: None,
        };
        match self.model.chat(request).await {
            Ok(response) => {
                let cost_usd = response
                    .cost_usd
                    .or_else(|| self.prices.cost(self.model.name(), response.usage))
                    .unwrap_or(0.0);
                let (verdict, reason) = parse_verdict(&response.content);
                JudgeVerdict {
                    verdict,
                    reason,
                    input_tokens: response.usage.input_tokens,
                    output_tokens: response.usage.output_tokens,
                    cost_usd,
                }
            }
            Err(error) => failed(&error),
        }
    }
}

fn failed(error: &LlmError) -> JudgeVerdict {
    JudgeVerdict {
        verdict: Verdict::Failed,
        reason: error.to_string(),
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
    }
}

/// Reads the `VERDICT:` and `REASON:` lines of a reply, case-insensitively.
pub fn parse_verdict(reply: &str) -> (Verdict, String) {
    let mut verdict = None;
    let mut reason = String::new();
    for line in reply.lines() {
        let line = line.trim().trim_start_matches(['*', '#', ' ']);
        let lowered = line.to_lowercase();
        if let Some(value) = lowered.strip_prefix("verdict:") {
            let word = value
                .trim()
                .trim_matches(|c: char| !c.is_alphanumeric() && c != '-');
            verdict = verdict.or(match word {
                "correct" => Some(Verdict::Correct),
                "partial" | "partially correct" | "partially-correct" => Some(Verdict::Partial),
                "incorrect" | "wrong" => Some(Verdict::Incorrect),
                _ => None,
            });
        } else if lowered.starts_with("reason:") {
            reason = line["reason:".len()..].trim().to_string();
        }
    }
    match verdict {
        Some(verdict) => (verdict, reason),
        None => (
            Verdict::Unparsed,
            format!(
                "no verdict line in the reply: {}",
                reply.chars().take(200).collect::<String>()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines_are_read_whatever_their_case() {
        assert_eq!(
            parse_verdict("VERDICT: correct\nREASON: says Tampere"),
            (Verdict::Correct, "says Tampere".to_string())
        );
        assert_eq!(
            parse_verdict("**Verdict:** Partial.\nReason: city only").0,
            Verdict::Partial
        );
        assert_eq!(parse_verdict("verdict: INCORRECT").0, Verdict::Incorrect);
        assert_eq!(parse_verdict("It looks right to me.").0, Verdict::Unparsed);
        assert_eq!(parse_verdict("VERDICT: maybe").0, Verdict::Unparsed);
    }
}
