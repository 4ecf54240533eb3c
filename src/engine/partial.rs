//! The answer of a run that stopped early: the sentences of the sources found so far that best
//! cover the question, each cited. It needs no model, so it works whatever ran out.

use crate::store::Hit;
use crate::text;

/// Most sentences in a partial answer.
const MAX_SENTENCES: usize = 3;

/// A partial answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialAnswer {
    /// Answer text with `[id]` citations.
    pub text: String,
    /// Ids cited.
    pub citations: Vec<String>,
    /// Share of the question's terms the answer covers, 0 to 1.
    pub coverage: f64,
}

/// Builds a cited answer from `sources` by greedily picking the sentences that cover the most
/// question terms not yet covered.
pub fn synthesize(question: &str, sources: &[Hit], reason: &str) -> PartialAnswer {
    let question_terms = text::stemmed_terms(question);
    let candidates: Vec<(&str, &str, Vec<String>)> = sources
        .iter()
        .flat_map(|hit| {
            text::sentences(&hit.content)
                .into_iter()
                .map(move |sentence| (hit.id.as_str(), sentence, text::stemmed_terms(sentence)))
        })
        .collect();

    let mut covered: Vec<&String> = Vec::new();
    let mut picked: Vec<(&str, &str)> = Vec::new();
    while picked.len() < MAX_SENTENCES {
        let best = candidates
            .iter()
            .filter(|(_, sentence, _)| !picked.iter().any(|(_, chosen)| chosen == sentence))
            .map(|(id, sentence, terms)| {
                let gain = question_terms
                    .iter()
                    .filter(|term| terms.contains(term) && !covered.contains(term))
                    .count();
                (gain, *id, *sentence)
            })
            // `max_by_key` keeps the last maximum; reversing keeps the earliest, best-ranked one.
            .rev()
            .max_by_key(|(gain, _, _)| *gain);
        let Some((gain, id, sentence)) = best else {
            break;
        };
        if gain == 0 {
            break;
        }
        covered.extend(
            question_terms
                .iter()
                .filter(|term| text::stemmed_terms(sentence).contains(term)),
        );
        picked.push((id, sentence));
    }

    if picked.is_empty() {
        return PartialAnswer {
            text: format!(
                "No answer could be completed ({reason}); {} source(s) were found, none of them on the question.",
                sources.len()
            ),
            citations: Vec::new(),
            coverage: 0.0,
        };
    }
    let mut citations: Vec<String> = Vec::new();
    let mut answer = format!(
        "Partial answer ({reason}), from the {} source(s) found so far:",
        sources.len()
    );
    for (id, sentence) in &picked {
        answer.push_str(&format!(" {sentence} [{id}]"));
        if !citations.iter().any(|cited| cited == id) {
            citations.push((*id).to_string());
        }
    }
    covered.sort();
    covered.dedup();
    PartialAnswer {
        text: answer,
        citations,
        coverage: covered.len() as f64 / question_terms.len().max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, content: &str) -> Hit {
        Hit {
            id: id.into(),
            content: content.into(),
            metadata: Default::default(),
            score: 1.0,
        }
    }

    #[test]
    fn picks_the_sentences_that_cover_the_question() {
        let sources = [
            hit(
                "a",
                "The Zephyr blender is made by Klaxon. Lunch is at noon.",
            ),
            hit("b", "Klaxon is headquartered in Porto."),
        ];
        let answer = synthesize(
            "Where is the maker of the Zephyr blender headquartered?",
            &sources,
            "budget exhausted",
        );
        assert_eq!(answer.citations, vec!["a", "b"]);
        assert!(answer.text.contains("Porto"));
        assert!(!answer.text.contains("noon"));
        assert!(answer.coverage > 0.5);
    }

    #[test]
    fn at_most_three_sentences_each_source_cited_once() {
        let sources = [hit(
            "a",
            "Alpha is here. Beta is there. Gamma is near. Delta is far.",
        )];
        let answer = synthesize("alpha beta gamma delta", &sources, "time");
        assert_eq!(answer.citations, vec!["a"]);
        assert_eq!(answer.text.matches("[a]").count(), 3);
        assert_eq!(answer.coverage, 0.75);
    }

    #[test]
    fn says_so_when_nothing_is_relevant() {
        let answer = synthesize("Where is Porto?", &[hit("a", "Lunch is at noon.")], "time");
        assert!(answer.citations.is_empty());
        assert!(answer.text.contains("1 source(s)"));
    }
}
