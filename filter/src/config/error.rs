//! Configuration errors as data: the field path, and what is wrong there (`ErrorKind`), worded on
//! display as serde words its errors (so `wasmpack check`, the filter's log line and the
//! playground read alike).

use std::fmt;

/// A configuration error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `models[0].destinations[1].weight`; `.` is the root.
    /// For `MissingField` and `DuplicateField` it is the object's path (the field is in the kind);
    /// for `UnknownField` the unknown key's own path.
    pub path: String,
    pub kind: ErrorKind,
}

/// What is wrong at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not a document at all (JSON or YAML syntax, trailing data): the parser's words.
    Syntax(String),
    /// A value of the wrong type: `found` as serde describes a value (`integer `3``,
    /// `string "x"`, `map`), `expected` the type (`a string`, `u32`, `struct RawModel`).
    InvalidType { found: String, expected: &'static str },
    /// A value of the right type that the type cannot hold (`integer `-1``, expected `u32`).
    InvalidValue { found: String, expected: &'static str },
    /// A key the object does not have; `expected`: the keys it has.
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    /// A key given twice in one object.
    DuplicateField { field: String },
    /// A required key that is absent.
    MissingField { field: &'static str },
    /// A string that is none of the names allowed here.
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    /// A value the reader took that validation refuses, in words.
    Invalid(String),
}

impl ErrorKind {
    /// The kind's name in `wasmpack check --output json` (`invalidType`, `unknownField` …).
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::Syntax(_) => "syntax",
            ErrorKind::InvalidType { .. } => "invalidType",
            ErrorKind::InvalidValue { .. } => "invalidValue",
            ErrorKind::UnknownField { .. } => "unknownField",
            ErrorKind::DuplicateField { .. } => "duplicateField",
            ErrorKind::MissingField { .. } => "missingField",
            ErrorKind::UnknownVariant { .. } => "unknownVariant",
            ErrorKind::Invalid(_) => "invalid",
        }
    }
}

/// `expected `a``, `expected `a` or `b``, `expected one of `a`, `b`, `c`` (serde's phrasing).
fn one_of(f: &mut fmt::Formatter<'_>, names: &[&str]) -> fmt::Result {
    match names {
        [] => f.write_str("there are none"),
        [a] => write!(f, "expected `{a}`"),
        [a, b] => write!(f, "expected `{a}` or `{b}`"),
        [first, rest @ ..] => {
            write!(f, "expected one of `{first}`")?;
            for n in rest {
                write!(f, ", `{n}`")?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for ErrorKind {
    // Few formatting calls: each costs the Wasm module code of its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, found, expected) = match self {
            ErrorKind::Syntax(m) | ErrorKind::Invalid(m) => return f.write_str(m),
            ErrorKind::DuplicateField { field } => return write!(f, "duplicate field `{field}`"),
            ErrorKind::MissingField { field } => return write!(f, "missing field `{field}`"),
            ErrorKind::InvalidType { found, expected } => ("invalid type: ", found, Err(*expected)),
            ErrorKind::InvalidValue { found, expected } => ("invalid value: ", found, Err(*expected)),
            ErrorKind::UnknownField { field, expected } => ("unknown field ", field, Ok(*expected)),
            ErrorKind::UnknownVariant { variant, expected } => ("unknown variant ", variant, Ok(*expected)),
        };
        match expected {
            Err(expected) => write!(f, "{what}{found}, expected {expected}"),
            Ok(names) => {
                write!(f, "{what}`{found}`, ")?;
                one_of(f, names)
            }
        }
    }
}

impl ConfigError {
    /// A semantic error: the value was read, validation refuses it.
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            kind: ErrorKind::Invalid(message.into()),
        }
    }

    /// The document as a whole is not JSON (or YAML): the parser's message, at the root.
    pub fn syntax(message: impl Into<String>) -> Self {
        ConfigError {
            path: ".".into(),
            kind: ErrorKind::Syntax(message.into()),
        }
    }
}
