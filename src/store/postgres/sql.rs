//! The SQL of a search: metadata filters compiled to parameterised conditions, the hybrid
//! statement, and the text forms of vectors and keyword queries.
//!
//! Nothing from a request is spliced into SQL text: keys and values of filters, the query's
//! words and its vector all travel as parameters. The only numbers formatted into the text are
//! the embedder's dimension and parameter positions.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::super::Filter;
use super::super::filter::{Condition, Operator};
use crate::embed::Embedding;

/// pgvector stores a `sparsevec` of at most this many non-zero elements.
pub(super) const MAX_STORED_NONZERO: usize = 16_000;

/// A compiled filter: a boolean SQL expression over `d.metadata`, and its parameters, all
/// text, numbered from the `first` position given to [`compile_filter`].
#[derive(Debug, Default, PartialEq)]
pub(super) struct CompiledFilter {
    pub(super) sql: String,
    pub(super) parameters: Vec<String>,
}

/// Compiles a filter to SQL with the semantics of [`Filter::matches`]: a missing key fails
/// every operator but `$ne`; an array value matches when any element does (and fails `$ne`
/// when any is equal); numbers compare as numbers (jsonb equality is numeric: `1 = 1.0`);
/// strings order by code point (`COLLATE "C"` on UTF-8 is byte order, which is code point
/// order); an ordering between a number and a string is false.
pub(super) fn compile_filter(filter: &Filter, first: usize) -> CompiledFilter {
    let mut compiled = CompiledFilter::default();
    let mut parts = Vec::new();
    for condition in filter.conditions() {
        parts.push(compile_condition(
            condition,
            first,
            &mut compiled.parameters,
        ));
    }
    compiled.sql = if parts.is_empty() {
        "TRUE".to_string()
    } else {
        parts.join(" AND ")
    };
    compiled
}

fn compile_condition(condition: &Condition, first: usize, parameters: &mut Vec<String>) -> String {
    let mut parameter = |value: String| {
        parameters.push(value);
        format!("${}", first + parameters.len() - 1)
    };
    let symbol = match condition.operator {
        Operator::Eq | Operator::In => {
            return format!("({})", containment(condition, &mut parameter));
        }
        Operator::Ne => return format!("(NOT {})", containment(condition, &mut parameter)),
        Operator::Gt => ">",
        Operator::Gte => ">=",
        Operator::Lt => "<",
        Operator::Lte => "<=",
    };
    let key = parameter(condition.key.clone());
    let present = format!("(d.metadata ? {key}::text)");
    // The value itself, or each element of an array value.
    let elements = format!(
        "jsonb_array_elements(CASE jsonb_typeof(d.metadata -> {key}::text) \
         WHEN 'array' THEN d.metadata -> {key}::text \
         ELSE jsonb_build_array(d.metadata -> {key}::text) END) AS element(value)"
    );
    let test = match &condition.value {
        Value::Number(number) => {
            let value = parameter(number.to_string());
            // CASE, not AND: SQL does not promise to test the type before the cast.
            format!(
                "CASE WHEN jsonb_typeof(element.value) = 'number' \
                 THEN (element.value)::numeric {symbol} {value}::text::numeric \
                 ELSE FALSE END"
            )
        }
        Value::String(text) => {
            let value = parameter(text.clone());
            format!(
                "CASE WHEN jsonb_typeof(element.value) = 'string' \
                 THEN (element.value #>> '{{}}') COLLATE \"C\" {symbol} {value}::text \
                 ELSE FALSE END"
            )
        }
        // The parser admits only numbers and strings here.
        _ => "FALSE".to_string(),
    };
    format!("({present} AND EXISTS (SELECT 1 FROM {elements} WHERE {test}))")
}

