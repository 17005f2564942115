//! Reads the SAM template (`template.yaml`) for the template tests and the environment-contract
//! test. CloudFormation's short tags become their long JSON form while parsing (`!Ref X` →
//! `{"Ref": "X"}`, `!GetAtt A.B` → `{"Fn::GetAtt": ["A", "B"]}`, `!Sub s` → `{"Fn::Sub": s}`,
//! `!If [...]` → `{"Fn::If": [...]}`, `!Condition C` → `{"Condition": "C"}`), so a test can
//! tell a reference from a literal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use yaml_rust2::parser::{Event, EventReceiver, Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;

/// The workspace root (where `template.yaml` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `template.yaml`, parsed; panics with the reason if it cannot be read or parsed.
pub fn load() -> Value {
    let path = workspace_root().join("template.yaml");
    let src = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_cfn_yaml(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses one CloudFormation YAML document into JSON (long form for short tags).
pub fn parse_cfn_yaml(src: &str) -> Result<Value, String> {
    let mut builder = Builder::default();
    Parser::new_from_str(src)
        .load(&mut builder, false)
        .map_err(|e| e.to_string())?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    builder.doc.ok_or_else(|| "empty document".to_string())
}

/// The `AWS::Serverless::Function` resources: logical id → resource.
pub fn functions(template: &Value) -> BTreeMap<String, Value> {
    resources_of_type(template, "AWS::Serverless::Function")
}

/// Resources of one type: logical id → resource.
pub fn resources_of_type(template: &Value, ty: &str) -> BTreeMap<String, Value> {
    template["Resources"]
        .as_object()
        .map(|r| {
            r.iter()
                .filter(|(_, v)| v["Type"] == ty)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The function whose binary is `pai-<name>` (`name` as in `functions/<name>`: ingest, chunk,
/// embed, tag, chat, sync; `pai-<name>` and the logical id are accepted too).
pub fn function(template: &Value, name: &str) -> Option<(String, Value)> {
    let binary = if name.starts_with("pai-") {
        name.to_string()
    } else {
        format!("pai-{name}")
    };
    functions(template)
        .into_iter()
        .find(|(id, f)| id == name || f["Metadata"]["BuildProperties"]["Binary"] == binary)
}

/// A function property, falling back to `Globals.Function`.
pub fn function_property(template: &Value, function: &Value, property: &str) -> Value {
    match &function["Properties"][property] {
        Value::Null => template["Globals"]["Function"][property].clone(),
        v => v.clone(),
    }
}

/// The variables every function gets (`Globals.Function.Environment.Variables`).
pub fn global_env_vars(template: &Value) -> BTreeMap<String, Value> {
    vars(&template["Globals"]["Function"]["Environment"]["Variables"])
}

/// The variables one function sets itself (without the globals).
pub fn own_env_vars(function: &Value) -> BTreeMap<String, Value> {
    vars(&function["Properties"]["Environment"]["Variables"])
}

fn vars(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Names of the environment variables a function gets on AWS: the globals and its own.
/// `function` as in `functions/<name>` (ingest, chunk, embed, tag, chat, sync). Panics if the
/// template has no such function.
pub fn template_env(function: &str) -> BTreeSet<String> {
    let t = load();
    let (_, f) = self::function(&t, function)
        .unwrap_or_else(|| panic!("template.yaml has no function with binary pai-{function}"));
    global_env_vars(&t)
        .into_keys()
        .chain(own_env_vars(&f).into_keys())
        .collect()
}

/// The environment a function starts with when every parameter keeps its default: `Ref`s to
/// parameters become their defaults, other references a placeholder naming them
/// (`<ChunkQueue>`), literals stay. What `Settings` parses on Lambda, minus the secrets.
pub fn default_env(function: &str) -> BTreeMap<String, String> {
    let t = load();
    let (_, f) = self::function(&t, function)
        .unwrap_or_else(|| panic!("template.yaml has no function with binary pai-{function}"));
    let params = parameter_defaults(&t);
    global_env_vars(&t)
        .into_iter()
        .chain(own_env_vars(&f))
        .map(|(k, v)| (k, resolve(&v, &params)))
        .collect()
}

/// Every parameter's default, as the string CloudFormation would substitute.
pub fn parameter_defaults(template: &Value) -> BTreeMap<String, String> {
    template["Parameters"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, p)| Some((k.clone(), scalar_string(&p["Default"])?)))
                .collect()
        })
        .unwrap_or_default()
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn resolve(v: &Value, params: &BTreeMap<String, String>) -> String {
    if let Some(s) = scalar_string(v) {
        return s;
    }
    if let Some(name) = v["Ref"].as_str() {
        return params
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("<{name}>"));
    }
    if let Some(att) = v["Fn::GetAtt"].as_array() {
        let parts: Vec<&str> = att.iter().filter_map(Value::as_str).collect();
        return format!("<{}>", parts.join("."));
    }
    format!("<{v}>")
}

/// Builds JSON from the parser's events.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    doc: Option<Value>,
    error: Option<String>,
}

enum Frame {
    Seq(Vec<Value>, Option<Tag>),
    Map(Map<String, Value>, Option<String>, Option<Tag>),
}

impl Builder {
    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    fn push_value(&mut self, v: Value) {
        match self.stack.last_mut() {
            None => self.doc = Some(v),
            Some(Frame::Seq(items, _)) => items.push(v),
            Some(Frame::Map(map, key, _)) => match key.take() {
                Some(k) => {
                    if map.insert(k.clone(), v).is_some() {
                        self.fail(format!("duplicate key {k:?}"));
                    }
                }
                None => match v {
                    Value::String(k) => *key = Some(k),
                    Value::Number(n) => *key = Some(n.to_string()),
                    Value::Bool(b) => *key = Some(b.to_string()),
                    other => self.fail(format!("unsupported mapping key {other}")),
                },
            },
        }
    }

    fn awaiting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map(_, None, _)))
    }
}

