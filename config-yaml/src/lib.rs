//! A model-router configuration file (YAML or JSON; YAML is a superset of JSON) read into the
//! filter's own document model (`model_router::json::Json`), and every configuration error placed
//! in the file by its field path (`places`). `wasmpack` and the browser playground both read
//! configurations here, so a file means the same, and its errors are placed alike, in both. The
//! filter itself stays YAML-free: it receives JSON.

pub mod places;
pub mod words;

use model_router::config::{Config, ConfigError};
use model_router::json::Json;

pub use places::{At, Place, Places};
pub use words::{closest, shown, shown_path, words};

/// A text that is not YAML: the parser's message (without its position) and where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotYaml {
    pub message: String,
    pub at: Option<At>,
}

/// How YAML is read (as `serde_yaml` 0.9 read it, which wasmpack and the playground used before):
/// YAML 1.2 scalars (`yes` is a string, `0755` too), `<<` an ordinary key, repeated keys passed to
/// the filter's reader (which names them), NaN and infinities refused by the document model.
fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    o.merge_keys = serde_saphyr::MergeKeyPolicy::AsOrdinary;
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.underscored_numbers_as_strings = true;
    o.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    o.with_snippet = false;
    o
}

/// serde-saphyr's message without its `at line L, column C` (the position is reported apart).
struct Unplaced;

impl serde_saphyr::Localizer for Unplaced {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _: serde_saphyr::Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }
}

/// The document of `text` as the filter's document model. A text that is not one YAML document
/// says why in a person's words where the parser's are a programmer's (several documents, a tab
/// in the indentation).
pub fn read(text: &str) -> Result<Json, NotYaml> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| {
        let at = e.location().filter(|l| l.line() > 0).map(|l| At {
            line: usize::try_from(l.line()).unwrap_or(usize::MAX),
            column: usize::try_from(l.column()).unwrap_or(usize::MAX),
        });
        let mut e = &e;
        while let serde_saphyr::Error::WithSnippet { error, .. } = e {
            e = error;
        }
        if let serde_saphyr::Error::MultipleDocuments { .. } = e {
            return NotYaml {
                message: "the file has several YAML documents (separated by ---); a configuration is one document"
                    .into(),
                at: at.map(|at| separator(text, at).unwrap_or(at)),
            };
        }
        let formatter = serde_saphyr::DefaultMessageFormatter.with_localizer(&Unplaced);
        let message = e.render_with_formatter(&formatter);
        if message
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|w| w == "tab" || w == "tabs")
        {
            // The scanner's words (`while scanning a plain scalar, found a tab`, `tabs disallowed
            // within this context`), often placed at the end of the line before the tab.
            return match at.and_then(|at| indenting_tab(text, at)) {
                Some(tab) => NotYaml {
                    message: "a tab in the indentation: YAML is indented with spaces, not tabs".into(),
                    at: Some(tab),
                },
                None => NotYaml {
                    message: format!("{message}: YAML is indented with spaces, not tabs"),
                    at,
                },
            };
        }
        NotYaml { message, at }
    })
}

