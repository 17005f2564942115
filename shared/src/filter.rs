//! The metadata filter language of Amazon S3 Vectors, parsed once and evaluated by the embedded
//! index, so a filter that works in `pai` works unchanged on AWS (`to_json` gives back the
//! document S3 Vectors expects).
//!
//! Operators: `$eq` (implicit for `{"k": v}`; on an array matches if any element equals), `$ne`,
//! `$gt` `$gte` `$lt` `$lte` (numbers), `$in` `$nin` (non-empty arrays of scalars), `$exists`,
//! `$startsWith` (a non-empty string prefix; on an array, any element; S3 Vectors supports it
//! in `ENHANCED` index mode, which the AWS adapter queries in), `$and` `$or` (non-empty arrays
//! of filters). At most [`MAX_CONSTRAINTS`] conditions per filter, S3 Vectors' limit.

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Field(String, Condition),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Eq(Scalar),
    Ne(Scalar),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    In(Vec<Scalar>),
    Nin(Vec<Scalar>),
    Exists(bool),
    StartsWith(String),
}

/// Most conditions one filter may hold (S3 Vectors' limit in `ENHANCED` mode).
pub const MAX_CONSTRAINTS: usize = 100;

/// Why a filter document was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

impl Scalar {
    fn parse(v: &Value) -> Result<Scalar, FilterError> {
        match v {
            Value::String(s) => Ok(Scalar::Str(s.clone())),
            Value::Bool(b) => Ok(Scalar::Bool(*b)),
            Value::Number(n) => n
                .as_f64()
                .map(Scalar::Num)
                .ok_or_else(|| FilterError(format!("number out of range: {n}"))),
            other => err(format!("expected a string, number or boolean, got {other}")),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Scalar::Str(s) => json!(s),
            Scalar::Num(n) => json!(n),
            Scalar::Bool(b) => json!(b),
        }
    }

    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => a == b,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => b.as_f64() == Some(*a),
            _ => false,
        }
    }
}

impl Filter {
    /// Parses and validates a filter document.
    pub fn parse(doc: &Value) -> Result<Filter, FilterError> {
        let filter = Self::parse_part(doc)?;
        let n = filter.constraints();
        if n > MAX_CONSTRAINTS {
            return err(format!(
                "{n} conditions, more than the {MAX_CONSTRAINTS} a filter may hold"
            ));
        }
        Ok(filter)
    }