impl EventReceiver for Builder {
    fn on_event(&mut self, ev: Event) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::SequenceStart(_, tag) => self.stack.push(Frame::Seq(Vec::new(), tag)),
            Event::MappingStart(_, tag) => self.stack.push(Frame::Map(Map::new(), None, tag)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (v, tag) = match self.stack.pop() {
                    Some(Frame::Seq(items, tag)) => (Value::Array(items), tag),
                    Some(Frame::Map(map, None, tag)) => (Value::Object(map), tag),
                    Some(Frame::Map(_, Some(k), _)) => {
                        return self.fail(format!("key {k:?} has no value"));
                    }
                    None => return self.fail("unbalanced YAML events".into()),
                };
                match tagged(v, tag) {
                    Ok(v) => self.push_value(v),
                    Err(e) => self.fail(e),
                }
            }
            Event::Scalar(s, style, _, tag) => {
                // Keys stay strings ("2010-09-09", "true"), values resolve like YAML's core schema.
                let v = if self.awaiting_key() || style != TScalarStyle::Plain {
                    Value::String(s)
                } else {
                    plain(&s)
                };
                match tagged(v, tag) {
                    Ok(v) => self.push_value(v),
                    Err(e) => self.fail(e),
                }
            }
            Event::Alias(_) => self.fail("YAML aliases are not supported".into()),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// A plain scalar as YAML's core schema reads it.
fn plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return json!(i);
    }
    if s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_string())
}

/// Applies a tag: CloudFormation short forms become their long form.
fn tagged(v: Value, tag: Option<Tag>) -> Result<Value, String> {
    let Some(Tag { handle, suffix }) = tag else {
        return Ok(v);
    };
    match handle.as_str() {
        "!" => Ok(match suffix.as_str() {
            "Ref" => json!({ "Ref": v }),
            "Condition" => json!({ "Condition": v }),
            "GetAtt" => {
                let v = match v {
                    Value::String(s) => match s.split_once('.') {
                        Some((resource, attribute)) => json!([resource, attribute]),
                        None => return Err(format!("!GetAtt {s:?} has no attribute")),
                    },
                    other => other,
                };
                json!({ "Fn::GetAtt": v })
            }
            other => {
                let mut m = Map::new();
                m.insert(format!("Fn::{other}"), v);
                Value::Object(m)
            }
        }),
        "tag:yaml.org,2002:" => Ok(match (suffix.as_str(), v) {
            ("str", Value::Number(n)) => Value::String(n.to_string()),
            ("str", Value::Bool(b)) => Value::String(b.to_string()),
            ("str", Value::Null) => Value::String(String::new()),
            (_, v) => v,
        }),
        other => Err(format!("unknown YAML tag handle {other:?}{suffix}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tags_become_long_form() {
        let v = parse_cfn_yaml(
            "A: !Ref Param\n\
             B: !GetAtt Queue.Arn\n\
             C: !Sub 'arn:${AWS::Partition}:s3:::x'\n\
             D: !If [Cond, [!Ref X], !Ref AWS::NoValue]\n\
             E: !Select [2, !Split ['/', !Ref AWS::StackId]]\n\
             F: !Or [!Condition A, !Condition B]\n\
             G: {Name: x, Value: 5}\n\
             H: '2010-09-09'\n\
             I: 0\n\
             J: true\n\
             K: |\n  {\"a\": 1}\n",
        )
        .unwrap();
        assert_eq!(v["A"], json!({"Ref": "Param"}));
        assert_eq!(v["B"], json!({"Fn::GetAtt": ["Queue", "Arn"]}));
        assert_eq!(v["C"], json!({"Fn::Sub": "arn:${AWS::Partition}:s3:::x"}));
        assert_eq!(
            v["D"],
            json!({"Fn::If": ["Cond", [{"Ref": "X"}], {"Ref": "AWS::NoValue"}]})
        );
        assert_eq!(
            v["E"],
            json!({"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]})
        );
        assert_eq!(
            v["F"],
            json!({"Fn::Or": [{"Condition": "A"}, {"Condition": "B"}]})
        );
        assert_eq!(v["G"], json!({"Name": "x", "Value": 5}));
        assert_eq!(v["H"], json!("2010-09-09"));
        assert_eq!((v["I"].clone(), v["J"].clone()), (json!(0), json!(true)));
        assert_eq!(v["K"], json!("{\"a\": 1}\n"));
    }

    #[test]
    fn bad_yaml_is_an_error() {
        assert!(parse_cfn_yaml("A: [1, 2").is_err());
        assert!(parse_cfn_yaml("A: 1\nA: 2\n").is_err());
        assert!(parse_cfn_yaml("A: !GetAtt NoAttribute\n").is_err());
    }
}
