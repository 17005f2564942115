//! JSON ↔ `aws_smithy_types::Document`: S3 Vectors takes metadata and filters, and Bedrock
//! tool schemas and tool inputs, as smithy documents, while the ports, the filter language and
//! the reply schemas speak `serde_json`. Integers stay
//! integers both ways (a `doc_id` of 12 must not come back as 12.0), floats stay floats.

use aws_smithy_types::{Document, Number};
use serde_json::{Map, Value};

/// Converts a JSON value into a smithy document.
pub fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            // serde_json numbers are u64, i64 or finite f64: this is the f64 case.
            Number::Float(n.as_f64().unwrap_or_default())
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect(),
        ),
    }
}

/// Converts a smithy document into JSON. A float JSON cannot hold (NaN, ±∞) becomes null.
pub fn to_json(doc: &Document) -> Value {
    match doc {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Document::Object(map) => Value::Object(to_json_map(map.iter())),
    }
}

/// A document object's entries as a JSON map, keys sorted (JSON maps here are ordered).
pub fn to_json_map<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Document)>,
) -> Map<String, Value> {
    entries.map(|(k, v)| (k.clone(), to_json(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_integers_integers_and_floats_floats() {
        let v = json!({
            "doc_id": 12,
            "neg": -3,
            "big": u64::MAX,
            "score": 0.25,
            "whole_float": 20240601.0,
            "s": "ü",
            "b": true,
            "n": null,
        });
        let doc = to_document(&v);
        let Document::Object(map) = &doc else {
            panic!("an object")
        };
        assert_eq!(map["doc_id"], Document::Number(Number::PosInt(12)));
        assert_eq!(map["neg"], Document::Number(Number::NegInt(-3)));
        assert_eq!(map["score"], Document::Number(Number::Float(0.25)));
        assert_eq!(
            map["whole_float"],
            Document::Number(Number::Float(20240601.0))
        );
        assert_eq!(to_json(&doc), v);
        assert!(to_json(&doc)["doc_id"].is_u64());
        assert!(to_json(&doc)["whole_float"].is_f64());
    }

    #[test]
    fn nested_filters_round_trip() {
        let v = json!({"$and": [
            {"tags": {"$in": ["tax", "home"]}},
            {"created": {"$gte": 20240101, "$lt": 20250101.5}},
            {"$or": [{"doc_id": {"$eq": "1"}}, {"flag": {"$exists": false}}]},
            {"list": [[1, -2], []]},
        ]});
        assert_eq!(to_json(&to_document(&v)), v);
    }

    #[test]
    fn floats_json_cannot_hold_become_null() {
        assert_eq!(
            to_json(&Document::Number(Number::Float(f64::NAN))),
            Value::Null
        );
        assert_eq!(
            to_json(&Document::Number(Number::NegInt(5))),
            json!(5),
            "a NegInt that is positive is still an integer"
        );
    }
}