    /// How many field conditions the filter holds.
    fn constraints(&self) -> usize {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().map(Filter::constraints).sum(),
            Filter::Field(..) => 1,
        }
    }

    fn parse_part(doc: &Value) -> Result<Filter, FilterError> {
        let Value::Object(map) = doc else {
            return err("a filter is a JSON object");
        };
        if map.is_empty() {
            return err("empty filter object");
        }
        let mut parts = Vec::with_capacity(map.len());
        for (key, value) in map {
            parts.push(match key.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = value else {
                        return err(format!("{key} takes an array of filters"));
                    };
                    if items.is_empty() {
                        return err(format!("{key} needs at least one filter"));
                    }
                    let subs = items
                        .iter()
                        .map(Filter::parse_part)
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "$and" {
                        Filter::And(subs)
                    } else {
                        Filter::Or(subs)
                    }
                }
                op if op.starts_with('$') => {
                    return err(format!("unknown operator {op} at top level"));
                }
                field => Self::parse_field(field, value)?,
            });
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Filter::And(parts)
        })
    }

    fn parse_field(field: &str, value: &Value) -> Result<Filter, FilterError> {
        if field.is_empty() {
            return err("empty field name");
        }
        let ops = match value {
            Value::Object(ops) => ops,
            scalar => {
                return Ok(Filter::Field(
                    field.into(),
                    Condition::Eq(Scalar::parse(scalar)?),
                ));
            }
        };
        if ops.is_empty() {
            return err(format!("no operator for field {field}"));
        }
        let num = |op: &str, v: &Value| {
            v.as_f64()
                .ok_or_else(|| FilterError(format!("{op} on {field} takes a number")))
        };
        let list = |op: &str, v: &Value| -> Result<Vec<Scalar>, FilterError> {
            match v {
                Value::Array(items) if !items.is_empty() => {
                    items.iter().map(Scalar::parse).collect()
                }
                _ => err(format!("{op} on {field} takes a non-empty array")),
            }
        };
        let mut conds = Vec::with_capacity(ops.len());
        for (op, v) in ops {
            let cond = match op.as_str() {
                "$eq" => Condition::Eq(Scalar::parse(v)?),
                "$ne" => Condition::Ne(Scalar::parse(v)?),
                "$gt" => Condition::Gt(num(op, v)?),
                "$gte" => Condition::Gte(num(op, v)?),
                "$lt" => Condition::Lt(num(op, v)?),
                "$lte" => Condition::Lte(num(op, v)?),
                "$in" => Condition::In(list(op, v)?),
                "$nin" => Condition::Nin(list(op, v)?),
                "$exists" => {
                    Condition::Exists(v.as_bool().ok_or_else(|| {
                        FilterError(format!("$exists on {field} takes a boolean"))
                    })?)
                }
                "$startsWith" => match v {
                    Value::String(p) if !p.is_empty() => Condition::StartsWith(p.clone()),
                    _ => return err(format!("$startsWith on {field} takes a non-empty string")),
                },
                other => return err(format!("unknown operator {other} on field {field}")),
            };
            conds.push(Filter::Field(field.into(), cond));
        }
        Ok(if conds.len() == 1 {
            conds.pop().expect("one")
        } else {
            Filter::And(conds)
        })
    }

    /// Whether a vector with this filterable metadata passes the filter.
    pub fn matches(&self, meta: &Map<String, Value>) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(meta)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(meta)),
            Filter::Field(name, cond) => {
                let value = meta.get(name);
                let any = |pred: &dyn Fn(&Value) -> bool| match value {
                    Some(Value::Array(items)) => items.iter().any(pred),
                    Some(v) => pred(v),
                    None => false,
                };
                let number =
                    |pred: &dyn Fn(f64) -> bool| value.and_then(Value::as_f64).is_some_and(pred);
                match cond {
                    Condition::Eq(s) => any(&|v| s.matches(v)),
                    Condition::Ne(s) => !any(&|v| s.matches(v)),
                    Condition::Gt(n) => number(&|x| x > *n),
                    Condition::Gte(n) => number(&|x| x >= *n),
                    Condition::Lt(n) => number(&|x| x < *n),
                    Condition::Lte(n) => number(&|x| x <= *n),
                    Condition::In(list) => any(&|v| list.iter().any(|s| s.matches(v))),
                    Condition::Nin(list) => !any(&|v| list.iter().any(|s| s.matches(v))),
                    Condition::Exists(want) => value.is_some() == *want,
                    Condition::StartsWith(p) => {
                        any(&|v| v.as_str().is_some_and(|s| s.starts_with(p.as_str())))
                    }
                }
            }
        }
    }

    /// The filter as an S3 Vectors filter document (explicit operators).
    pub fn to_json(&self) -> Value {
        match self {
            Filter::And(fs) => json!({"$and": fs.iter().map(Filter::to_json).collect::<Vec<_>>()}),
            Filter::Or(fs) => json!({"$or": fs.iter().map(Filter::to_json).collect::<Vec<_>>()}),
            Filter::Field(name, cond) => {
                let (op, v) = match cond {
                    Condition::Eq(s) => ("$eq", s.to_json()),
                    Condition::Ne(s) => ("$ne", s.to_json()),
                    Condition::Gt(n) => ("$gt", json!(n)),
                    Condition::Gte(n) => ("$gte", json!(n)),
                    Condition::Lt(n) => ("$lt", json!(n)),
                    Condition::Lte(n) => ("$lte", json!(n)),
                    Condition::In(l) => {
                        ("$in", Value::Array(l.iter().map(Scalar::to_json).collect()))
                    }
                    Condition::Nin(l) => (
                        "$nin",
                        Value::Array(l.iter().map(Scalar::to_json).collect()),
                    ),
                    Condition::Exists(b) => ("$exists", json!(b)),
                    Condition::StartsWith(p) => ("$startsWith", json!(p)),
                };
                json!({ name: { op: v } })
            }
        }
    }

    /// Joins filters with `$and`, leaving out none.
    pub fn all(mut parts: Vec<Filter>) -> Option<Filter> {
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Filter::And(parts)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Map<String, Value> {
        json!({"doc_id": "12", "tags": ["invoice", "home"], "year": 2024, "created": 20240314, "paid": true}).as_object().unwrap().clone()
    }

    fn check(filter: Value, expected: bool) {
        let f = Filter::parse(&filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(f.matches(&meta()), expected, "{filter}");
        let again = Filter::parse(&f.to_json()).unwrap();
        assert_eq!(again.matches(&meta()), expected, "round trip of {filter}");
    }

    #[test]
    fn every_operator() {
        check(json!({"doc_id": "12"}), true);
        check(json!({"doc_id": {"$eq": "13"}}), false);
        check(json!({"tags": "home"}), true);
        check(json!({"tags": {"$ne": "home"}}), false);
        check(json!({"tags": {"$ne": "tax"}}), true);
        check(json!({"year": {"$gte": 2020, "$lte": 2024}}), true);
        check(json!({"year": {"$gt": 2024}}), false);
        check(json!({"year": {"$lt": 2025}}), true);
        check(
            json!({"created": {"$gte": 20240101, "$lte": 20241231}}),
            true,
        );
        check(json!({"tags": {"$in": ["tax", "invoice"]}}), true);
        check(json!({"tags": {"$nin": ["tax", "invoice"]}}), false);
        check(json!({"owner": {"$exists": false}}), true);
        check(json!({"paid": {"$exists": true}}), true);
        check(json!({"paid": true}), true);
        check(
            json!({"$and": [{"tags": "invoice"}, {"year": 2023}]}),
            false,
        );
        check(json!({"$or": [{"tags": "tax"}, {"year": 2024}]}), true);
        check(json!({"missing": {"$gt": 1}}), false);
        check(json!({"year": 1999}), false);
        check(json!({"doc_id": {"$startsWith": "1"}}), true);
        check(json!({"doc_id": {"$startsWith": "2"}}), false);
        check(json!({"tags": {"$startsWith": "inv"}}), true);
        check(json!({"year": {"$startsWith": "20"}}), false);
    }

    #[test]
    fn a_filter_holds_at_most_a_hundred_conditions() {
        let many = |n: usize| json!({"$or": (0..n).map(|i| json!({"doc_id": i.to_string()})).collect::<Vec<_>>()});
        assert!(Filter::parse(&many(MAX_CONSTRAINTS)).is_ok());
        assert!(Filter::parse(&many(MAX_CONSTRAINTS + 1)).is_err());
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in [
            json!([]),
            json!({}),
            json!({"$and": []}),
            json!({"$or": {}}),
            json!({"$xor": [{}]}),
            json!({"a": {"$foo": 1}}),
            json!({"a": {"$gt": "x"}}),
            json!({"a": {"$in": []}}),
            json!({"a": {"$in": [[1]]}}),
            json!({"a": {"$exists": "yes"}}),
            json!({"a": null}),
            json!({"a": {}}),
            json!({"a": {"$startsWith": ""}}),
            json!({"a": {"$startsWith": 1}}),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad}");
        }
    }
}