/// Whether the row's value for the key equals an operand of `$eq`, `$ne` or `$in`, as jsonb
/// containment: `{"k": v}` is contained in the metadata when its value for k equals v
/// (numbers numerically), and `{"k": [v]}` when that value is an array holding v, so one
/// C-level test a row covers both. The probes become an array once per statement (an
/// InitPlan); the per-row subquery over the row's elements that equality used before cost
/// more than the ranking on filtered searches.
fn containment(condition: &Condition, parameter: &mut impl FnMut(String) -> String) -> String {
    let operands: Vec<&Value> = match condition.operator {
        // The parser admits only an array here; anything else matches nothing.
        Operator::In => condition
            .value
            .as_array()
            .map(|values| values.iter().collect())
            .unwrap_or_default(),
        _ => vec![&condition.value],
    };
    let probe = |value: Value| Value::Object(Map::from_iter([(condition.key.clone(), value)]));
    let probes: Vec<Value> = operands
        .into_iter()
        .flat_map(|operand| {
            [
                probe(operand.clone()),
                probe(Value::Array(vec![operand.clone()])),
            ]
        })
        .collect();
    let probes = parameter(Value::Array(probes).to_string());
    format!("d.metadata @> ANY (ARRAY(SELECT jsonb_array_elements({probes}::text::jsonb)))")
}

/// Writes a vector in pgvector's `sparsevec` text form, `{index:value,…}/dimension`, with
/// 1-based indices. Beyond [`MAX_STORED_NONZERO`] non-zero values only the largest are kept
/// (and the vector normalised again), since pgvector stores no more: only an embedder
/// configured with more dimensions than that reaches it, on long documents, whose strongest
/// features carry their similarity.
pub(super) fn sparsevec_text(embedding: &Embedding, dimension: usize) -> String {
    let mut pairs: Vec<(u32, f32)> = embedding
        .indices
        .iter()
        .copied()
        .zip(embedding.values.iter().copied())
        .filter(|(index, _)| (*index as usize) < dimension)
        .collect();
    if pairs.len() > MAX_STORED_NONZERO {
        pairs.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        pairs.truncate(MAX_STORED_NONZERO);
        pairs.sort_by_key(|(index, _)| *index);
        let norm = pairs
            .iter()
            .map(|(_, value)| value * value)
            .sum::<f32>()
            .sqrt();
        if norm > 0.0 && norm.is_finite() {
            for (_, value) in &mut pairs {
                *value /= norm;
            }
        }
    }
    let mut text = String::with_capacity(pairs.len() * 14 + 8);
    text.push('{');
    for (position, (index, value)) in pairs.iter().enumerate() {
        if position > 0 {
            text.push(',');
        }
        let _ = write!(text, "{}:{}", index + 1, value);
    }
    let _ = write!(text, "}}/{dimension}");
    text
}

/// Dimensions the hashing embedder's sparse vectors are folded to for the HNSW index.
pub(super) const FOLDED_DIMENSION: usize = 256;
/// The most dimensions pgvector indexes as `halfvec`: a dense embedder's vectors up to this
/// size enter the graph as they are.
const MAX_GRAPH_DIMENSION: usize = 4_000;

/// Returns the dimension of the vectors the HNSW graph is built over, for an embedder of
/// `dimension` dimensions, `dense` or not. A dense vector enters as it is. A sparse one (the
/// hashing embedder's) is folded to [`FOLDED_DIMENSION`]: HNSW over the sparse vectors
/// themselves inserted at 4 to 37 ms a row (hashed text is close to orthogonal, with hundreds
/// of non-zero values). Folding costs the graph recall, which the exact re-ranking cannot
/// give back: at 256 dimensions its proposals hold about an eighth of the exact top 10, and
/// the hybrid hits held half of an exact ranking's until the keyword matches were ranked by
/// vector beside them ([`search_statement`]); 1,024 dimensions cost four times the insertion
/// time and twice the search time for 0.71 (BENCHMARKS.md).
pub(super) fn graph_dimension(dimension: usize, dense: bool) -> usize {
    if dense && dimension <= MAX_GRAPH_DIMENSION {
        dimension
    } else {
        FOLDED_DIMENSION.min(dimension.max(1))
    }
}

/// Whether a graph of `graph_dimension` over vectors of `dimension` holds them folded (the
/// hashing embedder's) rather than whole.
pub(super) fn folds(dimension: usize, graph_dimension: usize) -> bool {
    graph_dimension != dimension
}

