//! Text handling shared by the hashing embedder, keyword search and the extractive reader:
//! one notion of a word, of a stopword and of a sentence keeps them consistent.

/// Words too common to carry meaning in a question or a passage.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "being", "both", "but", "by", "can", "could", "did", "do", "does", "doing",
    "done", "each", "for", "from", "had", "has", "have", "having", "he", "her", "here", "hers",
    "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "me", "more", "most", "my",
    "no", "nor", "not", "of", "on", "once", "only", "or", "other", "our", "ours", "out", "over",
    "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs",
    "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under",
    "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who",
    "whom", "whose", "why", "will", "with", "would", "you", "your", "yours", "tell", "please",
    "does", "there", "named", "called",
];

/// Returns true for a lowercase word that carries no meaning on its own.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.contains(&word)
}

/// Splits text into lowercase alphanumeric words, keeping inner apostrophes and hyphens out.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// Returns the words of `text` that carry meaning, in order, without duplicates.
pub fn content_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in words(text) {
        if !is_stopword(&word) && !terms.contains(&word) {
            terms.push(word);
        }
    }
    terms
}

/// Reduces a word to a crude stem so that "headquarters" and "headquartered" meet.
pub fn stem(word: &str) -> &str {
    for suffix in ["ing", "ed", "es", "s", "ers", "er"] {
        if word.len() > suffix.len() + 3
            && let Some(stripped) = word.strip_suffix(suffix)
        {
            return stripped;
        }
    }
    word
}

/// Returns the stems of the words of `text` that carry meaning, without duplicates.
pub fn stemmed_terms(text: &str) -> Vec<String> {
    let mut stems: Vec<String> = Vec::new();
    for term in content_terms(text) {
        let stemmed = stem(&term).to_string();
        if !stems.contains(&stemmed) {
            stems.push(stemmed);
        }
    }
    stems
}

/// Splits a passage into sentences on `.`, `!`, `?` and line breaks, trimming each.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (index, ch) in text.char_indices() {
        let boundary = match ch {
            '\n' => true,
            '.' | '!' | '?' => {
                let next = bytes.get(index + 1).copied();
                // "v1.2" or "e.g." inside a sentence: only a following space or end splits.
                next.is_none_or(|b| b == b' ' || b == b'\n' || b == b'\r')
            }
            _ => false,
        };
        if boundary {
            let end = index + ch.len_utf8();
            push_sentence(&mut sentences, &text[start..end]);
            start = end;
        }
    }
    push_sentence(&mut sentences, &text[start..]);
    sentences
}

fn push_sentence<'a>(sentences: &mut Vec<&'a str>, candidate: &'a str) {
    let trimmed = candidate.trim().trim_start_matches('#').trim();
    if trimmed.chars().any(char::is_alphanumeric) {
        sentences.push(trimmed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_terms_drop_stopwords_and_duplicates() {
        assert_eq!(
            content_terms("Which city is the maker of the Zephyr X in? The city!"),
            vec!["city", "maker", "zephyr", "x"]
        );
    }

    #[test]
    fn sentences_split_on_terminal_punctuation_only() {
        let text = "# Title\nVersion 1.2 ships today. Is it good? Yes!";
        assert_eq!(
            sentences(text),
            vec!["Title", "Version 1.2 ships today.", "Is it good?", "Yes!"]
        );
    }

    #[test]
    fn stem_joins_word_forms() {
        assert_eq!(stem("headquartered"), stem("headquarters"));
        assert_eq!(stem("city"), "city");
    }
}
