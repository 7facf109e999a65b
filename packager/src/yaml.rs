//! The YAML wasmpack writes (manifests, the Envoy bootstrap of `wasmpack run`, Limitador's and
//! envoyproxy/ratelimit's files, kustomize patches), with serde-saphyr. Strings that a YAML 1.1
//! reader (Kubernetes') would take for a number, boolean or null are quoted; a string with line
//! breaks is a literal block (`|`); a long line stays one line (no folding).

/// `value` as one YAML document.
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    /// What is written reads back the same (types included), a string a YAML 1.1 reader would take
    /// for something else is quoted, line breaks make a literal block, long lines stay whole.
    #[test]
    fn written_yaml_means_what_it_says() {
        let long = "x ".repeat(80);
        let v = json!({
            "looksLike": ["4", "yes", "on", "No", "y", "null", "~", "0755", "1e3", "true", "1_000", "0x1F", "12:30", "2001-12-14", ""],
            "punctuation": ["*", "@type", "a: b", "#x", "- x", "{a}", " lead", "trail ", "'", "\""],
            "multiLine": "apiVersion: v1\nkind: X\nmetadata:\n  name: \"q\"\n",
            "noFinalBreak": "a\n  b",
            "long": long,
            "numbers": [4, 1.5, -0, true, null],
            "empty": {"list": [], "map": {}},
        });
        let text = super::to_string(&v).unwrap();
        let back: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, v, "{text}");
        for quoted in [
            "\"4\"",
            "\"yes\"",
            "\"on\"",
            "\"No\"",
            "\"y\"",
            "\"null\"",
            "\"0755\"",
            "\"12:30\"",
        ] {
            assert!(text.contains(quoted), "{quoted} in {text}");
        }
        assert!(text.contains("multiLine: |\n  apiVersion: v1\n"), "{text}");
        assert!(
            text.lines().any(|l| l.contains(&long[..100])),
            "a long line stays one: {text}"
        );
    }
}
