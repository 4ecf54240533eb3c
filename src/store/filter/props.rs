//! Properties of the filter parser: it never panics, what it compiles matches like a plain
//! reference evaluation, its canonical form parses back, and `and` is an intersection.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

const KEYS: &[&str] = &["a", "b", "c"];
const OPERATORS: &[&str] = &["$eq", "$ne", "$in", "$gt", "$gte", "$lt", "$lte"];

/// Scalars whose comparisons are exact in f64: small integers, halves, short strings.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..4).prop_map(Value::from),
        (-6i64..7).prop_map(|half| json!(half as f64 / 2.0)),
        prop::sample::select(vec!["", "x", "y", "xy", "é"]).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

/// Any JSON at all, keys drawn from names and operators so that the parser's every branch is
/// reached, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        scalar(),
        any::<f64>().prop_map(|n| json!(n)),
        ".*".prop_map(Value::from)
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "$and", "$in", "$gt", "$eq", "$x", "", "k\0"]),
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(
                map.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// One valid condition: key, operator and a fitting operand.
fn condition() -> impl Strategy<Value = (String, String, Value)> {
    (
        prop::sample::select(KEYS),
        prop::sample::select(OPERATORS),
        scalar(),
        prop::collection::vec(scalar(), 0..4),
    )
        .prop_map(|(key, operator, operand, list)| {
            let operand = match operator {
                "$in" => Value::Array(list),
                "$gt" | "$gte" | "$lt" | "$lte"
                    if !(operand.is_number() || operand.is_string()) =>
                {
                    json!(1)
                }
                _ => operand,
            };
            (key.to_string(), operator.to_string(), operand)
        })
}

/// A valid filter written as `$and` of single conditions, with the conditions kept.
/// A condition as (key, operator, operand).
type Written = (String, String, Value);

fn valid_filter() -> impl Strategy<Value = (Map<String, Value>, Vec<Written>)> {
    prop::collection::vec(condition(), 0..4).prop_map(|conditions| {
        let parts: Vec<Value> = conditions
            .iter()
            .map(|(key, operator, operand)| json!({ key: { operator: operand } }))
            .collect();
        let mut map = Map::new();
        if !parts.is_empty() {
            map.insert("$and".into(), Value::Array(parts));
        }
        (map, conditions)
    })
}

/// Metadata over the same keys: scalars, lists of scalars, or absent.
fn metadata() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop::sample::select(KEYS),
        prop_oneof![
            scalar(),
            prop::collection::vec(scalar(), 0..3).prop_map(Value::Array)
        ],
        0..4,
    )
    .prop_map(|map| map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The reference: the module documentation's rules, written out plainly.
fn reference(conditions: &[(String, String, Value)], metadata: &Map<String, Value>) -> bool {
    fn same(a: &Value, b: &Value) -> bool {
        match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => !a.is_number() && !b.is_number() && a == b,
        }
    }
    fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
            (Value::String(x), Value::String(y)) => Some(x.chars().cmp(y.chars())),
            _ => None,
        }
    }
    conditions.iter().all(|(key, operator, operand)| {
        let Some(actual) = metadata.get(key) else {
            return operator == "$ne";
        };
        let elements: Vec<&Value> = match actual {
            Value::Array(items) => items.iter().collect(),
            scalar => vec![scalar],
        };
        let any = |test: &dyn Fn(&Value) -> bool| elements.iter().any(|element| test(element));
        use std::cmp::Ordering::*;
        match operator.as_str() {
            "$eq" => any(&|element| same(element, operand)),
            "$ne" => !any(&|element| same(element, operand)),
            "$in" => any(&|element| {
                operand
                    .as_array()
                    .is_some_and(|list| list.iter().any(|candidate| same(element, candidate)))
            }),
            "$gt" => any(&|element| order(element, operand) == Some(Greater)),
            "$gte" => any(&|element| matches!(order(element, operand), Some(Greater | Equal))),
            "$lt" => any(&|element| order(element, operand) == Some(Less)),
            _ => any(&|element| matches!(order(element, operand), Some(Less | Equal))),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsing_any_json_never_panics(value in any_json()) {
        if let Value::Object(map) = value {
            let _ = Filter::from_json(&map);
        }
    }

    #[test]
    fn a_compiled_filter_agrees_with_the_reference(
        (map, conditions) in valid_filter(),
        metadata in metadata(),
    ) {
        let filter = Filter::from_json(&map).map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(filter.matches(&metadata), reference(&conditions, &metadata));
    }

    #[test]
    fn the_canonical_form_parses_back_and_and_intersects(
        (left, _) in valid_filter(),
        (right, _) in valid_filter(),
        metadata in metadata(),
    ) {
        let left = Filter::from_json(&left).map_err(|error| TestCaseError::fail(error.to_string()))?;
        let right = Filter::from_json(&right).map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(Filter::from_json(&left.to_json()).ok(), Some(left.clone()));
        let both = left.and(&right);
        prop_assert_eq!(both.matches(&metadata), left.matches(&metadata) && right.matches(&metadata));
        prop_assert_eq!(both, right.and(&left));
    }
}
