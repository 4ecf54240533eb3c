//! Feature-hashing embedder: deterministic vectors with no model to download.
//!
//! Each text becomes a bag of features hashed into `dimension` signed buckets:
//!
//! * word unigrams: the crude stem ([`text::stem`]) of every non-stopword, so that
//!   "documents" and "document" share a feature;
//! * word bigrams: pairs of consecutive non-stopword stems. Stopwords are removed before
//!   pairing, so "maker of the zephyr" yields "maker zephyr": pairs such as "of the" occur in
//!   every text and would only add noise;
//! * character 3-grams of every non-stopword, padded with `^` and `$` ("^ze", "zep", …, "yr$"),
//!   which match misspellings and word forms the stemmer misses.
//!
//! Each feature counts `weight * (1 + ln(tf))`, with words weighing more than character n-grams,
//! and the vector is L2-normalised so that a dot product is a cosine similarity.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{EmbedError, Embedder, Embedding};
use crate::text;

/// Number of buckets used when none is configured.
pub const DEFAULT_DIMENSION: usize = 4096;

/// Version of the feature set; changing any feature or weight must bump it, because the id
/// decides whether persisted vectors are still valid.
const FEATURE_VERSION: &str = "hashing-v1";

const UNIGRAM_WEIGHT: f32 = 1.0;
const BIGRAM_WEIGHT: f32 = 0.7;
const TRIGRAM_WEIGHT: f32 = 0.3;

/// Prefixes keep the feature kinds apart: the unigram "ing" and the 3-gram "ing" must not share
/// a bucket on purpose.
const UNIGRAM_TAG: u8 = b'w';
const BIGRAM_TAG: u8 = b'b';
const TRIGRAM_TAG: u8 = b'c';
const SEPARATOR: u8 = 0x1f;

/// Embeds text by feature hashing.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimension: usize,
}

impl HashingEmbedder {
    /// Creates an embedder with `dimension` buckets; a dimension of 0 is raised to 1.
    pub fn new(dimension: usize) -> Self {
        // Bucket indices are stored as u32.
        let dimension = dimension.clamp(1, u32::MAX as usize);
        Self { dimension }
    }

    /// Returns the embedding of one text.
    pub fn embed_text(&self, text: &str) -> Embedding {
        let mut features = FeatureCounts::default();
        let mut previous_stem: Option<String> = None;
        let mut chars: Vec<char> = Vec::new();
        for word in text::words(text) {
            if text::is_stopword(&word) {
                continue;
            }
            let stem = text::stem(&word);
            features.add(
                UNIGRAM_WEIGHT,
                feature_hash(UNIGRAM_TAG, &[stem.as_bytes()]),
            );
            if let Some(previous) = &previous_stem {
                features.add(
                    BIGRAM_WEIGHT,
                    feature_hash(BIGRAM_TAG, &[previous.as_bytes(), stem.as_bytes()]),
                );
            }

            chars.clear();
            chars.push('^');
            chars.extend(word.chars());
            chars.push('$');
            let mut buffer = [0u8; 12];
            for window in chars.windows(3) {
                let mut length = 0;
                for ch in window {
                    length += ch.encode_utf8(&mut buffer[length..]).len();
                }
                features.add(
                    TRIGRAM_WEIGHT,
                    feature_hash(TRIGRAM_TAG, &[&buffer[..length]]),
                );
            }
            previous_stem = Some(stem.to_string());
        }
        features.into_embedding(self.dimension)
    }
}

impl Default for HashingEmbedder {
    fn default() -> Self {
        Self::new(DEFAULT_DIMENSION)
    }
}

#[async_trait]
impl Embedder for HashingEmbedder {
    fn id(&self) -> String {
        format!("{FEATURE_VERSION}:{}", self.dimension)
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        Ok(texts.iter().map(|text| self.embed_text(text)).collect())
    }
}

/// Term frequencies keyed by the 64-bit feature hash, so that bucket collisions between
/// different features do not inflate each other's frequency before the sublinear weighting.
#[derive(Default)]
struct FeatureCounts {
    counts: HashMap<u64, (f32, u32)>,
}

impl FeatureCounts {
    fn add(&mut self, weight: f32, hash: u64) {
        let entry = self.counts.entry(hash).or_insert((weight, 0));
        entry.1 += 1;
    }

