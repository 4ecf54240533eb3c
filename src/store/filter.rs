//! Metadata filters: a conjunction of conditions on top-level metadata keys.
//!
//! The JSON form follows MongoDB's query language for the subset supported:
//!
//! ```json
//! {"team": "platform", "year": {"$gte": 2020, "$lt": 2024}, "tag": {"$in": ["a", "b"]}}
//! ```
//!
//! Matching follows MongoDB too: a missing key fails every operator but `$ne`; numbers compare
//! numerically (`1` equals `1.0`); strings compare by code point; an ordering between a number
//! and a string is false; a metadata value that is an array matches when any of its elements
//! does (so `{"tag": "a"}` matches `{"tag": ["a", "b"]}`), and fails `$ne` when any element is
//! equal. Unlike MongoDB, `{"key": null}` does not match a missing key.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

/// Largest number of values accepted by `$in`.
pub const MAX_IN_VALUES: usize = 1_000;

/// Longest metadata key accepted, in characters.
pub const MAX_KEY_LEN: usize = 128;

/// Deepest nesting of `$and` accepted. Parsing recurses once per level, and a filter can come
/// from a model's tool call as well as from a caller; nothing legitimate needs more than a
/// few levels, since `$and` of `$and` flattens to one.
pub const MAX_AND_DEPTH: usize = 8;

const AND: &str = "$and";

/// Reasons a filter is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The key is empty, too long or starts with `$`.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An operator that is not supported.
    #[error(
        "unknown operator {operator:?} on key {key:?}: use $eq, $ne, $in, $gt, $gte, $lt or $lte"
    )]
    UnknownOperator {
        /// The key the operator applies to.
        key: String,
        /// The operator as written.
        operator: String,
    },
    /// An object value whose keys are not operators, or that is empty.
    #[error(
        "key {key:?} has an object value with no operators: compare with a scalar or use operators such as {{\"$eq\": value}}"
    )]
    NoOperators {
        /// The offending key.
        key: String,
    },
    /// An operator whose value is itself an operator object.
    #[error("{operator} on key {key:?} has an object value: operator objects cannot be nested")]
    Nested {
        /// The offending key.
        key: String,
        /// The operator whose value is an object.
        operator: Operator,
    },
    /// Equality against an array (or an array inside `$in`).
    #[error(
        "{operator} on key {key:?} needs a string, number, boolean or null: arrays cannot be compared"
    )]
    NotScalar {
        /// The offending key.
        key: String,
        /// The operator whose value is not a scalar.
        operator: Operator,
    },
    /// `$in` with a value that is not an array.
    #[error("$in on key {key:?} needs an array of values")]
    InNotArray {
        /// The offending key.
        key: String,
    },
    /// `$in` with too many values.
    #[error("$in on key {key:?} has {count} values, more than the 1000 allowed")]
    InTooLarge {
        /// The offending key.
        key: String,
        /// Number of values given.
        count: usize,
    },
    /// An ordering operator on a value that is neither a number nor a string.
    #[error("{operator} on key {key:?} needs a number or a string")]
    NotOrderable {
        /// The offending key.
        key: String,
        /// The ordering operator.
        operator: Operator,
    },
    /// `$and` whose value is not an array of objects.
    #[error("$and needs an array of filter objects")]
    InvalidAnd,
    /// `$and` nested deeper than [`MAX_AND_DEPTH`].
    #[error("$and is nested more than {MAX_AND_DEPTH} levels deep")]
    TooDeep,
    /// A NUL character in a string operand: no store can hold one (PostgreSQL's text and jsonb
    /// refuse it), so no stored metadata could match it.
    #[error("the value for key {key:?} has a NUL character")]
    Nul {
        /// The offending key, NULs shown escaped.
        key: String,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// `$eq`: equal.
    Eq,
    /// `$ne`: not equal, or missing.
    Ne,
    /// `$in`: equal to one of the values.
    In,
    /// `$gt`: greater than.
    Gt,
    /// `$gte`: greater than or equal.
    Gte,
    /// `$lt`: less than.
    Lt,
    /// `$lte`: less than or equal.
    Lte,
}

