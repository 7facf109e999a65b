//! docs/configuration.md lists exactly the fields the configuration parser accepts.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;

use model_router::config::Config;

/// The fields serde expects at some level, read from its "unknown field" error.
fn accepted(json_with_unknown: &str) -> BTreeSet<String> {
    let e = Config::from_json(json_with_unknown.as_bytes()).unwrap_err().to_string();
    let list = e.split("expected one of ").nth(1).unwrap_or_else(|| panic!("{e}"));
    let list = list.split(" at line").next().unwrap_or(list);
    list.split(", ").map(|f| f.trim_matches('`').to_string()).collect()
}

#[test]
fn configuration_reference_matches_the_parser() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    let mut top = BTreeSet::new();
    let mut model = BTreeSet::new();
    let mut dest = BTreeSet::new();
    // The table of the "## Fields" section (other tables document other things).
    let fields = doc.split("\n## Fields").nth(1).unwrap_or_default();
    let fields = fields.split("\n## ").next().unwrap_or_default();
    for line in fields.lines().filter(|l| l.starts_with("| `")) {
        let field = line.split('`').nth(1).unwrap();
        if let Some(f) = field.strip_prefix("models[].destinations[].") {
            dest.insert(f.to_string());
        } else if let Some(f) = field.strip_prefix("models[].") {
            model.insert(f.to_string());
        } else if !field.contains(['[', '.', ' ']) {
            top.insert(field.to_string());
        }
    }
    assert_eq!(top, accepted(r#"{"models":[],"zzz":1}"#), "top-level fields");
    assert_eq!(
        model,
        accepted(r#"{"models":[{"name":"a","destinations":[{"name":"x"}],"zzz":1}]}"#),
        "model fields"
    );
    assert_eq!(
        dest,
        accepted(r#"{"models":[{"name":"a","destinations":[{"name":"x","zzz":1}]}]}"#),
        "destination fields"
    );
}
