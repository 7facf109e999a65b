//! Where each field of a configuration file is, from the YAML parser's own events (YAML and JSON,
//! block and flow style): the filter's field path (`models[1].destinations[0].weight`, `.` for the
//! whole file) → the line and column of its key and of its value. A configuration error names a
//! field path (`model_router::config::ConfigError`); this finds it in the file.

use std::collections::HashMap;

use model_router::config::{ConfigError, ErrorKind};

use serde_saphyr::granit_parser::{Event, Parser, Span};

/// A position in the file, both 1-based (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub line: usize,
    pub column: usize,
}

impl At {
    fn of(span: &Span) -> At {
        At {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// One occurrence of a field: its key (none for a list item or the whole file) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub key: Option<At>,
    pub value: At,
}

/// Every field path of a file, each with its occurrences in file order (a repeated key has two).
#[derive(Debug, Default)]
pub struct Places {
    map: HashMap<String, Vec<Place>>,
}

/// A mapping or sequence being read: its field path (none inside a key that is itself a mapping
/// or sequence, which no field path names), and the key read and waiting for its value, or the
/// next item's index.
enum Frame {
    Map {
        path: Option<String>,
        key: Option<(Option<String>, At)>,
    },
    Seq {
        path: Option<String>,
        next: usize,
    },
}

/// The filter's path syntax (`model_router::config`): `a.b`, `a[0]`, `.` for the root.
fn join(path: &str, key: &str) -> String {
    if path == "." {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn item(path: &str, i: usize) -> String {
    if path == "." {
        format!("[{i}]")
    } else {
        format!("{path}[{i}]")
    }
}

/// The path a field path is part of (`a.b[2]` → `a.b`, `a.b` → `a`, `a` → `.`); `None` for `.`.
fn parent(path: &str) -> Option<&str> {
    if path == "." || path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(if cut == 0 { "." } else { &path[..cut] })
}

impl Places {
    /// The places of the first document in `text`. Reading stops at a syntax error, keeping what
    /// came before it (the YAML reader reports the error itself, with its position).
    pub fn of(text: &str) -> Places {
        let mut places = Places::default();
        let mut stack: Vec<Frame> = Vec::new();
        for next in Parser::new_from_str(text) {
            let Ok((event, span)) = next else { break };
            let at = At::of(&span);
            let collection = match &event {
                Event::MappingStart(..) => Some(true),
                Event::SequenceStart(..) => Some(false),
                Event::Scalar(..) | Event::Alias(..) => None,
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    continue;
                }
                Event::DocumentEnd => break,
                _ => continue,
            };
            // What this node is: a mapping's key (then it waits for its value), or a value at a path.
            let (path, key) = match stack.last_mut() {
                None => (Some(".".to_string()), None),
                Some(Frame::Seq { path, next }) => {
                    let p = path.as_deref().map(|p| item(p, *next));
                    *next += 1;
                    (p, None)
                }
                Some(Frame::Map {
                    path,
                    key: pending @ None,
                }) => {
                    let name = match &event {
                        Event::Scalar(s, ..) => Some(s.to_string()),
                        _ => None,
                    };
                    *pending = Some((name.filter(|_| path.is_some()), at));
                    if let Some(map) = collection {
                        // A key that is a mapping or sequence: its insides have no field path.
                        stack.push(if map {
                            Frame::Map { path: None, key: None }
                        } else {
                            Frame::Seq { path: None, next: 0 }
                        });
                    }
                    continue;
                }
                Some(Frame::Map { path, key: pending }) => {
                    let (name, key_at) = pending.take().unwrap_or((None, at));
                    (path.as_deref().zip(name).map(|(p, k)| join(p, &k)), Some(key_at))
                }
            };
            if let Some(p) = &path {
                places.map.entry(p.clone()).or_default().push(Place { key, value: at });
            }
            match collection {
                Some(true) => stack.push(Frame::Map { path, key: None }),
                Some(false) => stack.push(Frame::Seq { path, next: 0 }),
                None => {}
            }
        }
        places
    }

    /// Every occurrence of a field path, in file order.
    pub fn occurrences(&self, path: &str) -> &[Place] {
        self.map.get(path).map_or(&[], Vec::as_slice)
    }

    /// The first occurrence of `path`, else of the nearest field that holds it (a field that is
    /// absent, or inside an alias, is placed at the object or list it belongs to); never the whole
    /// file.
    fn nearest(&self, path: &str) -> Option<Place> {
        let mut p = path;
        loop {
            if p == "." {
                return None;
            }
            if let Some(first) = self.occurrences(p).first() {
                return Some(*first);
            }
            p = parent(p)?;
        }
    }

    /// Where the field at `path` is (a wrong value, a warning): its value, else what holds it.
    /// `None` for the file as a whole.
    pub fn locate(&self, path: &str) -> Option<At> {
        self.nearest(path).map(|p| p.value)
    }

    /// Where the core's error `e` is (`model_router::config::ConfigError`), by its kind: the key
    /// of an unknown field, the second key of a repeated one, the object a missing field belongs
    /// to (its path is the object's), the value for everything else. `None` for the file as a
    /// whole.
    pub fn locate_error(&self, e: &ConfigError) -> Option<At> {
        match &e.kind {
            ErrorKind::DuplicateField { field } => {
                let all = self.occurrences(&join(&e.path, field));
                match all.get(1).or(all.first()) {
                    Some(second) => second.key.or(Some(second.value)),
                    None => self.locate(&e.path),
                }
            }
            ErrorKind::UnknownField { .. } => match self.occurrences(&e.path).first() {
                Some(first) => first.key.or(Some(first.value)),
                None => self.locate(&e.path),
            },
            _ => self.locate(&e.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<At> {
        Some(At { line, column })
    }

    fn error(path: &str, kind: ErrorKind) -> ConfigError {
        ConfigError {
            path: path.into(),
            kind,
        }
    }

    fn unknown(path: &str, field: &str) -> ConfigError {
        error(
            path,
            ErrorKind::UnknownField {
                field: field.into(),
                expected: &[],
            },
        )
    }

    #[test]
    fn block_flow_and_json_alike() {
        let block = "models:\n- name: a\n  destinations:\n  - name: x\n    weight: 3\n";
        let flow = "models: [{name: a, destinations: [{name: x, weight: 3}]}]\n";
        let json = "{\"models\": [{\"name\": \"a\", \"destinations\": [\n  {\"name\": \"x\", \"weight\": 3}]}]}";
        let p = Places::of(block);
        assert_eq!(p.locate("models[0].destinations[0].weight"), at(5, 13));
        assert_eq!(
            p.locate_error(&unknown("models[0].destinations[0].weight", "weight")),
            at(5, 5)
        );
        assert_eq!(
            p.locate_error(&error("models[0]", ErrorKind::MissingField { field: "x" })),
            at(2, 3),
            "the object"
        );
        let p = Places::of(flow);
        assert_eq!(p.locate("models[0].destinations[0].weight"), at(1, 53));
        assert_eq!(p.locate("models[0].name"), at(1, 17));
        let p = Places::of(json);
        assert_eq!(p.locate("models[0].destinations[0].weight"), at(2, 27));
        assert_eq!(
            p.locate_error(&unknown("models[0].destinations[0].weight", "weight")),
            at(2, 17),
            "a quoted key: its quote"
        );
        assert_eq!(
            p.locate_error(&error(".", ErrorKind::MissingField { field: "models" })),
            None,
            "the file as a whole"
        );
    }

    #[test]
    fn a_repeated_key_is_placed_at_its_second_occurrence() {
        let text = "models:\n- name: a\n  destinations: [{name: x}]\n  name: b\n";
        let p = Places::of(text);
        assert_eq!(
            p.locate_error(&error("models[0]", ErrorKind::DuplicateField { field: "name".into() })),
            at(4, 3)
        );
        assert_eq!(p.locate("models[0].name"), at(2, 9), "reads use the first");
    }

    #[test]
    fn absent_fields_and_aliases_are_placed_at_what_holds_them() {
        let text = "d: &d [{name: x}]\nmodels:\n- name: a\n  destinations: *d\n";
        let p = Places::of(text);
        assert_eq!(p.locate("models[0].destinations[0].weight"), at(4, 17));
        assert_eq!(p.locate("models[0].limits"), at(3, 3));
        assert_eq!(p.locate("identitySource"), None);
        // A key that is itself a list names no field; what follows it is still found.
        let p = Places::of("? [a, b]\n: 1\nmodels: []\n");
        assert_eq!(p.locate("models"), at(3, 9));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a[2]"), Some("a"));
        assert_eq!(parent("a"), Some("."));
        assert_eq!(parent("."), None);
    }
}