impl Operator {
    /// Returns the operator as written in JSON, such as `"$gte"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Eq => "$eq",
            Operator::Ne => "$ne",
            Operator::In => "$in",
            Operator::Gt => "$gt",
            Operator::Gte => "$gte",
            Operator::Lt => "$lt",
            Operator::Lte => "$lte",
        }
    }

    fn parse(text: &str) -> Option<Operator> {
        Some(match text {
            "$eq" => Operator::Eq,
            "$ne" => Operator::Ne,
            "$in" => Operator::In,
            "$gt" => Operator::Gt,
            "$gte" => Operator::Gte,
            "$lt" => Operator::Lt,
            "$lte" => Operator::Lte,
            _ => return None,
        })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition on a metadata key.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Top-level metadata key.
    pub key: String,
    /// How the key's value is compared.
    pub operator: Operator,
    /// The operand: a scalar, or an array of scalars for `$in`.
    pub value: Value,
}

impl Condition {
    fn matches(&self, metadata: &Map<String, Value>) -> bool {
        let Some(actual) = metadata.get(&self.key) else {
            return self.operator == Operator::Ne;
        };
        let elements = match actual {
            Value::Array(elements) => elements.as_slice(),
            scalar => std::slice::from_ref(scalar),
        };
        match self.operator {
            Operator::Eq => elements.iter().any(|element| equal(element, &self.value)),
            Operator::Ne => !elements.iter().any(|element| equal(element, &self.value)),
            Operator::In => {
                let candidates = self.value.as_array().map(Vec::as_slice).unwrap_or_default();
                elements
                    .iter()
                    .any(|element| candidates.iter().any(|candidate| equal(element, candidate)))
            }
            Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
                elements.iter().any(|element| {
                    compare(element, &self.value).is_some_and(|ordering| match self.operator {
                        Operator::Gt => ordering == Ordering::Greater,
                        Operator::Gte => ordering != Ordering::Less,
                        Operator::Lt => ordering == Ordering::Less,
                        _ => ordering != Ordering::Greater,
                    })
                })
            }
        }
    }
}

/// A conjunction of conditions; the default filter has none and matches everything.
///
/// Conditions are kept sorted (by key, operator, then operand) and free of exact duplicates, so
/// two filters with the same conditions compare equal whatever order they were written in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

impl Filter {
    /// Parses the JSON form; see the module documentation.
    pub fn from_json(map: &Map<String, Value>) -> Result<Filter, FilterError> {
        let mut conditions = Vec::new();
        parse_object(map, &mut conditions, 0)?;
        Ok(Filter::from_conditions(conditions))
    }

    /// Returns the filter matching what both `self` and `other` match.
    pub fn and(&self, other: &Filter) -> Filter {
        let mut conditions = self.conditions.clone();
        conditions.extend(other.conditions.iter().cloned());
        Filter::from_conditions(conditions)
    }

    /// Returns true when every condition holds for the metadata.
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        self.conditions
            .iter()
            .all(|condition| condition.matches(metadata))
    }

    /// Returns true for the filter that matches everything.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Returns the conditions, sorted by key and operator.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Returns the canonical JSON form, which [`Filter::from_json`] parses back to an equal
    /// filter: `{"key": {"$op": value}}` with sorted keys when no key repeats an operator,
    /// otherwise `{"$and": [{"key": {"$op": value}}, …]}`.
    pub fn to_json(&self) -> Map<String, Value> {
        let unique = self.conditions.windows(2).all(|pair| {
            (pair[0].key.as_str(), pair[0].operator) != (pair[1].key.as_str(), pair[1].operator)
        });
        let mut map = Map::new();
        if unique {
            for condition in &self.conditions {
                let entry = map
                    .entry(condition.key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(operators) = entry {
                    operators.insert(condition.operator.to_string(), condition.value.clone());
                }
            }
        } else {
            let parts = self
                .conditions
                .iter()
                .map(|condition| {
                    let mut operators = Map::new();
                    operators.insert(condition.operator.to_string(), condition.value.clone());
                    let mut part = Map::new();
                    part.insert(condition.key.clone(), Value::Object(operators));
                    Value::Object(part)
                })
                .collect();
            map.insert(AND.to_string(), Value::Array(parts));
        }
        map
    }

    fn from_conditions(mut conditions: Vec<Condition>) -> Filter {
        // Sorting on the operand too makes the order independent of how the filter was written,
        // and brings exact duplicates together for `dedup`.
        conditions.sort_by_cached_key(|condition| {
            (
                condition.key.clone(),
                condition.operator,
                condition.value.to_string(),
            )
        });
        conditions.dedup();
        Filter { conditions }
    }
}

