//! The offline backend. It plays the model's part through the same tool protocol as a real
//! one, reading only the conversation: it searches the question, follows the names it finds in
//! the hits that the question does not mention into a second search, and submits the sentences
//! that answer, each cited. Offered no search tool (a single-pass query), it answers at once
//! from the search the conversation holds. No network, deterministic, and it says what it is.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::protocol::{QUESTION_MARKER, SEARCH_DB as SEARCH_TOOL, SUBMIT as SUBMIT_TOOL};
use super::{
    ChatModel, ChatRequest, ChatResponse, LlmError, Message, Role, TokenUsage, ToolCall,
    estimate_tokens,
};
use crate::text;

/// Settings of the extractive backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractiveConfig {
    /// Names followed into a second search, at most.
    pub max_followups: usize,
    /// Hits of the first search read for names.
    pub hits_read: usize,
    /// Sentences in an answer, at most.
    pub max_answer_sentences: usize,
}

impl Default for ExtractiveConfig {
    fn default() -> Self {
        ExtractiveConfig {
            max_followups: 2,
            hits_read: 3,
            max_answer_sentences: 3,
        }
    }
}

/// The extractive backend.
#[derive(Debug, Clone, Default)]
pub struct ExtractiveModel {
    config: ExtractiveConfig,
}

#[derive(Debug, Deserialize)]
struct SearchOutput {
    #[serde(default)]
    hits: Vec<HitOutput>,
}

#[derive(Debug, Clone, Deserialize)]
struct HitOutput {
    id: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct SearchArguments {
    query: String,
}

/// A search already made in the conversation and what it returned.
#[derive(Debug)]
struct PastSearch {
    query: String,
    hits: Vec<HitOutput>,
}

/// A sentence chosen for the answer.
#[derive(Debug, Clone)]
struct Pick<'a> {
    id: &'a str,
    sentence: &'a str,
}

impl ExtractiveModel {
    /// Creates the backend.
    pub fn new(config: ExtractiveConfig) -> Self {
        ExtractiveModel { config }
    }

    /// Decides the next turn. Without `search_db` on offer (a single-pass query) it answers
    /// from the searches the conversation already holds.
    fn decide(&self, messages: &[Message], may_search: bool) -> (String, Vec<ToolCall>) {
        let question = question_of(messages);
        // Tool call ids must be unique across the conversation, as a real model's are.
        let turn = messages
            .iter()
            .filter(|message| message.role == Role::Assistant)
            .count();
        let searches = past_searches(messages);
        let Some(first) = searches.first() else {
            return (
                String::new(),
                vec![tool_call(
                    turn,
                    0,
                    SEARCH_TOOL,
                    json!({ "query": question }),
                )],
            );
        };
        let followed: Vec<&PastSearch> = searches.iter().skip(1).collect();
        if followed.is_empty() && may_search {
            let names = self.names_to_follow(&question, &first.hits);
            if !names.is_empty() {
                let calls = names
                    .iter()
                    .enumerate()
                    .map(|(n, name)| tool_call(turn, n, SEARCH_TOOL, json!({ "query": name })))
                    .collect();
                return (String::new(), calls);
            }
        }
        let (answer, citations, certainty) = self.compose(&question, first, &followed);
        let submit = tool_call(
            turn,
            0,
            SUBMIT_TOOL,
            json!({ "answer": answer, "citations": citations, "certainty": certainty }),
        );
        (String::new(), vec![submit])
    }

    /// Returns the names in the best hits that the question does not mention, most relevant
    /// sentence first.
    fn names_to_follow(&self, question: &str, hits: &[HitOutput]) -> Vec<String> {
        let question_terms = text::stemmed_terms(question);
        let question_words: Vec<String> = text::words(question).collect();
        let mut scored: Vec<(usize, usize, String)> = Vec::new();
        let mut order = 0;
        for hit in hits.iter().take(self.config.hits_read) {
            for sentence in text::sentences(&hit.content) {
                let relevance = overlap(&question_terms, &text::stemmed_terms(sentence));
                if relevance == 0 || looks_like_heading(sentence) {
                    continue;
                }
                for name in capitalized_names(sentence) {
                    let new = text::words(&name).any(|word| !question_words.contains(&word));
                    if new && !scored.iter().any(|(_, _, known)| *known == name) {
                        scored.push((relevance, order, name));
                        order += 1;
                    }
                }
            }
        }
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .take(self.config.max_followups)
            .map(|(_, _, name)| name)
            .collect()
    }