/// Writes a vector folded to `dimension` dense dimensions (dimension `i` adds into
/// `i % dimension`, then the result is normalised again) in pgvector's `halfvec` text form.
/// Folding is feature hashing once more: inner products survive it up to noise of about
/// `1/sqrt(dimension)`, which the exact re-ranking of the index's candidates by the sparse
/// vector removes from their order (not from which candidates the graph proposes). A vector
/// of at most `dimension` dimensions is only normalised.
pub(super) fn folded_text(embedding: &Embedding, dimension: usize) -> String {
    let dimension = dimension.max(1);
    let mut folded = vec![0f32; dimension];
    for (index, value) in embedding.indices.iter().zip(&embedding.values) {
        folded[*index as usize % dimension] += value;
    }
    let norm = folded.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for value in &mut folded {
            *value /= norm;
        }
    }
    let mut text = String::with_capacity(dimension * 8);
    text.push('[');
    for (position, value) in folded.iter().enumerate() {
        if position > 0 {
            text.push(',');
        }
        // halfvec keeps about three significant digits.
        let _ = write!(text, "{value:.4}");
    }
    text.push(']');
    text
}

/// Reads pgvector's `sparsevec` text form (`{index:value,…}/dimension`, 1-based) back into an
/// embedding; None when the text is not in that form.
pub(super) fn parse_sparsevec(text: &str) -> Option<Embedding> {
    let (pairs, _dimension) = text.strip_prefix('{')?.split_once("}/")?;
    let mut embedding = Embedding::default();
    for pair in pairs.split(',').filter(|pair| !pair.is_empty()) {
        let (index, value) = pair.split_once(':')?;
        let index: u32 = index.trim().parse().ok()?;
        embedding.indices.push(index.checked_sub(1)?);
        embedding.values.push(value.trim().parse().ok()?);
    }
    Some(embedding)
}

/// What reading one row through the HNSW graph costs against ranking one exactly: a graph
/// candidate of another collection is fetched from the heap only to be rejected by the
/// collection's condition (about 10 µs a row), a row ranked exactly is read by the
/// collection's index and its inner product taken (2–3 µs).
const GRAPH_TO_EXACT_COST: usize = 4;

/// How many more candidates a dense embedder's HNSW graph proposes than the vector ranking
/// keeps, so that the exact re-ranking can correct the graph's approximation. A folded graph
/// proposes only the candidates kept (see [`search_statement`]).
const OVERSAMPLE: usize = 3;

/// The upsert of a write's rows: `$1` the collection's id, then arrays of ids, contents,
/// metadata and sparse vectors, all text; without the HNSW index, `$6` the vectors the index
/// would be built over. With the index (`graphed`), `folded` stays NULL, so the write costs no
/// graph insertion: an indexer fills it in later ([`GRAPH_CLAIM`]), and searches rank the row
/// exactly until then. Without it, `folded` is written at once, ready for an index built later.
pub(super) fn write_statement(graphed: bool) -> String {
    let (folded, folded_array, folded_column) = if graphed {
        ("NULL::halfvec", "", "")
    } else {
        ("incoming.folded::halfvec", ", $6::text[]", ", folded")
    };
    format!(
        "INSERT INTO deeprecall_documents (collection_id, doc_id, content, metadata, embedding, folded)
SELECT $1, doc_id, content, metadata::jsonb, embedding::sparsevec, {folded}
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]{folded_array})
    AS incoming (doc_id, content, metadata, embedding{folded_column})
ON CONFLICT (collection_id, doc_id) DO UPDATE SET content = excluded.content,
    metadata = excluded.metadata, embedding = excluded.embedding, folded = excluded.folded"
    )
}

/// Claims up to `$1` rows waiting for the graph, with their sparse vectors, among the
/// collections embedder `$2` made. The rows stay locked until the claiming transaction ends;
/// rows another transaction holds (a writer replacing them, another indexer, a reindex
/// swapping vectors in) are skipped, so indexers on several replicas share the waiting rows
/// instead of queueing on them.
pub(super) const GRAPH_CLAIM: &str = "SELECT id, embedding::text FROM deeprecall_documents \
     WHERE folded IS NULL \
     AND collection_id IN (SELECT id FROM deeprecall_collections WHERE embedder = $2) \
     LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Fills in the graph's vectors of claimed rows: `$1` their ids, `$2` the vectors, as text.
pub(super) const GRAPH_FILL: &str = "UPDATE deeprecall_documents d SET folded = v.folded::halfvec \
     FROM unnest($1::bigint[], $2::text[]) AS v (id, folded) WHERE d.id = v.id";

/// Returns the position of the filter's first parameter in [`search_statement`].
pub(super) fn filter_start(through_graph: bool) -> usize {
    if through_graph { 10 } else { 9 }
}

