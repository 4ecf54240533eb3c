//! Checks that every protocol's requests pass: sizes, collection names, document ids, and
//! document metadata (bounded nesting, no NUL, bounded size). Metadata comes back in every
//! search hit, so what is stored here is what every later reader must be able to take.

use serde_json::{Map, Value};

use super::EngineError;
use crate::store::{DEFAULT_COLLECTION, validate_collection_name};

/// Deepest nesting of objects and arrays accepted in metadata, the top-level object counting
/// as one. Protobuf decoders refuse messages nested more than 100 deep, and a `Struct` costs
/// three of those levels per level of its own: a document stored from JSON over HTTP with
/// deeper metadata would make every gRPC answer that returns it undecodable by clients.
pub const MAX_METADATA_DEPTH: usize = 16;

/// Refuses metadata nested deeper than [`MAX_METADATA_DEPTH`], holding a NUL character in a
/// key or string (PostgreSQL's jsonb cannot store one), or larger than `max_bytes` as JSON.
/// `field` names the metadata in the error, e.g. `documents[3].metadata`.
pub fn metadata(
    field: &str,
    metadata: &Map<String, Value>,
    max_bytes: usize,
) -> Result<(), EngineError> {
    // An explicit stack, so that no input can make this recurse.
    let mut pending: Vec<(String, &Value, usize)> = Vec::new();
    push_object(field, metadata, 1, &mut pending)?;
    while let Some((path, value, depth)) = pending.pop() {
        match value {
            Value::String(text) if text.contains('\0') => {
                return Err(EngineError::invalid(
                    path,
                    "must not contain NUL characters",
                ));
            }
            Value::Object(map) => push_object(&path, map, depth, &mut pending)?,
            Value::Array(items) => {
                check_depth(&path, depth)?;
                for (index, item) in items.iter().enumerate() {
                    pending.push((format!("{path}[{index}]"), item, depth + 1));
                }
            }
            _ => {}
        }
    }
    let size = serde_json::to_string(metadata)
        .map(|json| json.len())
        .unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(EngineError::invalid(
            field,
            format!("{size} bytes as JSON is over the limit of {max_bytes}"),
        ));
    }
    Ok(())
}

fn push_object<'a>(
    path: &str,
    map: &'a Map<String, Value>,
    depth: usize,
    pending: &mut Vec<(String, &'a Value, usize)>,
) -> Result<(), EngineError> {
    check_depth(path, depth)?;
    for (key, value) in map {
        if key.contains('\0') {
            return Err(EngineError::invalid(
                path,
                "keys must not contain NUL characters",
            ));
        }
        pending.push((format!("{path}.{key}"), value, depth + 1));
    }
    Ok(())
}

fn check_depth(path: &str, depth: usize) -> Result<(), EngineError> {
    if depth > MAX_METADATA_DEPTH {
        return Err(EngineError::invalid(
            path,
            format!("nested more than {MAX_METADATA_DEPTH} levels deep"),
        ));
    }
    Ok(())
}

pub(super) fn collection_or_default(collection: Option<&str>) -> Result<String, EngineError> {
    let name = match collection {
        None | Some("") => DEFAULT_COLLECTION,
        Some(name) => name,
    };
    validate_collection_name(name)
        .map_err(|error| EngineError::invalid("collection", error.to_string()))?;
    Ok(name.to_string())
}

pub(super) fn check_size(field: &str, value: &str, limit: usize) -> Result<(), EngineError> {
    if value.len() > limit {
        return Err(EngineError::invalid(
            field,
            format!("{} bytes is over the limit of {limit}", value.len()),
        ));
    }
    Ok(())
}

/// Ids that no document can have (see [`check_document_id`]) are refused in lookups too, so
/// that an id means the same to every call and every store.
pub(super) fn check_lookup_ids(ids: &[String]) -> Result<(), EngineError> {
    for (index, id) in ids.iter().enumerate() {
        check_document_id(&format!("ids[{index}]"), id)?;
    }
    Ok(())
}

/// Longest document id accepted.
const MAX_DOCUMENT_ID_BYTES: usize = 512;

pub(super) fn check_document_id(field: &str, id: &str) -> Result<(), EngineError> {
    if id.len() > MAX_DOCUMENT_ID_BYTES {
        return Err(EngineError::invalid(
            field,
            format!(
                "{} bytes is over the limit of {MAX_DOCUMENT_ID_BYTES}",
                id.len()
            ),
        ));
    }
    if id.chars().any(|c| c.is_control() || c == '[' || c == ']') {
        return Err(EngineError::invalid(
            field,
            "must not contain control characters or square brackets",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(value: Value) -> Result<(), String> {
        let Value::Object(map) = value else {
            return Err("not an object".into());
        };
        metadata("m", &map, 1_000).map_err(|error| error.to_string())
    }

    #[test]
    fn nesting_is_counted_across_objects_and_arrays() {
        let mut value = json!(1);
        for level in 0..MAX_METADATA_DEPTH - 1 {
            value = if level % 2 == 0 {
                json!([value])
            } else {
                json!({ "k": value })
            };
        }
        assert_eq!(check(json!({ "top": value.clone() })), Ok(()));
        let error = check(json!({ "top": [value] })).unwrap_err();
        assert!(error.starts_with("m.top"), "{error}");
        assert!(error.contains("16 levels"), "{error}");
    }

    #[test]
    fn nul_characters_are_refused_with_their_path() {
        assert!(
            check(json!({"a": [1, {"b": "x\u{0}"}]}))
                .unwrap_err()
                .starts_with("m.a[1].b:")
        );
        assert!(check(json!({"a\u{0}": 1})).unwrap_err().starts_with("m:"));
        assert_eq!(check(json!({"a": "tab\tand\u{1b}escape"})), Ok(()));
    }

    #[test]
    fn size_is_measured_as_json() {
        assert_eq!(check(json!({"a": "x".repeat(900)})), Ok(()));
        let error = check(json!({"a": "x".repeat(1_000)})).unwrap_err();
        assert!(error.contains("over the limit of 1000"), "{error}");
    }

    #[test]
    fn metadata_of_exactly_the_limit_is_accepted() {
        let metadata = json!({"note": "x".repeat(10)});
        let metadata = metadata.as_object().expect("object");
        let size = serde_json::to_string(metadata).expect("json").len();
        assert!(super::metadata("m", metadata, size).is_ok());
        assert!(super::metadata("m", metadata, size - 1).is_err());
    }

    #[test]
    fn a_document_id_is_refused_for_each_bracket_a_control_character_or_its_length() {
        for id in ["a[b", "a]b", "a\u{7}b", "tab\there"] {
            assert!(check_document_id("id", id).is_err(), "{id:?}");
        }
        assert!(check_document_id("id", &"i".repeat(MAX_DOCUMENT_ID_BYTES)).is_ok());
        assert!(check_document_id("id", &"i".repeat(MAX_DOCUMENT_ID_BYTES + 1)).is_err());
        assert!(check_document_id("id", "plain-id_1.2 with spaces/é").is_ok());
        match check_lookup_ids(&["fine".into(), "also fine".into(), "no]".into()]) {
            Err(EngineError::InvalidArgument { field, .. }) => assert_eq!(field, "ids[2]"),
            other => panic!("expected ids[2] refused, got {other:?}"),
        }
        assert!(check_lookup_ids(&["fine".into()]).is_ok());
    }
}