    /// Picks the first-hop sentence that best matches the question, then for each name followed
    /// the sentence about it that covers what the first one left open.
    fn compose(
        &self,
        question: &str,
        first: &PastSearch,
        followed: &[&PastSearch],
    ) -> (String, Vec<String>, f64) {
        let question_terms = text::stemmed_terms(question);
        let names = name_stems(question);
        let mut picks: Vec<Pick<'_>> = Vec::new();
        let mut covered: Vec<String> = Vec::new();

        if let Some((pick, terms)) = best_sentence(&first.hits, &question_terms, &names, &[], None)
        {
            covered.extend(terms);
            picks.push(pick);
        }
        for search in followed {
            if picks.len() >= self.config.max_answer_sentences {
                break;
            }
            let name = search.query.to_lowercase();
            let open: Vec<String> = question_terms
                .iter()
                .filter(|term| !covered.contains(term))
                .cloned()
                .collect();
            let found = best_sentence(&search.hits, &open, &names, &picks, Some(&name));
            if let Some((pick, terms)) = found {
                covered.extend(terms);
                picks.push(pick);
            }
        }
        // When no sentence about a followed name shares a word with the question ("What is the
        // job title of …"), the sentence that defines the most relevant name usually answers.
        if picks.len() == 1
            && let Some(pick) = followed
                .first()
                .and_then(|search| defining_sentence(&search.hits, &search.query, &picks))
        {
            picks.push(pick);
        }

        if picks.is_empty() {
            return (
                "The collection holds no passage that answers this question.".to_string(),
                Vec::new(),
                0.0,
            );
        }
        let mut citations: Vec<String> = Vec::new();
        let sentences: Vec<String> = picks
            .iter()
            .map(|pick| {
                if !citations.iter().any(|id| id == pick.id) {
                    citations.push(pick.id.to_string());
                }
                format!("{} [{}]", pick.sentence, pick.id)
            })
            .collect();
        covered.sort();
        covered.dedup();
        let coverage = covered.len() as f64 / question_terms.len().max(1) as f64;
        // Extraction never reaches full certainty: the sentences are quoted, not understood.
        let certainty = (0.2 + 0.7 * coverage).min(0.9);
        (
            sentences.join(" "),
            citations,
            (certainty * 100.0).round() / 100.0,
        )
    }