/// The `---` that starts the document after the first: the last one at or before where the
/// parser met that document.
fn separator(text: &str, at: At) -> Option<At> {
    text.lines()
        .take(at.line)
        .enumerate()
        .filter(|(_, l)| {
            l.strip_prefix("---")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
        .last()
        .map(|(i, _)| At { line: i + 1, column: 1 })
}

/// The first tab in a line's indentation, from the line the parser stopped on to the next one.
fn indenting_tab(text: &str, at: At) -> Option<At> {
    text.lines()
        .enumerate()
        .skip(at.line.saturating_sub(1))
        .take(2)
        .find_map(|(i, l)| {
            let indent = l.len() - l.trim_start_matches([' ', '\t']).len();
            l[..indent].chars().position(|c| c == '\t').map(|c| At {
                line: i + 1,
                column: c + 1,
            })
        })
}

/// A configuration through the filter's own reader, with the document it read (what the filter
/// receives, as JSON text: `doc.to_string()`). An error names its field path (`.` for a text
/// that is not YAML) and, when known, its place: the YAML parser's for a syntax error, else the
/// field's (`Places::locate_error`, by the error's kind: the key of an unknown field, the second key of a repeated one, the
/// value for the rest, the object or list a missing field belongs in).
pub fn config(text: &str) -> Result<(Config, Json), (ConfigError, Option<At>)> {
    let doc = read(text).map_err(|e| (ConfigError::syntax(e.message), e.at))?;
    match Config::from_document(&doc) {
        Ok(config) => Ok((config, doc)),
        Err(e) => {
            let at = Places::of(text).locate_error(&e);
            Err((e, at))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// The document each text is read into, pinned (these are what `serde_yaml` 0.9 read, by a
    /// comparison run while both were in the tree): a configuration means what it meant.
    #[test]
    fn yaml_is_read_as_it_always_was() {
        for (text, json) in [
            ("a: yes", r#"{"a":"yes"}"#),
            ("a: No", r#"{"a":"No"}"#),
            ("a: on", r#"{"a":"on"}"#),
            ("a: True", r#"{"a":true}"#),
            ("a: 0755", r#"{"a":"0755"}"#),
            ("a: 00", r#"{"a":"00"}"#),
            ("a: 1_000", r#"{"a":"1_000"}"#),
            ("a: 0x1F", r#"{"a":31}"#),
            ("a: 0o17", r#"{"a":15}"#),
            ("a: 0b101", r#"{"a":5}"#),
            ("a: ~", r#"{"a":null}"#),
            ("a: null", r#"{"a":null}"#),
            ("a:", r#"{"a":null}"#),
            ("a: 1.0", r#"{"a":1.0}"#),
            ("a: 1.", r#"{"a":1.0}"#),
            ("a: 1e3", r#"{"a":1000.0}"#),
            ("a: +1", r#"{"a":1}"#),
            ("a: -0", r#"{"a":0}"#),
            ("a: '1'", r#"{"a":"1"}"#),
            ("a: \"x\\ty\"", r#"{"a":"x\ty"}"#),
            ("a: !!str 12", r#"{"a":"12"}"#),
            ("a: 2001-12-14", r#"{"a":"2001-12-14"}"#),
            ("a: |\n  x\n  y\n", r#"{"a":"x\ny\n"}"#),
            ("a: >\n  x\n  y\n", r#"{"a":"x y\n"}"#),
            ("a: &x {b: 1}\nc: *x", r#"{"a":{"b":1},"c":{"b":1}}"#),
            (
                "b: &b {x: 1}\nd:\n  <<: *b\n  y: 2",
                r#"{"b":{"x":1},"d":{"<<":{"x":1},"y":2}}"#,
            ),
            ("a: 1\na: 2", r#"{"a":1,"a":2}"#),
            ("1: x", r#"{"1":"x"}"#),
            ("true: x", r#"{"true":"x"}"#),
            ("1.5: x", r#"{"1.5":"x"}"#),
            ("", "null"),
            (
                "{\"models\": [{\"name\": \"a\", \"weight\": 1.5e-3, \"x\": [true, null]}]}",
                r#"{"models":[{"name":"a","weight":0.0015,"x":[true,null]}]}"#,
            ),
        ] {
            let doc = read(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(doc.to_string(), json, "{text:?}");
        }
        // NaN and infinities are refused (the document model has no such number), and so is a
        // key that is a list.
        for text in ["a: .inf", "a: -.inf", "a: .nan", "? [a]\n: 1"] {
            assert!(read(text).is_err(), "{text:?}");
        }
    }

    /// A text that is not one YAML document says so in a person's words, at the place to fix.
    #[test]
    fn yaml_errors_in_words_at_their_place() {
        let not_yaml = |text: &str| read(text).unwrap_err();
        // Two documents: the `---` that starts the second.
        for (text, line) in [
            ("models: []\n---\nmodels: []\n", 2),
            ("---\nmodels: []\n---\nmodels: []\n", 3),
            ("models: []\n--- \n", 2),
        ] {
            let e = not_yaml(text);
            assert_eq!(
                e.message, "the file has several YAML documents (separated by ---); a configuration is one document",
                "{text:?}"
            );
            assert_eq!(e.at, Some(At { line, column: 1 }), "{text:?}");
        }
        // A tab in the indentation: at the tab, whether the scanner stopped on its line or at
        // the end of the line before.
        for (text, line, column) in [
            ("models:\n- name: a\n\tdestinations: []\n", 3, 1),
            ("models:\n  - name: a\n  \tdestinations: []\n", 3, 3),
            ("models:\n- name: a\n  destinations:\n\t- name: x\n", 4, 1),
            ("models:\n\t- name: a\n", 2, 1),
        ] {
            let e = not_yaml(text);
            assert_eq!(
                e.message, "a tab in the indentation: YAML is indented with spaces, not tabs",
                "{text:?}"
            );
            assert_eq!(e.at, Some(At { line, column }), "{text:?}");
        }
        // A tab elsewhere in a value, or in flow style, is YAML.
        assert!(read("a: b\tc\nd: [1,\t2]\n").is_ok());
        // Through `config`: the file as a whole, placed.
        let (e, at) = config("models: []\n---\n").unwrap_err();
        assert_eq!(e.path, ".");
        assert_eq!(at, Some(At { line: 2, column: 1 }));
        assert!(e.kind.to_string().contains("several YAML documents"), "{e}");
    }

    #[test]
    fn every_error_is_placed() {
        // Not YAML: the parser's position, its message without it.
        let (e, at) = config("models:\n- name: a\n  destinations: [\n").unwrap_err();
        assert_eq!(e.path, ".");
        assert!(at.is_some_and(|a| a.line >= 3), "{at:?}");
        let message = e.kind.to_string();
        assert!(!message.contains("at line"), "{message}");
        // A wrong value: its own place.
        let (e, at) = config("models:\n- name: a\n  destinations:\n  - {name: x, weight: ten}\n").unwrap_err();
        assert_eq!(e.path, "models[0].destinations[0].weight");
        assert_eq!(at, Some(At { line: 4, column: 23 }));
        // A missing field: the object it belongs in.
        let (e, at) = config("models:\n- name: a\n").unwrap_err();
        assert_eq!(e.path, "models[0]");
        assert_eq!(at, Some(At { line: 2, column: 3 }));
        // Read: the document the filter receives.
        let (c, doc) = config("models: [{name: a, destinations: [{name: x, weight: 3}]}]").unwrap();
        assert_eq!(c.models.len(), 1);
        assert_eq!(
            doc.to_string(),
            r#"{"models":[{"name":"a","destinations":[{"name":"x","weight":3}]}]}"#
        );
    }
}
