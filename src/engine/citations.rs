//! Citations: an answer may cite only what the run's searches returned.

use crate::store::Hit;

/// Keeps the citations that name a source some search returned, and takes every other `[id]`
/// out of the answer text: an id no search returned is never passed on, whether the model
/// listed it or only wrote it. Bracketed text followed by `(` is a Markdown link, not a
/// citation, and stays.
pub(super) fn validate_citations(
    answer: &str,
    claimed: &[String],
    sources: &[Hit],
) -> (String, Vec<String>) {
    let known = |id: &str| sources.iter().any(|hit| hit.id == id);
    let mut citations: Vec<String> = Vec::new();
    let mut cite = |id: &str| {
        if known(id) && !citations.iter().any(|cited| cited == id) {
            citations.push(id.to_string());
        }
    };
    for id in claimed {
        cite(id);
    }
    let mut cleaned = String::with_capacity(answer.len());
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let marker = &after[..close];
        // In `[a [b]`, only `[b]` can be a marker: move on to the last opening bracket.
        if let Some(inner) = marker.rfind('[') {
            cleaned.push_str(&rest[..open + 1 + inner]);
            rest = &rest[open + 1 + inner..];
            continue;
        }
        let tail = &after[close + 1..];
        if known(marker) || tail.starts_with('(') {
            cite(marker);
            cleaned.push_str(&rest[..open + close + 2]);
            rest = tail;
            continue;
        }
        // The marker goes with the spaces that set it off, so no double space is left.
        cleaned.push_str(&rest[..open]);
        cleaned.truncate(cleaned.trim_end_matches([' ', '\t']).len());
        let starts_a_line = cleaned.is_empty() || cleaned.ends_with('\n');
        rest = if starts_a_line {
            tail.trim_start_matches([' ', '\t'])
        } else {
            tail
        };
    }
    cleaned.push_str(rest);
    (cleaned.trim().to_string(), citations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str) -> Hit {
        Hit {
            id: id.into(),
            content: String::new(),
            metadata: Default::default(),
            score: 1.0,
        }
    }

    #[test]
    fn citations_no_search_returned_are_dropped_from_list_and_text() {
        let (answer, citations) = validate_citations(
            "Porto [b] per [made-up] and [a].",
            &["b".into(), "made-up".into()],
            &[hit("a"), hit("b")],
        );
        assert_eq!(citations, vec!["b", "a"]);
        assert_eq!(answer, "Porto [b] per and [a].");
    }

    #[test]
    fn an_unknown_id_written_but_not_listed_leaves_the_text_too() {
        let (answer, citations) = validate_citations(
            "Klaxon makes it [zephyr] [invented].\n[ghost] Porto [klaxon][x].",
            &[],
            &[hit("zephyr"), hit("klaxon")],
        );
        assert_eq!(citations, vec!["zephyr", "klaxon"]);
        assert_eq!(answer, "Klaxon makes it [zephyr].\nPorto [klaxon].");
    }

    #[test]
    fn markdown_links_and_stray_brackets_are_not_citations() {
        let (answer, citations) = validate_citations(
            "See [the guide](https://example.com) and [a [zephyr] or [",
            &[],
            &[hit("zephyr")],
        );
        assert_eq!(citations, vec!["zephyr"]);
        assert_eq!(
            answer,
            "See [the guide](https://example.com) and [a [zephyr] or ["
        );
    }
}
