//! The keyword side of a search: FTS5 queries, the terms worth ranking by, and BM25 order
//! computed from an unsorted match.

use std::cmp;
use std::collections::BinaryHeap;

use rusqlite::{Connection, params};

use super::super::index::VectorIndex;
use super::super::{Filter, StoreError};
use crate::text;

/// Bounds the cost of a keyword query built from a very long search text.
const MAX_MATCH_TERMS: usize = 64;
/// Share of the indexed documents above which a term is too common to rank by.
const COMMON_TERM_SHARE: f64 = 0.10;
/// Below this many indexed documents every term is cheap enough to rank by.
const MIN_DOCUMENTS_TO_PRUNE: usize = 2_000;

/// Returns the rowids of the best keyword matches in the collection that pass the filter, best
/// first.
///
/// FTS5 would rank them itself under `ORDER BY rank`, but it then prepares a statement for its
/// sorter on every query, which costs more than the ranking does. Ranking here gives the same
/// order: by BM25 with the weights of the table's `rank` setting, ties by rowid, which is the
/// order in which FTS5 returns matches to its (stable) sorter.
pub(super) fn keyword_candidates(
    connection: &Connection,
    keyword: &KeywordQuery,
    limit: usize,
    index: &VectorIndex,
    filter: &Filter,
    indexed_documents: usize,
) -> Result<Vec<i64>, StoreError> {
    let terms = rankable_terms(connection, keyword, indexed_documents)?;
    let expression = keyword.expression(&terms);
    let mut statement = connection.prepare_cached(
        "SELECT rowid, bm25(documents_fts, 1.0, 0.0) FROM documents_fts \
         WHERE documents_fts MATCH ?1",
    )?;
    let mut matches = Vec::new();
    let mut rows = statement.query([&expression])?;
    while let Some(row) = rows.next()? {
        matches.push(KeywordMatch {
            rowid: row.get(0)?,
            // SQLite turns a NaN into NULL, which sorts first.
            bm25: row.get::<_, Option<f64>>(1)?.unwrap_or(f64::NEG_INFINITY),
        });
    }
    // Heapifying is linear and each pop logarithmic, so only as much of the order as the
    // filter needs is paid for. Rows are checked in rank order until enough pass, so a
    // document in the collection that matches the filter is never lost behind better-ranked
    // ones that do not.
    let mut best_first = BinaryHeap::from(matches);
    let mut rowids = Vec::with_capacity(limit.min(best_first.len()));
    while rowids.len() < limit
        && let Some(candidate) = best_first.pop()
    {
        if index.matches(candidate.rowid, filter) {
            rowids.push(candidate.rowid);
        }
    }
    Ok(rowids)
}

/// A keyword match, ordered so that the greatest is the best: the lowest BM25 (FTS5 negates
/// the score so that ascending order is best first), then the lowest rowid.
#[derive(Debug, Clone, Copy)]
struct KeywordMatch {
    rowid: i64,
    bm25: f64,
}

impl Ord for KeywordMatch {
    fn cmp(&self, other: &Self) -> cmp::Ordering {
        // `partial_cmp` compares as SQLite does (-0.0 equals 0.0); scores are never NaN.
        other
            .bm25
            .partial_cmp(&self.bm25)
            .unwrap_or(cmp::Ordering::Equal)
            .then_with(|| other.rowid.cmp(&self.rowid))
    }
}

impl PartialOrd for KeywordMatch {
    fn partial_cmp(&self, other: &Self) -> Option<cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for KeywordMatch {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == cmp::Ordering::Equal
    }
}

impl Eq for KeywordMatch {}

/// An FTS5 query for one search.
#[derive(Debug, PartialEq)]
pub(super) struct KeywordQuery {
    pub(super) collection_id: i64,
    /// The query's content terms, at most [`MAX_MATCH_TERMS`].
    pub(super) terms: Vec<String>,
    /// True when the expression itself restricts matches to the collection.
    pub(super) scoped: bool,
}

impl KeywordQuery {
    /// Builds the FTS5 expression matching any of `terms`, each quoted so that nothing in the
    /// query is read as FTS5 syntax.
    pub(super) fn expression(&self, terms: &[String]) -> String {
        let alternatives: Vec<String> = terms
            .iter()
            .map(|term| format!("\"{}\"", term.replace('"', "\"\"")))
            .collect();
        let alternatives = alternatives.join(" OR ");
        if self.scoped {
            format!(
                "scope : \"c{}\" AND content : ({alternatives})",
                self.collection_id
            )
        } else {
            format!("content : ({alternatives})")
        }
    }
}

/// Takes the query's content terms. Returns `None` when the query has none, which skips the
/// keyword search.
pub(super) fn keyword_query(collection_id: i64, query: &str, scoped: bool) -> Option<KeywordQuery> {
    let mut terms = text::content_terms(query);
    if terms.is_empty() {
        return None;
    }
    terms.truncate(MAX_MATCH_TERMS);
    Some(KeywordQuery {
        collection_id,
        terms,
        scoped,
    })
}

/// Returns the terms worth ranking by. FTS5 computes BM25 for every matching row before it can
/// sort, so a term found in a large share of the documents makes a query cost as much as the
/// collection is large, while its inverse document frequency, and so its weight in the
/// ranking, is near zero. Such terms are dropped when a rarer one is present; when all are
/// common, only the rarest is kept. Frequencies come from FTS5 itself (so they follow its
/// tokenizer), counted only up to the threshold.
pub(super) fn rankable_terms(
    connection: &Connection,
    keyword: &KeywordQuery,
    indexed_documents: usize,
) -> Result<Vec<String>, StoreError> {
    if indexed_documents < MIN_DOCUMENTS_TO_PRUNE || keyword.terms.len() < 2 {
        return Ok(keyword.terms.clone());
    }
    let threshold = (indexed_documents as f64 * COMMON_TERM_SHARE) as i64;
    let mut count = connection.prepare_cached(
        "SELECT count(*) FROM \
         (SELECT 1 FROM documents_fts WHERE documents_fts MATCH ?1 LIMIT ?2)",
    )?;
    let mut counted: Vec<(i64, &String)> = Vec::with_capacity(keyword.terms.len());
    for term in &keyword.terms {
        let expression = format!("content : \"{}\"", term.replace('"', "\"\""));
        let documents: i64 =
            count.query_row(params![expression, threshold + 1], |row| row.get(0))?;
        counted.push((documents, term));
    }
    let rare: Vec<String> = counted
        .iter()
        .filter(|(documents, _)| *documents <= threshold)
        .map(|(_, term)| (*term).clone())
        .collect();
    if !rare.is_empty() {
        return Ok(rare);
    }
    Ok(counted
        .iter()
        .min_by_key(|(documents, _)| *documents)
        .map(|(_, term)| vec![(*term).clone()])
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_matches_are_equal_exactly_when_their_order_says_so() {
        let at = |rowid, bm25| KeywordMatch { rowid, bm25 };
        assert_eq!(at(4, -1.5), at(4, -1.5));
        // SQLite's -0.0 is its 0.0.
        assert_eq!(at(4, -0.0), at(4, 0.0));
        assert_ne!(at(4, -1.5), at(5, -1.5));
        assert_ne!(at(4, -1.5), at(4, -2.5));
        assert!(at(4, -2.5) > at(4, -1.5), "a lower BM25 is better");
        assert!(at(4, -1.5) > at(5, -1.5), "ties go to the lower rowid");
    }
}