    fn digest(&self, messages: &[Message]) -> String {
        let prompt = messages
            .iter()
            .rev()
            .find(|message| message.role == Role::User)
            .map_or("", |message| message.content.as_str());
        text::sentences(prompt)
            .into_iter()
            .take(self.config.max_answer_sentences)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[async_trait]
impl ChatModel for ExtractiveModel {
    fn name(&self) -> &str {
        "extractive"
    }

    /// Quoting sentences is all it does; the engine's own partial answer does that already.
    fn writes_summaries(&self) -> bool {
        false
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let (content, tool_calls) = if request.tools.is_empty() {
            (self.digest(&request.messages), Vec::new())
        } else {
            let may_search = request.tools.iter().any(|tool| tool.name == SEARCH_TOOL);
            self.decide(&request.messages, may_search)
        };
        let input_tokens = request
            .messages
            .iter()
            .map(|message| estimate_tokens(&message.content))
            .sum();
        let output_tokens = estimate_tokens(&content)
            + tool_calls
                .iter()
                .map(|call| estimate_tokens(&call.arguments))
                .sum::<u64>();
        Ok(ChatResponse {
            content,
            tool_calls,
            usage: TokenUsage {
                input_tokens,
                output_tokens,
            },
            cost_usd: Some(0.0),
        })
    }
}

fn question_of(messages: &[Message]) -> String {
    let user = messages
        .iter()
        .find(|message| message.role == Role::User)
        .map_or("", |message| message.content.as_str());
    match user.rfind(QUESTION_MARKER) {
        Some(position) => user[position + QUESTION_MARKER.len()..].trim().to_string(),
        None => user.trim().to_string(),
    }
}

fn past_searches(messages: &[Message]) -> Vec<PastSearch> {
    let outputs: HashMap<&str, &str> = messages
        .iter()
        .filter(|message| message.role == Role::Tool)
        .filter_map(|message| Some((message.tool_call_id.as_deref()?, message.content.as_str())))
        .collect();
    messages
        .iter()
        .filter(|message| message.role == Role::Assistant)
        .flat_map(|message| &message.tool_calls)
        .filter(|call| call.name == SEARCH_TOOL)
        .filter_map(|call| {
            let arguments: SearchArguments = serde_json::from_str(&call.arguments).ok()?;
            // A failed search (an error object) counts as a search that found nothing.
            let hits = outputs
                .get(call.id.as_str())
                .and_then(|output| serde_json::from_str::<SearchOutput>(output).ok())
                .map(|output| output.hits)
                .unwrap_or_default();
            Some(PastSearch {
                query: arguments.query,
                hits,
            })
        })
        .collect()
}

/// Returns the sentence of `hits` that shares the most of `terms`, if it shares any, skipping
/// sentences already picked and, with `about`, sentences that do not mention that name. Terms
/// the question wrote capitalised (`names`) count double: they name its subject.
fn best_sentence<'a>(
    hits: &'a [HitOutput],
    terms: &[String],
    names: &[String],
    picked: &[Pick<'_>],
    about: Option<&str>,
) -> Option<(Pick<'a>, Vec<String>)> {
    let mut best: Option<(usize, Pick<'a>, Vec<String>)> = None;
    for hit in hits {
        for sentence in text::sentences(&hit.content) {
            if looks_like_heading(sentence) || picked.iter().any(|pick| pick.sentence == sentence) {
                continue;
            }
            if about.is_some_and(|name| !sentence.to_lowercase().contains(name)) {
                continue;
            }
            let sentence_terms = text::stemmed_terms(sentence);
            let shared: Vec<String> = terms
                .iter()
                .filter(|term| sentence_terms.contains(term))
                .cloned()
                .collect();
            let score = shared.len() + shared.iter().filter(|term| names.contains(term)).count();
            if score > 0
                && best
                    .as_ref()
                    .is_none_or(|(best_score, _, _)| score > *best_score)
            {
                let pick = Pick {
                    id: &hit.id,
                    sentence,
                };
                best = Some((score, pick, shared));
            }
        }
    }
    best.map(|(_, pick, shared)| (pick, shared))
}

/// Returns the first sentence, best hit first, that starts with `name`: "Kenji Halvorsen is
/// the Site Reliability Lead."
fn defining_sentence<'a>(
    hits: &'a [HitOutput],
    name: &str,
    picked: &[Pick<'_>],
) -> Option<Pick<'a>> {
    let name = name.to_lowercase();
    hits.iter().find_map(|hit| {
        text::sentences(&hit.content)
            .into_iter()
            .find(|sentence| {
                !looks_like_heading(sentence)
                    && sentence.to_lowercase().starts_with(&name)
                    && !picked.iter().any(|pick| pick.sentence == *sentence)
            })
            .map(|sentence| Pick {
                id: &hit.id,
                sentence,
            })
    })
}

/// Returns the stems of the words the question capitalises after its first word.
fn name_stems(question: &str) -> Vec<String> {
    question
        .split_whitespace()
        .skip(1)
        .filter(|word| word.chars().next().is_some_and(char::is_uppercase))
        .flat_map(text::stemmed_terms)
        .collect()
}

fn overlap(question_terms: &[String], sentence_terms: &[String]) -> usize {
    question_terms
        .iter()
        .filter(|term| sentence_terms.contains(term))
        .count()
}

/// Returns runs of capitalised words: the names a sentence mentions. A leading stopword
/// ("The", "Our") is not part of a name.
fn capitalized_names(sentence: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let flush = |current: &mut Vec<&str>, names: &mut Vec<String>| {
        while current
            .first()
            .is_some_and(|word| text::is_stopword(&word.to_lowercase()))
        {
            current.remove(0);
        }
        if !current.is_empty() {
            names.push(current.join(" "));
        }
        current.clear();
    };
    for raw in sentence.split_whitespace() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let capitalized = word.chars().next().is_some_and(char::is_uppercase);
        if capitalized {
            current.push(word);
        } else {
            flush(&mut current, &mut names);
        }
        // Punctuation after a word ends the name: "Tampere, Finland" is two places.
        if raw.ends_with(|c: char| !c.is_alphanumeric()) {
            flush(&mut current, &mut names);
        }
    }
    flush(&mut current, &mut names);
    names
}

/// Headings ("Aurora Strip Controller") name everything and state nothing.
fn looks_like_heading(sentence: &str) -> bool {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let capitalized = words
        .iter()
        .filter(|word| word.chars().next().is_some_and(char::is_uppercase))
        .count();
    !sentence.ends_with(['.', '!', '?']) && capitalized * 10 >= words.len() * 8
}

fn tool_call(turn: usize, index: usize, name: &str, arguments: serde_json::Value) -> ToolCall {
    ToolCall {
        id: format!("call_{turn}_{index}"),
        name: name.to_string(),
        arguments: arguments.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_capitalised_runs_without_leading_stopwords() {
        assert_eq!(
            capitalized_names(
                "The Aurora Strip board is made by Kestrel Fabrication in Tampere, Finland."
            ),
            vec!["Aurora Strip", "Kestrel Fabrication", "Tampere", "Finland"]
        );
    }

    #[test]
    fn headings_are_recognised() {
        assert!(looks_like_heading("Aurora Strip Controller"));
        assert!(!looks_like_heading("Kestrel Fabrication is in Tampere."));
    }

    #[test]
    fn tool_call_ids_are_unique_across_turns() {
        let model = ExtractiveModel::default();
        let mut messages = vec![Message::user("Question: Who makes the Zephyr?")];
        let (_, first) = model.decide(&messages, true);
        messages.push(Message::assistant("", first.clone()));
        let hits = json!({"hits": [{"id": "z", "content": "The Zephyr is made by Klaxon Works."}]});
        messages.push(Message::tool_result(first[0].id.clone(), hits.to_string()));
        let (_, second) = model.decide(&messages, true);
        assert_eq!(second[0].name, SEARCH_TOOL);
        assert!(second.iter().all(|call| call.id != first[0].id));
    }

    #[test]
    fn the_question_follows_the_marker() {
        let messages = vec![Message::user(
            "Collection: x (3 documents)\n\nQuestion: Who?",
        )];
        assert_eq!(question_of(&messages), "Who?");
    }
}
