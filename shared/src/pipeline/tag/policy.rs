//! The write policy, without I/O: which names a prompt shows, what of a model's suggestion
//! may be applied, custom field values in the form Paperless stores, `pai`'s own tags, and
//! which documents are not processed at all.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde_json::json;

#[cfg(feature = "tokens")]
use crate::domain::{Document, Taxonomy};
use crate::domain::{Field, ObjectKind, Suggestion, TagInput};
use crate::text::{calendar_date, fold, plausible_date};

/// Validates the model's suggestion against the policy and the taxonomy: drops what it may
/// not set, with reasons. Never substitutes a value of its own. `control` are the folded
/// names of `pai`'s own tags, which the model may never set.
pub fn validate(
    mut s: Suggestion,
    input: &TagInput,
    today: NaiveDate,
    control: &BTreeSet<String>,
) -> (Suggestion, Vec<String>) {
    let mut rejected = Vec::new();
    let wants = |f: Field| input.fields.contains(&f);
    s.title = s
        .title
        .map(|t| {
            t.chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|t| !t.is_empty() && wants(Field::Title));
    if let Some(t) = &s.title
        && let Some(why) =
            implausible_name(t).filter(|w| !w.starts_with("longer") && !w.starts_with("more"))
    {
        rejected.push(format!("title {t:?} left alone: {why}"));
        s.title = None;
    }
    let check_name = |kind: ObjectKind,
                      restricted: bool,
                      name: Option<String>,
                      rejected: &mut Vec<String>|
     -> Option<String> {
        let name = name?.trim().chars().take(128).collect::<String>();
        if name.is_empty() {
            return None;
        }
        if kind == ObjectKind::Tag && control.contains(&fold(&name)) {
            rejected.push(format!("tag {name:?} is one of pai's control tags"));
            return None;
        }
        if let Some(existing) = input.taxonomy.find(kind, &name) {
            return Some(existing.name.clone());
        }
        if restricted {
            rejected.push(format!("{kind:?} {name:?} is not in the existing taxonomy"));
            return None;
        }
        // A new name is created in Paperless: it must look like one.
        if let Some(why) = implausible_name(&name) {
            rejected.push(format!("new {kind:?} {name:?} not created: {why}"));
            return None;
        }
        Some(name)
    };
    let mut tags = Vec::new();
    for t in std::mem::take(&mut s.tags) {
        if let Some(name) = check_name(ObjectKind::Tag, input.restrict_tags, Some(t), &mut rejected)
            && !tags.iter().any(|x: &String| fold(x) == fold(&name))
        {
            tags.push(name);
        }
    }
    s.tags = if wants(Field::Tags) {
        tags.into_iter().take(12).collect()
    } else {
        Vec::new()
    };
    s.correspondent = check_name(
        ObjectKind::Correspondent,
        input.restrict_correspondents,
        s.correspondent.take(),
        &mut rejected,
    )
    .filter(|_| wants(Field::Correspondent));
    s.document_type = check_name(
        ObjectKind::DocumentType,
        input.restrict_document_types,
        s.document_type.take(),
        &mut rejected,
    )
    .filter(|_| wants(Field::DocumentType));
    s.created = match s.created.take().filter(|_| wants(Field::Created)) {
        None => None,
        Some(c) => match plausible_date(&c, today) {
            Ok(d) => Some(d.to_string()),
            Err(reason) => {
                rejected.push(format!("created date left alone: {reason}"));
                None
            }
        },
    };
    // Storage paths are chosen from the existing ones only, never created.
    s.storage_path = match s.storage_path.take().filter(|_| wants(Field::StoragePath)) {
        Some(p) => match input
            .taxonomy
            .storage_paths
            .iter()
            .find(|x| fold(&x.name) == fold(&p))
        {
            Some(existing) => Some(existing.name.clone()),
            None => {
                rejected.push(format!("storage path {p:?} does not exist"));
                None
            }
        },
        None => None,
    };
    let suggested = std::mem::take(&mut s.custom_fields);
    if wants(Field::CustomFields) {
        for (name, value) in suggested {
            let Some(def) = input
                .custom_fields
                .iter()
                .find(|f| fold(&f.name) == fold(&name))
            else {
                rejected.push(format!("custom field {name:?} is not one of CUSTOM_FIELDS"));
                continue;
            };
            if value.is_null() {
                continue;
            }
            match custom_value(def, &value) {
                Ok(v) => {
                    s.custom_fields.insert(def.name.clone(), v);
                }
                Err(reason) => {
                    rejected.push(format!("custom field {:?} left alone: {reason}", def.name))
                }
            }
        }
    }
    (s, rejected)
}

/// A model's value for a custom field, in the form Paperless stores for its data type, or
/// why it cannot be one.
pub fn custom_value(
    def: &crate::domain::CustomFieldDef,
    value: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => return Err(format!("{other} is not a single value")),
    };
    let number = |t: &str| -> Option<f64> {
        // "1.234,56" and "1,234.56" both mean 1234.56; a lone comma is a decimal comma.
        let t: String = t
            .chars()
            .filter(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '-'))
            .collect();
        let normalised = match (t.rfind(','), t.rfind('.')) {
            (Some(c), Some(d)) if c > d => t.replace('.', "").replace(',', "."),
            (Some(_), Some(_)) => t.replace(',', ""),
            (Some(_), None) => t.replace(',', "."),
            _ => t,
        };
        normalised.parse::<f64>().ok().filter(|n| n.is_finite())
    };
    match def.data_type.as_str() {
        "string" | "longtext" => {
            let limit = if def.data_type == "string" {
                128
            } else {
                10_000
            };
            (!text.is_empty())
                .then(|| json!(text.chars().take(limit).collect::<String>()))
                .ok_or_else(|| "empty".into())
        }
        "url" if text.starts_with("https://") || text.starts_with("http://") => Ok(json!(text)),
        "url" => Err(format!("{text:?} is not a URL")),
        // Due dates and expiry dates lie ahead: only the created date may not be in the future.
        "date" => calendar_date(&text).map(|d| json!(d.to_string())),
        "boolean" => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "ja" => Ok(json!(true)),
            "false" | "no" | "nein" => Ok(json!(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        "integer" => text
            .parse::<i64>()
            .map(|n| json!(n))
            .map_err(|_| format!("{text:?} is not a whole number")),
        "float" => number(&text)
            .map(|n| json!(n))
            .ok_or_else(|| format!("{text:?} is not a number")),
        "monetary" => match value {
            // A JSON number has no locale: it is the amount itself.
            Value::Number(n) => n
                .as_f64()
                .filter(|n| n.is_finite())
                .map(|n| json!(format!("{n:.2}")))
                .ok_or_else(|| format!("{n} is not an amount")),
            _ => crate::domain::parse_money(&text).map(|m| json!(m)),
        },
        "select" => def
            .select_options
            .iter()
            .find(|o| fold(&o.label) == fold(&text))
            .map(|o| json!(o.id))
            .ok_or_else(|| format!("{text:?} is not one of its options")),
        other => Err(format!("fields of type {other} are not filled")),
    }
}

/// Names of the tags `pai` itself manages (processed, failed, review, trigger, include and
/// exclude), folded: never shown to the model, never taken from its reply. A model that could
/// tag a document `private` could hide it from the index, or pull it in.
pub fn control_tags(settings: &crate::config::Settings) -> BTreeSet<String> {
    let p = &settings.policy;
    [&p.processed_tag, &p.failed_tag, &settings.review_tag]
        .into_iter()
        .chain(p.trigger_tag.iter())
        .chain(p.include_tags.iter())
        .chain(p.exclude_tags.iter())
        .map(|t| fold(t))
        .collect()
}

/// Why a name the model invented (not in the taxonomy) is not created, if it is not: a new
/// tag, correspondent or type must look like a name, not like a link, markup or a sentence a
/// document slipped into the reply.
pub fn implausible_name(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    if name.chars().count() > 64 {
        return Some("longer than 64 characters".into());
    }
    if name.split_whitespace().count() > 8 {
        return Some("more than 8 words".into());
    }
    // "Amazon.de" is a correspondent; "https://…" or "www.…" is an instruction to click.
    if ["://", "www.", "mailto:", "javascript:", "data:"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return Some("looks like a link".into());
    }
    if name.chars().any(|c| {
        c.is_control() || matches!(c, '<' | '>' | '{' | '}' | '[' | ']' | '`' | '|' | '\\')
    }) {
        return Some("contains markup or control characters".into());
    }
    if !name.chars().any(char::is_alphanumeric) {
        return Some("has no letters or digits".into());
    }
    None
}

/// Why a document is not to be processed by policy, if it is not (before a model call: the
/// stage and a re-run's estimate, both with `tokens`).
#[cfg(feature = "tokens")]
pub(super) fn excluded(
    doc: &Document,
    taxonomy: &Taxonomy,
    policy: &crate::config::TaggingPolicy,
) -> Option<String> {
    let names = crate::pipeline::index::tag_names(doc, taxonomy);
    if !policy.include_tags.is_empty()
        && !policy.include_tags.iter().any(|t| names.contains(&fold(t)))
    {
        return Some("none of INCLUDE_TAGS on the document".into());
    }
    crate::pipeline::chunk::exclude_tag(doc, taxonomy, policy)
        .map(|t| format!("document has excluded tag {t:?}"))
}