/// Builds a `to_tsquery` input matching any of the terms, each quoted so that nothing in
/// them is read as tsquery syntax. Empty when there are no terms.
pub(super) fn any_term_query(terms: &[String]) -> String {
    let quoted: Vec<String> = terms
        .iter()
        .map(|term| format!("'{}'", term.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    quoted.join(" | ")
}

/// Whether a search of a collection of `documents` among `all_documents`, asked for
/// `candidates` per ranking, goes through the HNSW graph of a store that has one (`indexed`),
/// whose graph holds the vectors folded (`folded`) or as they are; otherwise the collection's
/// vectors are ranked exactly. Each search reads the counts first ([`COLLECTION_SIZE`]).
///
/// The graph holds every collection's rows, and a scan of it filtered to one collection reads,
/// for each candidate, about as many rows as the database holds for each of that collection's.
/// So a collection holding a small share of the database (its documents squared at most
/// [`GRAPH_TO_EXACT_COST`] times the proposals times the database's documents: up to about
/// 3,500 beside 100,000 at top-10 with a folded graph, 6,000 with a dense one) is ranked
/// exactly instead, by its own rows.
pub(super) fn through_graph(
    indexed: bool,
    folded: bool,
    candidates: usize,
    documents: i64,
    all_documents: i64,
) -> bool {
    let proposals = if folded {
        candidates
    } else {
        candidates.saturating_mul(OVERSAMPLE)
    };
    let documents = documents.max(0) as f64;
    let all_documents = all_documents.max(0) as f64;
    let small = documents * documents <= (GRAPH_TO_EXACT_COST * proposals) as f64 * all_documents;
    indexed && !small
}

/// What a search reads before its statement, by collection name: the collection's id and
/// document count, and the documents of the whole database ([`through_graph`]).
pub(super) const COLLECTION_SIZE: &str = "SELECT id, document_count, \
     (SELECT sum(document_count) FROM deeprecall_collections)::bigint \
     FROM deeprecall_collections WHERE name = $1";

/// The hybrid search: both rankings with the filter inside them, each cut to `$4`
/// candidates, fused by reciprocal rank (`$6` is k, `vector_weight` the vector ranking's weight,
/// written into the text as a number) and cut to `$7` hits, in one
/// statement. Parameters: `$1` the collection's id, `$2` query vector, `$3` whether to rank by
/// vector, `$5` the tsquery text (empty skips the keyword ranking), `$8` the store's embedder;
/// through the graph, `$9` the folded query vector; then the filter's (from
/// [`filter_start`]). The first column is the collection's id, NULL when it no longer exists;
/// the sixth, the embedder that made the collection's vectors when it is not `$8` and the
/// collection holds documents, which are then left unsearched (their vectors do not compare
/// with the query's); a collection without hits yields one row whose columns but those two
/// are NULL.
///
/// The statement is planned for each search's parameters (`query_typed`), never taken from a
/// generic plan: a generic plan cannot know which collection it reads and assumes one of
/// average size, so for a small collection beside a large one it read the whole table where
/// the collection's index reads a few rows (150 ms at 200 documents beside 100,000), and it
/// cannot know the query's terms either: generic plans made a large collection's searches
/// slower too (BENCHMARKS.md: 14.0–14.4 ms p50 against 9.6–10.7 planned each time, the
/// planning included).
///
/// Through the graph ([`through_graph`]), the vector ranking asks HNSW (iterative scan, the
/// filter applied inside it) for `OVERSAMPLE` times the candidates by graph vector, adds the
/// rows still waiting in the vector backlog (not in the graph yet, so ranked exactly: a write
/// is searched as soon as it is acknowledged), then orders all of them by the exact inner
/// product of the stored vectors; otherwise the collection is ranked exactly.
///
/// Where the graph holds folded vectors (the hashing embedder's), the rows the keyword
/// ranking reads anyway are ranked exactly by vector too, and join the graph's proposals.
/// Folding to 256 dimensions leaves the graph's proposals holding about an eighth of the exact
/// top 10 (BENCHMARKS.md), while the hashing embedder's nearest neighbours are mostly texts
/// sharing a word with the query, which are exactly the keyword matches; the graph still adds
/// the neighbours found through character n-grams alone (misspellings). The keyword matches
/// are read from the table once for both rankings (`matched`), so this costs an inner product
/// a row, not another scan. A dense embedder's graph is exact enough without it, and its
/// neighbours share no words with the query by design. With the keyword matches beside it, a
/// folded graph is asked for the candidates kept, not `OVERSAMPLE` times as many: at top-10
/// that is 30 rows, under its `hnsw.ef_search` of 40, so the scan is one pass of the graph
/// rather than an iterative scan going back for more: at 100,000 documents, 11.7 ms p50
/// instead of 15.2 unfiltered and 19.7 filtered, for a recall of 0.985 instead of 0.988
/// (BENCHMARKS.md).
pub(super) fn search_statement(
    dimension: usize,
    graph_dimension: usize,
    filter_sql: &str,
    through_graph: bool,
    vector_weight: f64,
) -> String {
    // The query vector is parsed once (an InitPlan), not for every row ranked, as a generic
    // plan of a prepared statement would otherwise do.
    let exact = "d.embedding <#> (SELECT vector FROM query_vector)";
    // The id is a parameter, so that the plan made for it knows how many rows it holds; the
    // collection's embedder is checked once, as a gate before any row is read.
    let in_collection = "d.collection_id = $1::bigint AND EXISTS (SELECT FROM searched)";
    let with_keyword_matches = through_graph && folds(dimension, graph_dimension);
    let matched_distance = if with_keyword_matches {
        format!(", CASE WHEN $3::bool THEN {exact} END AS distance")
    } else {
        String::new()
    };
    let proposals = if with_keyword_matches {
        "$4::bigint".to_string()
    } else {
        format!("$4::bigint * {OVERSAMPLE}")
    };
    let keyword_matches = if with_keyword_matches {
        "
            UNION ALL
            SELECT id, distance FROM (
                SELECT id, distance FROM matched WHERE $3::bool
                ORDER BY distance, id
                LIMIT $4::bigint
            ) shared"
    } else {
        ""
    };
    let nearest = if through_graph {
        format!(
            "SELECT id, min(distance) AS distance FROM (
            SELECT id, distance FROM (
                SELECT d.id, {exact} AS distance
                FROM deeprecall_documents d
                WHERE $3::bool AND {in_collection}
                  AND vector_dims(d.folded) = {graph_dimension} AND {filter_sql}
                ORDER BY d.folded::halfvec({graph_dimension}) <#> $9::text::halfvec({graph_dimension})
                LIMIT {proposals}
            ) proposed
            UNION ALL
            SELECT id, distance FROM (
                SELECT d.id, {exact} AS distance
                FROM deeprecall_documents d
                WHERE $3::bool AND {in_collection}
                  AND d.folded IS NULL AND {filter_sql}
                ORDER BY distance
                LIMIT $4::bigint
            ) waiting{keyword_matches}
        ) candidates
        GROUP BY id
        ORDER BY distance, id
        LIMIT $4::bigint"
        )
    } else {
        format!(
            "SELECT d.id, {exact} AS distance
        FROM deeprecall_documents d
        WHERE $3::bool AND {in_collection} AND {filter_sql}
        ORDER BY {exact}
        LIMIT $4::bigint"
        )
    };
    format!(
        "WITH collection AS (
    SELECT id,
        CASE WHEN document_count > 0 AND embedder <> $8::text THEN embedder END
            AS foreign_embedder
    FROM deeprecall_collections WHERE id = $1::bigint
),
searched AS (SELECT id FROM collection WHERE foreign_embedder IS NULL),
query_vector AS (SELECT $2::text::sparsevec({dimension}) AS vector),
matched AS MATERIALIZED (
    SELECT d.id, ts_rank(d.keywords, search.query) AS score{matched_distance}
    FROM deeprecall_documents d,
         (SELECT CASE WHEN $5::text = '' THEN NULL
                      ELSE to_tsquery('english', $5::text) END AS query) search
    WHERE {in_collection}
      AND d.keywords @@ search.query AND {filter_sql}
),
by_vector AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM (
        {nearest}
    ) nearest
    WHERE distance < 0
),
by_keyword AS (
    SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank FROM (
        SELECT id, score FROM matched
        ORDER BY score DESC, id
        LIMIT $4::bigint
    ) best
),
fused AS (
    SELECT id, sum(weight / ($6::float8 + rank)) AS score
    FROM (
        SELECT id, rank, {vector_weight:?}::float8 AS weight FROM by_vector
        UNION ALL SELECT id, rank, 1.0::float8 AS weight FROM by_keyword
    ) ranked
    GROUP BY id
)
SELECT (SELECT id FROM collection), hit.doc_id, hit.content, hit.metadata, hit.score,
    (SELECT foreign_embedder FROM collection)
FROM (SELECT 1) AS always
LEFT JOIN LATERAL (
    SELECT d.doc_id, d.content, d.metadata, fused.score::float8 AS score
    FROM fused JOIN deeprecall_documents d ON d.id = fused.id
    ORDER BY fused.score DESC, d.doc_id
    LIMIT $7::bigint
) hit ON TRUE"
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(value: Value) -> Filter {
        match value {
            Value::Object(map) => Filter::from_json(&map).unwrap(),
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn filters_compile_to_placeholders_and_keep_values_out_of_the_text() {
        let hostile = "'); DROP TABLE deeprecall_documents; --";
        let compiled = compile_filter(
            &filter(json!({"team": hostile, "year": {"$gte": 2020}, "tag": {"$in": [hostile]}})),
            8,
        );
        assert!(!compiled.sql.contains("DROP"), "{}", compiled.sql);
        // One parameter for each equality (its probes), two for the ordering.
        assert_eq!(compiled.parameters.len(), 4);
        assert!(compiled.sql.contains("$8") && compiled.sql.contains("$11"));
        assert!(!compiled.sql.contains("$12"));
        assert_eq!(compile_filter(&Filter::default(), 8).sql, "TRUE");
    }

    #[test]
    fn sparse_vectors_are_one_based_and_cut_to_what_pgvector_stores() {
        let small = Embedding {
            indices: vec![0, 7],
            values: vec![0.6, -0.8],
        };
        assert_eq!(sparsevec_text(&small, 16), "{1:0.6,8:-0.8}/16");
        assert_eq!(sparsevec_text(&Embedding::default(), 16), "{}/16");
        let large = Embedding {
            indices: (0..20_000).collect(),
            values: (0..20_000).map(|n| 1.0 + n as f32).collect(),
        };
        let text = sparsevec_text(&large, 100_000);
        assert_eq!(text.matches(':').count(), MAX_STORED_NONZERO);
        assert!(text.starts_with("{4001:"), "the weakest are dropped");
    }

    #[test]
    fn folded_vectors_are_dense_normalised_and_sum_what_folds_together() {
        let embedding = Embedding {
            indices: vec![1, 1 + FOLDED_DIMENSION as u32, 2],
            values: vec![0.3, 0.3, 0.8],
        };
        let text = folded_text(&embedding, FOLDED_DIMENSION);
        let values: Vec<f32> = text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|value| value.parse().unwrap())
            .collect();
        assert_eq!(values.len(), FOLDED_DIMENSION);
        assert!((values[1] - 0.6).abs() < 1e-3, "{}", values[1]);
        assert!((values[2] - 0.8).abs() < 1e-3, "{}", values[2]);
        assert!(folded_text(&Embedding::default(), FOLDED_DIMENSION).starts_with("[0.0000,"));
    }

    #[test]
    fn dense_vectors_enter_the_graph_whole_and_sparse_ones_folded() {
        assert_eq!(graph_dimension(384, true), 384);
        assert_eq!(
            graph_dimension(MAX_GRAPH_DIMENSION, true),
            MAX_GRAPH_DIMENSION
        );
        assert_eq!(
            graph_dimension(MAX_GRAPH_DIMENSION + 1, true),
            FOLDED_DIMENSION
        );
        assert_eq!(graph_dimension(4096, false), FOLDED_DIMENSION);
        assert_eq!(
            graph_dimension(FOLDED_DIMENSION + 1, false),
            FOLDED_DIMENSION
        );
        assert_eq!(
            graph_dimension(FOLDED_DIMENSION / 2, false),
            FOLDED_DIMENSION / 2
        );
        assert_eq!(graph_dimension(0, false), 1);
    }

    #[test]
    fn sparse_vector_text_reads_back_into_the_embedding_it_was_written_from() {
        let embedding = Embedding {
            indices: vec![0, 7, 4095],
            values: vec![0.5, -0.25, 0.125],
        };
        let text = sparsevec_text(&embedding, 4096);
        assert_eq!(parse_sparsevec(&text), Some(embedding));
        assert_eq!(parse_sparsevec("{}/16"), Some(Embedding::default()));
        for malformed in [
            "",
            "[1,2]",
            "{1:0.5/16",
            "{0:0.5}/16",
            "{x:1}/16",
            "{1:y}/16",
        ] {
            assert_eq!(parse_sparsevec(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn a_small_share_of_the_database_is_ranked_exactly() {
        // Folded: 30 proposals, 120² = 4 × 30 × 120.
        assert!(!through_graph(true, true, 30, 120, 120));
        assert!(through_graph(true, true, 30, 121, 121));
        // Not folded: three times the proposals, 360² = 4 × 90 × 360.
        assert!(!through_graph(true, false, 30, 360, 360));
        assert!(through_graph(true, false, 30, 361, 361));
        // Beside others: 3,464² <= 4 × 30 × 100,000 < 3,465².
        assert!(!through_graph(true, true, 30, 3_464, 100_000));
        assert!(through_graph(true, true, 30, 3_465, 100_000));
        // More candidates, more proposals: 3,465 of 100,000 at top-20 (60 candidates).
        assert!(!through_graph(true, true, 60, 3_465, 100_000));
        // Without the index, always exactly.
        assert!(!through_graph(false, true, 30, 100_000, 100_000));
        // Counts a concurrent delete left negative or empty read as nothing.
        assert!(!through_graph(true, true, 30, -1, 0));
    }

    #[test]
    fn keyword_queries_quote_every_term() {
        let terms = vec!["it's".to_string(), "a|b".to_string(), "c\\".to_string()];
        assert_eq!(any_term_query(&terms), "'it''s' | 'a|b' | 'c\\\\'");
        assert_eq!(any_term_query(&[]), "");
    }

    fn sparse_values(text: &str) -> Vec<f32> {
        let inner = text
            .split('/')
            .next()
            .unwrap()
            .trim_matches(|c| c == '{' || c == '}');
        inner
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split(':').nth(1).unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn sparse_vectors_drop_indices_past_the_dimension() {
        let embedding = Embedding {
            indices: vec![15, 16],
            values: vec![0.6, 0.8],
        };
        assert_eq!(sparsevec_text(&embedding, 16), "{16:0.6}/16");
    }

    #[test]
    fn a_cut_sparse_vector_is_normalised_again_and_an_uncut_one_is_left_alone() {
        let cut = Embedding {
            indices: (0..20_000).collect(),
            values: (0..20_000).map(|n| 1.0 + n as f32).collect(),
        };
        let values = sparse_values(&sparsevec_text(&cut, 100_000));
        let norm = values.iter().map(|value| value * value).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");

        let at_the_limit = Embedding {
            indices: (0..MAX_STORED_NONZERO as u32).collect(),
            values: vec![1.0; MAX_STORED_NONZERO],
        };
        let values = sparse_values(&sparsevec_text(&at_the_limit, 100_000));
        assert_eq!(values.len(), MAX_STORED_NONZERO);
        assert!(values.iter().all(|value| *value == 1.0));
    }

    #[test]
    fn a_cut_sparse_vector_without_a_usable_norm_keeps_its_values() {
        let over = MAX_STORED_NONZERO as u32 + 1;
        for value in [0.0, 1e30] {
            let embedding = Embedding {
                indices: (0..over).collect(),
                values: vec![value; over as usize],
            };
            let values = sparse_values(&sparsevec_text(&embedding, 100_000));
            assert_eq!(values.len(), MAX_STORED_NONZERO);
            assert!(values.iter().all(|kept| *kept == value), "{value}");
        }
    }

    #[test]
    fn folding_normalises_a_vector_that_is_not_unit_length() {
        let embedding = Embedding {
            indices: vec![1, 1 + FOLDED_DIMENSION as u32, 2],
            values: vec![0.3, 0.3, 0.4],
        };
        let values: Vec<f32> = folded_text(&embedding, FOLDED_DIMENSION)
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|value| value.parse().unwrap())
            .collect();
        let norm = (0.6f32 * 0.6 + 0.4 * 0.4).sqrt();
        assert!((values[1] - 0.6 / norm).abs() < 1e-3, "{}", values[1]);
        assert!((values[2] - 0.4 / norm).abs() < 1e-3, "{}", values[2]);
    }
}
