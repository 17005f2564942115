use serde_json::json;

use super::*;
use crate::domain::{CustomFieldDef, Document, SelectOption, Taxonomy};

fn def(data_type: &str) -> CustomFieldDef {
    let select_options = vec![
        SelectOption {
            id: "opt1".into(),
            label: "Hoch".into(),
        },
        SelectOption {
            id: "opt2".into(),
            label: "Niedrig".into(),
        },
    ];
    CustomFieldDef {
        id: 1,
        name: "F".into(),
        data_type: data_type.into(),
        select_options,
    }
}

#[test]
fn include_and_exclude_tags_decide_what_is_processed() {
    use crate::domain::TaxonomyObject;
    let tag = |id, name: &str| TaxonomyObject {
        id,
        name: name.into(),
        match_words: String::new(),
        matching_algorithm: 0,
        document_count: 0,
    };
    let taxonomy = Taxonomy {
        tags: vec![tag(1, "Inbox"), tag(2, "Private"), tag(3, "Tax")],
        ..Default::default()
    };
    let settings = |pairs: &[(&str, &str)]| {
        crate::config::Settings::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    };
    let doc = |tags: Vec<u64>| Document {
        id: 1,
        tags,
        ..Default::default()
    };
    let include = settings(&[("INCLUDE_TAGS", "inbox,tax")]).policy;
    assert!(excluded(&doc(vec![1]), &taxonomy, &include).is_none());
    assert!(
        excluded(&doc(vec![2]), &taxonomy, &include)
            .unwrap()
            .contains("INCLUDE_TAGS")
    );
    let exclude = settings(&[("EXCLUDE_TAGS", "PRIVATE")]).policy;
    assert!(
        excluded(&doc(vec![1, 2]), &taxonomy, &exclude)
            .unwrap()
            .contains("excluded tag"),
        "matched case-insensitively"
    );
    assert!(excluded(&doc(vec![]), &taxonomy, &exclude).is_none());
}

#[test]
fn custom_values_take_paperless_form_or_are_refused() {
    let ok = |t: &str, v: serde_json::Value| custom_value(&def(t), &v).unwrap();
    assert_eq!(ok("monetary", json!("EUR 1.250,00")), json!("EUR1250.00"));
    assert_eq!(ok("monetary", json!("743.04 €")), json!("EUR743.04"));
    assert_eq!(ok("monetary", json!(12.5)), json!("12.50"));
    assert_eq!(ok("select", json!("hoch")), json!("opt1"));
    assert_eq!(ok("date", json!("2025-03-14")), json!("2025-03-14"));
    // A due date lies ahead (it was refused as "in the future").
    assert_eq!(ok("date", json!("2099-01-01")), json!("2099-01-01"));
    // Thousands are thousands (they were read as decimals: EUR65.00, USD98.00).
    assert_eq!(ok("monetary", json!("65.000 EUR")), json!("EUR65000.00"));
    assert_eq!(ok("monetary", json!("USD 98,000")), json!("USD98000.00"));
    assert_eq!(ok("boolean", json!("yes")), json!(true));
    assert_eq!(ok("integer", json!("42")), json!(42));
    assert_eq!(ok("float", json!("3,5")), json!(3.5));
    assert_eq!(
        ok("url", json!("https://example.org/x")),
        json!("https://example.org/x")
    );
    for (t, v) in [
        ("select", json!("Mittel")),
        ("date", json!("2300-01-01")),
        ("date", json!("14.03.2025")),
        ("integer", json!("4.5")),
        ("url", json!("javascript:alert(1)")),
        ("monetary", json!("a lot")),
        ("string", json!([1])),
    ] {
        assert!(custom_value(&def(t), &v).is_err(), "{t} {v}");
    }
}

#[test]
fn invented_names_must_look_like_names() {
    for ok in [
        "Plumbing",
        "Amazon.de",
        "Stadtwerke München",
        "Tax 2025",
        "C&A",
    ] {
        assert_eq!(implausible_name(ok), None, "{ok}");
    }
    let long = "x".repeat(65);
    for bad in [
        "visit https://evil.example/x",
        "www.example.org",
        "<script>",
        "a name with far too many words to be any kind of tag",
        "line\nbreak",
        "---",
        long.as_str(),
    ] {
        assert!(implausible_name(bad).is_some(), "{bad}");
    }
}
