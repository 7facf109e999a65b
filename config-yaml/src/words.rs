//! A configuration error in a person's words: what `wasmpack check` prints and the playground
//! shows, the same text for the same file. The core's `ErrorKind` displays serde's phrasing
//! (`invalid type: string "ten", expected u32`), which the filter logs; people read types in words
//! (`expected a whole number from 0 to 4294967295, found "ten"`) and a suggestion for a misspelt
//! field or value.

use model_router::config::{ConfigError, ErrorKind};

/// The field path as people are shown it: empty for the file as a whole (the core's `.`), as
/// `wasmpack check --output json` has it.
pub fn shown_path(e: &ConfigError) -> &str {
    shown(&e.path)
}

/// A field path as people are shown it (`.`, the file as a whole, is empty).
pub fn shown(path: &str) -> &str {
    if path == "." {
        ""
    } else {
        path
    }
}

/// The core's error, in a user's words: types in words, and for a misspelt field or value the
/// known name it is closest to (`did you mean`).
pub fn words(kind: &ErrorKind) -> String {
    let names = |known: &[&str]| known.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    match kind {
        ErrorKind::UnknownField { field, expected } => match closest(field, &names(expected)) {
            Some(s) => format!("unknown field `{field}`; did you mean `{s}`?"),
            None if expected.is_empty() => format!("unknown field `{field}`: nothing is expected here"),
            None => format!(
                "unknown field `{field}`; the fields here are `{}`",
                expected.join("`, `")
            ),
        },
        ErrorKind::UnknownVariant { variant, expected } => {
            let hint = closest(variant, &names(expected))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            format!("`{variant}` is not one of `{}`{hint}", expected.join("`, `"))
        }
        ErrorKind::InvalidType { found, expected } | ErrorKind::InvalidValue { found, expected } => {
            format!("expected {}, found {}", expected_words(expected), found_words(found))
        }
        ErrorKind::MissingField { field } => format!("missing field `{field}` (it is required)"),
        other => other.to_string().trim().to_string(),
    }
}

fn expected_words(e: &str) -> String {
    match e.trim() {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" => "a whole number from 0 to 18446744073709551615".into(),
        "i32" | "i64" => "a whole number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "an object (key: value pairs)".into(),
        s if s.starts_with("struct ") => "an object (key: value pairs)".into(),
        s => s.to_string(),
    }
}

fn found_words(f: &str) -> String {
    let f = f.trim();
    for p in ["floating point ", "integer ", "boolean "] {
        if let Some(v) = f.strip_prefix(p) {
            return v.trim_matches('`').to_string();
        }
    }
    if let Some(v) = f.strip_prefix("string ") {
        return v.to_string();
    }
    match f {
        "sequence" => "a list".into(),
        "map" => "an object".into(),
        "unit value" | "null" => "nothing (null)".into(),
        other => other.to_string(),
    }
}

/// The known name closest to `bad` (case aside), if it is close enough to be a typo.
pub fn closest(bad: &str, known: &[String]) -> Option<String> {
    let lower = bad.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::levenshtein(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_in_words() {
        for (kind, said) in [
            (
                ErrorKind::InvalidType {
                    found: "string \"ten\"".into(),
                    expected: "u32",
                },
                "expected a whole number from 0 to 4294967295, found \"ten\"",
            ),
            (
                ErrorKind::InvalidType {
                    found: "null".into(),
                    expected: "struct RawConfig",
                },
                "expected an object (key: value pairs), found nothing (null)",
            ),
            (
                ErrorKind::InvalidValue {
                    found: "integer `-3`".into(),
                    expected: "u32",
                },
                "expected a whole number from 0 to 4294967295, found -3",
            ),
            (
                ErrorKind::InvalidType {
                    found: "floating point `1.5`".into(),
                    expected: "u32",
                },
                "expected a whole number from 0 to 4294967295, found 1.5",
            ),
            (
                ErrorKind::UnknownField {
                    field: "destination".into(),
                    expected: &["name", "destinations"],
                },
                "unknown field `destination`; did you mean `destinations`?",
            ),
            (
                ErrorKind::UnknownField {
                    field: "zzz".into(),
                    expected: &["name", "destinations"],
                },
                "unknown field `zzz`; the fields here are `name`, `destinations`",
            ),
            (
                ErrorKind::UnknownField {
                    field: "x".into(),
                    expected: &[],
                },
                "unknown field `x`: nothing is expected here",
            ),
            (
                ErrorKind::UnknownVariant {
                    variant: "Rejct".into(),
                    expected: &["reject", "passthrough"],
                },
                "`Rejct` is not one of `reject`, `passthrough`; did you mean `reject`?",
            ),
            (
                ErrorKind::MissingField { field: "models" },
                "missing field `models` (it is required)",
            ),
        ] {
            assert_eq!(words(&kind), said, "{kind:?}");
        }
    }

    #[test]
    fn the_whole_file_has_an_empty_path() {
        assert_eq!(shown_path(&ConfigError::syntax("x")), "");
    }
}