fn parse_object(
    map: &Map<String, Value>,
    out: &mut Vec<Condition>,
    depth: usize,
) -> Result<(), FilterError> {
    for (key, value) in map {
        if key == AND {
            if depth >= MAX_AND_DEPTH {
                return Err(FilterError::TooDeep);
            }
            let Value::Array(parts) = value else {
                return Err(FilterError::InvalidAnd);
            };
            for part in parts {
                let Value::Object(part) = part else {
                    return Err(FilterError::InvalidAnd);
                };
                parse_object(part, out, depth + 1)?;
            }
            continue;
        }
        validate_key(key)?;
        match value {
            Value::Object(operators) => {
                if operators.is_empty() || !operators.keys().any(|name| name.starts_with('$')) {
                    return Err(FilterError::NoOperators { key: key.clone() });
                }
                for (name, operand) in operators {
                    let Some(operator) = Operator::parse(name) else {
                        return Err(FilterError::UnknownOperator {
                            key: key.clone(),
                            operator: name.clone(),
                        });
                    };
                    out.push(parse_condition(key, operator, operand)?);
                }
            }
            scalar => out.push(parse_condition(key, Operator::Eq, scalar)?),
        }
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), FilterError> {
    let reason = if key.is_empty() {
        "keys must not be empty"
    } else if key.chars().count() > MAX_KEY_LEN {
        "keys must be at most 128 characters"
    } else if key.starts_with('$') {
        "keys must not start with '$'"
    } else if key.contains('\0') {
        "keys must not contain NUL characters"
    } else {
        return Ok(());
    };
    Err(FilterError::InvalidKey {
        key: truncate(key),
        reason,
    })
}

/// Keeps error messages short when a client sends a huge key.
fn truncate(key: &str) -> String {
    match key.char_indices().nth(MAX_KEY_LEN) {
        Some((end, _)) => format!("{}…", &key[..end]),
        None => key.to_string(),
    }
}

fn parse_condition(
    key: &str,
    operator: Operator,
    operand: &Value,
) -> Result<Condition, FilterError> {
    let key_owned = || key.to_string();
    let has_nul = |value: &Value| value.as_str().is_some_and(|text| text.contains('\0'));
    if has_nul(operand)
        || operand
            .as_array()
            .is_some_and(|values| values.iter().any(has_nul))
    {
        return Err(FilterError::Nul { key: key_owned() });
    }
    if operand.is_object() {
        return Err(FilterError::Nested {
            key: key_owned(),
            operator,
        });
    }
    match operator {
        Operator::Eq | Operator::Ne => {
            if operand.is_array() {
                return Err(FilterError::NotScalar {
                    key: key_owned(),
                    operator,
                });
            }
        }
        Operator::In => {
            let Value::Array(values) = operand else {
                return Err(FilterError::InNotArray { key: key_owned() });
            };
            if values.len() > MAX_IN_VALUES {
                return Err(FilterError::InTooLarge {
                    key: key_owned(),
                    count: values.len(),
                });
            }
            if let Some(value) = values
                .iter()
                .find(|value| value.is_array() || value.is_object())
            {
                return Err(if value.is_object() {
                    FilterError::Nested {
                        key: key_owned(),
                        operator,
                    }
                } else {
                    FilterError::NotScalar {
                        key: key_owned(),
                        operator,
                    }
                });
            }
        }
        Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
            if !(operand.is_number() || operand.is_string()) {
                return Err(FilterError::NotOrderable {
                    key: key_owned(),
                    operator,
                });
            }
        }
    }
    Ok(Condition {
        key: key_owned(),
        operator,
        value: operand.clone(),
    })
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b) == Some(Ordering::Equal),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Compares integers exactly (f64 loses precision past 2^53) and anything else as f64.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return Some(a.cmp(&b));
    }
    // One side is a negative i64 and the other a u64 above i64::MAX, or a float is involved.
    if a.is_i64() && b.is_u64() {
        return Some(Ordering::Less);
    }
    if a.is_u64() && b.is_i64() {
        return Some(Ordering::Greater);
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn filter(value: Value) -> Filter {
        Filter::from_json(&object(value)).unwrap()
    }

    fn error(value: Value) -> FilterError {
        Filter::from_json(&object(value)).unwrap_err()
    }

    fn matches(filter_json: Value, metadata: Value) -> bool {
        filter(filter_json).matches(&object(metadata))
    }

    #[test]
    fn default_filter_matches_everything() {
        let filter = Filter::default();
        assert!(filter.is_empty());
        assert!(filter.matches(&Map::new()));
        assert!(filter.matches(&object(json!({"a": 1}))));
        assert_eq!(Filter::from_json(&Map::new()).unwrap(), Filter::default());
    }

    #[test]
    fn bare_values_mean_equality() {
        assert!(matches(
            json!({"team": "platform"}),
            json!({"team": "platform"})
        ));
        assert!(!matches(
            json!({"team": "platform"}),
            json!({"team": "search"})
        ));
        assert!(matches(json!({"live": true}), json!({"live": true})));
        assert!(matches(json!({"owner": null}), json!({"owner": null})));
        assert!(!matches(json!({"owner": null}), json!({})));
    }

    #[test]
    fn eq_compares_numbers_numerically() {
        assert!(matches(json!({"n": {"$eq": 1}}), json!({"n": 1.0})));
        assert!(matches(json!({"n": 1.0}), json!({"n": 1})));
        assert!(!matches(json!({"n": 1}), json!({"n": "1"})));
        assert!(matches(
            json!({"n": 9_007_199_254_740_993_u64}),
            json!({"n": 9_007_199_254_740_993_u64})
        ));
        assert!(!matches(
            json!({"n": 9_007_199_254_740_993_u64}),
            json!({"n": 9_007_199_254_740_992_u64})
        ));
    }

    #[test]
    fn ne_passes_missing_keys_and_different_values() {
        let ne = json!({"team": {"$ne": "platform"}});
        assert!(matches(ne.clone(), json!({})));
        assert!(matches(ne.clone(), json!({"team": "search"})));
        assert!(!matches(ne, json!({"team": "platform"})));
    }

    #[test]
    fn in_matches_any_listed_value() {
        let filter_json = json!({"tag": {"$in": ["a", "b", 3]}});
        assert!(matches(filter_json.clone(), json!({"tag": "a"})));
        assert!(matches(filter_json.clone(), json!({"tag": 3.0})));
        assert!(!matches(filter_json.clone(), json!({"tag": "c"})));
        assert!(!matches(filter_json.clone(), json!({})));
        assert!(!matches(json!({"tag": {"$in": []}}), json!({"tag": "a"})));
    }

    #[test]
    fn array_metadata_matches_when_any_element_does() {
        assert!(matches(json!({"tag": "a"}), json!({"tag": ["x", "a"]})));
        assert!(matches(
            json!({"tag": {"$in": ["a"]}}),
            json!({"tag": ["x", "a"]})
        ));
        assert!(!matches(
            json!({"tag": {"$ne": "a"}}),
            json!({"tag": ["x", "a"]})
        ));
        assert!(matches(
            json!({"score": {"$gt": 5}}),
            json!({"score": [1, 7]})
        ));
    }

    #[test]
    fn ordering_operators_compare_numbers_and_strings() {
        let range = json!({"year": {"$gte": 2020, "$lt": 2024}});
        assert!(matches(range.clone(), json!({"year": 2020})));
        assert!(matches(range.clone(), json!({"year": 2023.5})));
        assert!(!matches(range.clone(), json!({"year": 2024})));
        assert!(!matches(range.clone(), json!({"year": 2019})));
        assert!(!matches(range.clone(), json!({})));
        assert!(!matches(range, json!({"year": "2021"})));

        assert!(matches(json!({"n": {"$gt": -1}}), json!({"n": u64::MAX})));
        assert!(matches(json!({"n": {"$lte": 1.5}}), json!({"n": 1})));
        assert!(matches(
            json!({"day": {"$gt": "2024-01-01"}}),
            json!({"day": "2024-02-01"})
        ));
        assert!(!matches(
            json!({"day": {"$lt": "2024-01-01"}}),
            json!({"day": "2024-02-01"})
        ));
        assert!(!matches(json!({"n": {"$gt": 1}}), json!({"n": true})));
    }

    #[test]
    fn unknown_operators_are_rejected() {
        assert_eq!(
            error(json!({"a": {"$regex": "x"}})),
            FilterError::UnknownOperator {
                key: "a".into(),
                operator: "$regex".into()
            }
        );
        assert!(matches!(
            error(json!({"a": {"$eq": 1, "b": 2}})),
            FilterError::UnknownOperator { .. }
        ));
    }

    #[test]
    fn malformed_operands_are_rejected() {
        assert_eq!(
            error(json!({"a": {"$in": "x"}})),
            FilterError::InNotArray { key: "a".into() }
        );
        let too_many: Vec<usize> = (0..=MAX_IN_VALUES).collect();
        assert_eq!(
            error(json!({"a": {"$in": too_many}})),
            FilterError::InTooLarge {
                key: "a".into(),
                count: MAX_IN_VALUES + 1
            }
        );
        let as_many: Vec<usize> = (0..MAX_IN_VALUES).collect();
        assert!(Filter::from_json(&object(json!({"a": {"$in": as_many}}))).is_ok());
        assert!(matches!(
            error(json!({"a": {"$gt": true}})),
            FilterError::NotOrderable {
                operator: Operator::Gt,
                ..
            }
        ));
        assert!(matches!(
            error(json!({"a": {"$lt": null}})),
            FilterError::NotOrderable { .. }
        ));
        assert!(matches!(
            error(json!({"a": [1, 2]})),
            FilterError::NotScalar { .. }
        ));
        assert!(matches!(
            error(json!({"a": {"$in": [[1]]}})),
            FilterError::NotScalar { .. }
        ));
        assert_eq!(
            error(json!({"a": {}})),
            FilterError::NoOperators { key: "a".into() }
        );
        assert_eq!(
            error(json!({"a": {"b": 1}})),
            FilterError::NoOperators { key: "a".into() }
        );
        assert!(matches!(
            error(json!({"a": {"$eq": {"$gt": 1}}})),
            FilterError::Nested {
                operator: Operator::Eq,
                ..
            }
        ));
        assert!(matches!(
            error(json!({"a": {"$in": [{"$gt": 1}]}})),
            FilterError::Nested { .. }
        ));
        assert_eq!(error(json!({"$and": {"a": 1}})), FilterError::InvalidAnd);
        assert_eq!(error(json!({"$and": [1]})), FilterError::InvalidAnd);
    }

    #[test]
    fn invalid_keys_are_rejected() {
        assert!(matches!(
            error(json!({"": 1})),
            FilterError::InvalidKey { .. }
        ));
        assert!(matches!(
            error(json!({"$or": []})),
            FilterError::InvalidKey { .. }
        ));
        let long = "k".repeat(129);
        assert!(matches!(
            Filter::from_json(&object(json!({ long: 1 }))),
            Err(FilterError::InvalidKey { .. })
        ));
        assert!(Filter::from_json(&object(json!({ "k".repeat(128): 1 }))).is_ok());
    }

    #[test]
    fn an_invalid_key_is_named_and_a_huge_one_cut_short() {
        let Err(FilterError::InvalidKey { key, .. }) =
            Filter::from_json(&object(json!({"$bad": 1})))
        else {
            panic!("accepted");
        };
        assert_eq!(key, "$bad");
        let huge = "é".repeat(10_000);
        let Err(FilterError::InvalidKey { key, .. }) =
            Filter::from_json(&object(json!({ huge: 1 })))
        else {
            panic!("accepted");
        };
        assert_eq!(key, format!("{}…", "é".repeat(MAX_KEY_LEN)));
    }

    #[test]
    fn error_messages_name_the_key_in_lowercase() {
        let message = error(json!({"year": {"$between": [1, 2]}})).to_string();
        assert!(message.contains("\"year\""), "{message}");
        assert!(message.starts_with(char::is_lowercase), "{message}");
        assert!(!message.ends_with('.'), "{message}");
        let message = error(json!({"year": {"$in": 3}})).to_string();
        assert_eq!(message, "$in on key \"year\" needs an array of values");
    }

    #[test]
    fn and_narrows_both_filters() {
        let caller = filter(json!({"team": "platform"}));
        let model = filter(json!({"year": {"$gte": 2020}}));
        let both = caller.and(&model);
        assert!(both.matches(&object(json!({"team": "platform", "year": 2021}))));
        assert!(!both.matches(&object(json!({"team": "search", "year": 2021}))));
        assert!(!both.matches(&object(json!({"team": "platform", "year": 2019}))));

        // A model cannot widen the caller's scope by repeating the key with another value.
        let widened = caller.and(&filter(json!({"team": "search"})));
        assert!(!widened.matches(&object(json!({"team": "platform"}))));
        assert!(!widened.matches(&object(json!({"team": "search"}))));

        assert_eq!(Filter::default().and(&caller), caller);
        assert_eq!(caller.and(&caller), caller);
    }

    #[test]
    fn and_arrays_are_accepted_and_flattened() {
        let parsed = filter(json!({"$and": [{"a": 1}, {"$and": [{"b": {"$lt": 3}}]}], "c": "x"}));
        assert_eq!(parsed, filter(json!({"a": 1, "b": {"$lt": 3}, "c": "x"})));
    }

    #[test]
    fn to_json_is_canonical_and_round_trips() {
        let parsed = filter(json!({"year": {"$lt": 2024, "$gte": 2020}, "team": "platform"}));
        let canonical = parsed.to_json();
        assert_eq!(
            Value::Object(canonical.clone()),
            json!({"team": {"$eq": "platform"}, "year": {"$gte": 2020, "$lt": 2024}})
        );
        assert_eq!(Filter::from_json(&canonical).unwrap(), parsed);

        let repeated = filter(json!({"team": "platform"})).and(&filter(json!({"team": "search"})));
        let canonical = repeated.to_json();
        assert_eq!(
            Value::Object(canonical.clone()),
            json!({"$and": [{"team": {"$eq": "platform"}}, {"team": {"$eq": "search"}}]})
        );
        assert_eq!(Filter::from_json(&canonical).unwrap(), repeated);

        assert!(Filter::default().to_json().is_empty());
    }

    #[test]
    fn and_nested_too_deep_and_nul_characters_are_rejected() {
        let mut nested = json!({"a": 1});
        for _ in 0..MAX_AND_DEPTH {
            nested = json!({ "$and": [nested] });
        }
        assert!(Filter::from_json(&object(nested.clone())).is_ok());
        assert_eq!(error(json!({ "$and": [nested] })), FilterError::TooDeep);
        assert!(matches!(
            error(json!({"a\u{0}": 1})),
            FilterError::InvalidKey { .. }
        ));
        assert!(matches!(
            error(json!({"a": "b\u{0}"})),
            FilterError::Nul { .. }
        ));
        assert!(matches!(
            error(json!({"a": {"$in": ["x", "\u{0}"]}})),
            FilterError::Nul { .. }
        ));
    }

    #[test]
    fn condition_order_does_not_matter() {
        let a = filter(json!({"a": 1})).and(&filter(json!({"b": 2})));
        let b = filter(json!({"b": 2})).and(&filter(json!({"a": 1})));
        assert_eq!(a, b);
    }
}
