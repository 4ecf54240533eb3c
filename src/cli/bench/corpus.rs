//! The seeded synthetic corpus every bench suite writes and queries.

use serde_json::{Map, Value};

use crate::api::pb;

/// Seeded generator of short documents and queries that look like English to the search: a
/// third of the tokens common function words, the rest from a 30,000-word vocabulary with
/// Zipf-distributed ranks starting after `zipf_offset` (the head of an English Zipf curve being
/// function words). Real text has that shape; a small or flat vocabulary would
/// make every posting list hold every document.
pub(super) struct Corpus {
    state: u64,
    vocabulary: Vec<String>,
    zipf_offset: f64,
}

/// Function words mixed into documents and queries.
const FUNCTION_WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "for", "with", "on", "by", "as", "at", "from", "that",
];
const VOCABULARY_SIZE: usize = 30_000;
const WORDS_PER_DOCUMENT: usize = 30;

impl Corpus {
    pub(super) fn new(seed: u64, zipf_offset: usize) -> Self {
        let mut corpus = Corpus {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            vocabulary: Vec::with_capacity(VOCABULARY_SIZE),
            zipf_offset: zipf_offset.max(1) as f64,
        };
        const CONSONANTS: &[u8] = b"bcdfghjklmnprstvwz";
        const VOWELS: &[u8] = b"aeiou";
        while corpus.vocabulary.len() < VOCABULARY_SIZE {
            let syllables = 2 + (corpus.next() % 3) as usize;
            let mut word = String::new();
            for _ in 0..syllables {
                word.push(CONSONANTS[(corpus.next() % CONSONANTS.len() as u64) as usize] as char);
                word.push(VOWELS[(corpus.next() % VOWELS.len() as u64) as usize] as char);
            }
            corpus.vocabulary.push(word);
        }
        corpus
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, seeded, good enough for picking words.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn word(&mut self) -> String {
        if self.next().is_multiple_of(3) {
            let index = (self.next() % FUNCTION_WORDS.len() as u64) as usize;
            return FUNCTION_WORDS[index].to_string();
        }
        // A log-uniform draw over [offset, offset + size) approximates Zipf's law (exponent 1)
        // for the ranks after the first `offset`, which in English are the function words.
        let (offset, size) = (self.zipf_offset, VOCABULARY_SIZE as f64);
        let position = (offset.ln() + self.uniform() * ((offset + size).ln() - offset.ln())).exp();
        let rank = (position - offset) as usize;
        self.vocabulary[rank.min(VOCABULARY_SIZE - 1)].clone()
    }

    pub(super) fn document(&mut self, index: usize) -> (String, Map<String, Value>) {
        let words: Vec<String> = (0..WORDS_PER_DOCUMENT).map(|_| self.word()).collect();
        let mut metadata = Map::new();
        metadata.insert("group".into(), Value::from(index % 10));
        (format!("{}.", words.join(" ")), metadata)
    }

    pub(super) fn proto_documents(&mut self, count: usize) -> Vec<pb::Document> {
        (0..count)
            .map(|index| {
                let (content, metadata) = self.document(index);
                pb::Document {
                    id: format!("doc-{index}"),
                    content,
                    metadata: Some(crate::api::convert::json_to_struct(metadata)),
                }
            })
            .collect()
    }

    pub(super) fn query(&mut self) -> String {
        (0..5).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}
