//! Every text the engine shows a model, in one place. Changing any of it changes answers, so
//! [`PROMPT_VERSION`] goes into result cache keys and must be bumped with it.

use std::sync::{Arc, LazyLock};

use serde_json::json;

use crate::llm::ToolSpec;

/// Version of the prompts and tool protocol below.
pub const PROMPT_VERSION: u32 = 1;

pub use crate::llm::protocol::{LLM_QUERY, LLM_QUERY_BATCHED, QUESTION_MARKER, SEARCH_DB, SUBMIT};

const SYSTEM_PROMPT: &str = "\
You answer questions about a document collection. You cannot see the collection: you learn \
what it holds only by calling tools.

Tools:
- search_db(query, top_k?, filters?): hybrid keyword and semantic search. Returns JSON \
{\"hits\": [{\"id\", \"score\", \"content\", \"metadata\"}]}. Filters narrow the search by \
metadata; they can never widen what the caller allowed.
- llm_query(prompt): asks a helper model to read or digest text you give it; returns \
{\"response\"}.
- llm_query_batched(prompts): the same for several prompts at once; returns {\"responses\"}, \
one per prompt, in order; a failed prompt yields a string starting with \"error:\".
- submit(answer, citations, certainty): ends the work with your final answer.

Strategy:
1. Search for the question's key terms first.
2. Read the hits. If they name a person, product, team, company or place that the question \
does not name but that the answer depends on, search for it: answers often take two or more \
hops.
3. Search again with different words when hits are off topic.
4. When the hits support an answer, call submit. Cite every passage you rely on as [id] in the \
answer text and list the ids in citations. Cite only ids that searches returned.
5. If the collection does not contain the answer, say so plainly rather than guess, with a low \
certainty.
Be concise and precise. Calls of one turn run concurrently, so batch independent searches.";

/// Returns the system prompt, with the caller's extra instructions if any.
pub fn system_prompt(root_prompt: &str) -> String {
    if root_prompt.trim().is_empty() {
        SYSTEM_PROMPT.to_string()
    } else {
        format!(
            "{SYSTEM_PROMPT}\n\nAdditional instructions from the caller:\n{}",
            root_prompt.trim()
        )
    }
}

/// Returns the user message: the collection, its size, the caller's context and the question.
pub fn user_message(
    query: &str,
    collection: &str,
    document_count: u64,
    context_prefix: &str,
) -> String {
    let mut message = format!("Collection: {collection} ({document_count} documents)\n");
    if !context_prefix.trim().is_empty() {
        message.push_str(&format!("Context: {}\n", context_prefix.trim()));
    }
    message.push_str(&format!("\n{QUESTION_MARKER} {}", query.trim()));
    message
}

/// Returns the instruction for the call that sums up a run that stopped early.
pub fn synthesis_system_prompt() -> &'static str {
    "The research on a question stopped before it was finished. Answer the question as well \
     as the passages below allow, citing each passage you use as [id]. Say plainly what the \
     passages do not settle. Be brief."
}

/// Most characters of one passage shown to the summing-up call.
const SYNTHESIS_PASSAGE_CHARS: usize = 2_000;

/// Returns the user message of the summing-up call: the question and the passages found.
pub fn synthesis_user_message(question: &str, passages: &[(&str, &str)]) -> String {
    let mut message = format!("{QUESTION_MARKER} {}\n\nPassages:\n", question.trim());
    for (id, content) in passages {
        let excerpt: String = content.chars().take(SYNTHESIS_PASSAGE_CHARS).collect();
        message.push_str(&format!("\n[{id}]\n{excerpt}\n"));
    }
    message
}

const SINGLE_PASS_PROMPT: &str = "\
You answer questions about a document collection from the passages of one search, which the \
conversation shows. There is no further search. Call submit with your answer: cite every \
passage you rely on as [id] in the answer text and list the ids in citations. If the passages \
do not contain the answer, say so plainly rather than guess, with a low certainty. Be concise \
and precise.";

/// Returns the system prompt of a single-pass query, with the caller's extra instructions if
/// any.
pub fn single_pass_system_prompt(root_prompt: &str) -> String {
    if root_prompt.trim().is_empty() {
        SINGLE_PASS_PROMPT.to_string()
    } else {
        format!(
            "{SINGLE_PASS_PROMPT}\n\nAdditional instructions from the caller:\n{}",
            root_prompt.trim()
        )
    }
}

/// Returns the tools offered to a single-pass answer call: `submit` alone.
pub fn single_pass_tools() -> Arc<[ToolSpec]> {
    static TOOLS: LazyLock<Arc<[ToolSpec]>> = LazyLock::new(|| {
        Arc::from(
            tool_specs()
                .into_iter()
                .filter(|tool| tool.name == SUBMIT)
                .collect::<Vec<_>>(),
        )
    });
    Arc::clone(&TOOLS)
}

/// Returns the instruction for the sub-model, which gets no tools.
pub fn sub_model_system_prompt() -> &'static str {
    "You are a careful reader. Answer from the text you are given only, briefly."
}

/// Returns the tools offered to the root model: one shared set, built once.
pub fn tools() -> Arc<[ToolSpec]> {
    static TOOLS: LazyLock<Arc<[ToolSpec]>> = LazyLock::new(|| Arc::from(tool_specs()));
    Arc::clone(&TOOLS)
}

fn tool_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: SEARCH_DB,
            description: "Search the document collection. Returns the best passages with ids.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to search for."},
                    "top_k": {"type": "integer", "minimum": 1, "description": "Passages wanted."},
                    "filters": {
                        "type": "object",
                        "description": "Metadata conditions: {\"key\": value} or {\"key\": {\"$gte\": 3}}; operators $eq $ne $in $gt $gte $lt $lte."
                    }
                },
                "required": ["query"]
            }),
        },
        ToolSpec {
            name: LLM_QUERY,
            description: "Ask a helper model to read or digest text. Returns its response.",
            parameters: json!({
                "type": "object",
                "properties": {"prompt": {"type": "string"}},
                "required": ["prompt"]
            }),
        },
        ToolSpec {
            name: LLM_QUERY_BATCHED,
            description: "Ask a helper model several prompts concurrently. Returns one response per prompt.",
            parameters: json!({
                "type": "object",
                "properties": {"prompts": {"type": "array", "items": {"type": "string"}}},
                "required": ["prompts"]
            }),
        },
        ToolSpec {
            name: SUBMIT,
            description: "Finish with the final answer.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "answer": {"type": "string", "description": "The answer, citing passages as [id]."},
                    "citations": {"type": "array", "items": {"type": "string"}, "description": "Ids of the passages the answer rests on."},
                    "certainty": {"type": "number", "minimum": 0, "maximum": 1}
                },
                "required": ["answer"]
            }),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_instructions_follow_the_system_prompts_and_blank_ones_add_nothing() {
        for (prompt, base) in [
            (system_prompt as fn(&str) -> String, SYSTEM_PROMPT),
            (single_pass_system_prompt, SINGLE_PASS_PROMPT),
        ] {
            assert_eq!(prompt(" \n "), base);
            let with_extra = prompt("  Answer in French.  ");
            assert!(with_extra.starts_with(base));
            assert!(
                with_extra
                    .ends_with("\n\nAdditional instructions from the caller:\nAnswer in French.")
            );
        }
        assert!(SINGLE_PASS_PROMPT.contains("There is no further search"));
        assert!(sub_model_system_prompt().contains("from the text you are given only"));
    }

    #[test]
    fn the_user_message_names_the_collection_and_carries_context_only_when_given() {
        assert_eq!(
            user_message(" Who? ", "handbook", 42, "  "),
            format!("Collection: handbook (42 documents)\n\n{QUESTION_MARKER} Who?")
        );
        assert_eq!(
            user_message("Who?", "handbook", 42, " The 2024 edition. "),
            format!(
                "Collection: handbook (42 documents)\nContext: The 2024 edition.\n\n{QUESTION_MARKER} Who?"
            )
        );
    }

    #[test]
    fn the_summing_up_shows_each_passage_cut_to_its_limit() {
        let long = "é".repeat(SYNTHESIS_PASSAGE_CHARS + 10);
        let message = synthesis_user_message(" Who? ", &[("a", "short"), ("b", &long)]);
        let expected_long = "é".repeat(SYNTHESIS_PASSAGE_CHARS);
        assert_eq!(
            message,
            format!("{QUESTION_MARKER} Who?\n\nPassages:\n\n[a]\nshort\n\n[b]\n{expected_long}\n")
        );
    }

    #[test]
    fn a_single_pass_is_offered_submit_alone_and_the_loop_every_tool() {
        let names = |tools: Arc<[ToolSpec]>| -> Vec<&'static str> {
            tools.iter().map(|tool| tool.name).collect()
        };
        assert_eq!(names(single_pass_tools()), vec![SUBMIT]);
        assert_eq!(
            names(tools()),
            vec![SEARCH_DB, LLM_QUERY, LLM_QUERY_BATCHED, SUBMIT]
        );
    }
}