    fn into_embedding(self, dimension: usize) -> Embedding {
        let mut buckets: HashMap<u32, f32> = HashMap::with_capacity(self.counts.len());
        for (hash, (weight, count)) in self.counts {
            let value = weight * (1.0 + (count as f32).ln());
            let bucket = (hash % dimension as u64) as u32;
            // The sign bit makes colliding features cancel on average instead of piling up.
            let signed = if hash >> 63 == 1 { -value } else { value };
            *buckets.entry(bucket).or_insert(0.0) += signed;
        }
        let mut entries: Vec<(u32, f32)> = buckets
            .into_iter()
            .filter(|(_, value)| *value != 0.0)
            .collect();
        entries.sort_unstable_by_key(|(index, _)| *index);

        let norm = entries
            .iter()
            .map(|(_, value)| value * value)
            .sum::<f32>()
            .sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Embedding::default();
        }
        let (indices, values) = entries
            .into_iter()
            .map(|(index, value)| (index, value / norm))
            .unzip();
        Embedding { indices, values }
    }
}

/// Hashes a tagged feature. FNV-1a is stable across builds and platforms (unlike std's hashers),
/// which matters because vectors are persisted; the final mix spreads FNV's weak low bits, which
/// pick the bucket.
fn feature_hash(tag: u8, parts: &[&[u8]]) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(&[tag]);
    for (position, part) in parts.iter().enumerate() {
        if position > 0 {
            hash.write(&[SEPARATOR]);
        }
        hash.write(part);
    }
    fmix64(hash.finish())
}

struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// MurmurHash3's 64-bit finaliser.
fn fmix64(mut key: u64) -> u64 {
    key ^= key >> 33;
    key = key.wrapping_mul(0xff51_afd7_ed55_8ccd);
    key ^= key >> 33;
    key = key.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    key ^= key >> 33;
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &Embedding, b: &Embedding) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0);
        while i < a.indices.len() && j < b.indices.len() {
            match a.indices[i].cmp(&b.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += a.values[i] * b.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }

    fn norm(embedding: &Embedding) -> f32 {
        embedding.values.iter().map(|v| v * v).sum::<f32>().sqrt()
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // Vectors are persisted, so the hash must never drift.
        let mut hash = Fnv1a::new();
        hash.write(b"a");
        assert_eq!(hash.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut hash = Fnv1a::new();
        hash.write(b"foobar");
        assert_eq!(hash.finish(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn embeddings_are_deterministic() {
        let embedder = HashingEmbedder::default();
        let text = "The Zephyr X is made by Northwind Aerospace in Toulouse.";
        assert_eq!(embedder.embed_text(text), embedder.embed_text(text));
        assert_eq!(
            embedder.embed_text(text),
            HashingEmbedder::new(DEFAULT_DIMENSION).embed_text(text)
        );
    }

    #[test]
    fn embeddings_are_normalised_sparse_and_sorted() {
        let embedder = HashingEmbedder::new(512);
        let embedding = embedder.embed_text("Quarterly revenue grew 12% in the platform division");
        assert!((norm(&embedding) - 1.0).abs() < 1e-5);
        assert_eq!(embedding.indices.len(), embedding.values.len());
        assert!(embedding.indices.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(embedding.indices.iter().all(|index| *index < 512));
        assert!(embedding.values.iter().all(|value| *value != 0.0));
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let embedder = HashingEmbedder::default();
        let question = embedder.embed_text("Where is the headquarters of Northwind Aerospace?");
        let related = embedder.embed_text("Northwind Aerospace is headquartered in Toulouse.");
        let unrelated = embedder.embed_text("The soup recipe needs two onions and some garlic.");
        assert!(dot(&question, &related) > 0.2);
        assert!(dot(&question, &related) > dot(&question, &unrelated) + 0.2);
    }

    #[test]
    fn empty_and_stopword_only_texts_give_empty_embeddings() {
        let embedder = HashingEmbedder::default();
        for text in ["", "   ", "!!! ...", "the of and"] {
            let embedding = embedder.embed_text(text);
            assert_eq!(embedding, Embedding::default(), "{text:?}");
            assert!(embedding.values.iter().all(|value| value.is_finite()));
        }
    }

    #[test]
    fn id_names_the_feature_set_and_dimension() {
        assert_eq!(HashingEmbedder::default().id(), "hashing-v1:4096");
        assert_eq!(HashingEmbedder::new(0).dimension(), 1);
    }

    #[tokio::test]
    async fn embed_returns_one_vector_per_text_in_order() {
        let embedder = HashingEmbedder::new(256);
        let texts = vec!["alpha".to_string(), String::new(), "beta gamma".to_string()];
        let embeddings = embedder.embed(&texts).await.unwrap_or_default();
        assert_eq!(embeddings.len(), 3);
        assert_eq!(embeddings[0], embedder.embed_text("alpha"));
        assert!(embeddings[1].indices.is_empty());
    }
}
