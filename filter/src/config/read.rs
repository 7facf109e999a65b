//! The reader's primitives: a configuration document (`Json`) read into the `Raw*` types with
//! serde's rules (unknown and repeated keys refused, `null` is "not set" only for optional
//! fields) and serde's error kinds. The per-struct readers are generated from the declarations in
//! `raw.rs`; these are what they call.
//!
//! The configuration code runs once per VM but is compiled whole by V8 at start-up, and V8's
//! compile memory grows with the size of each function: the readers stay small, separate
//! functions (`#[inline(never)]`; docs/performance.md).

use super::error::{ConfigError, ErrorKind};
use crate::json::{self, Json};

pub(crate) type R<T> = Result<T, ConfigError>;

/// `path.key`; the root's fields are plain `key`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path == "." {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[inline(never)]
pub(crate) fn invalid_type(v: &Json, path: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        kind: ErrorKind::InvalidType {
            found: v.describe(),
            expected,
        },
    }
}

/// An object's members, checked against the keys its struct declares.
pub(crate) struct Fields<'a> {
    path: &'a str,
    members: &'a [(String, Json)],
}

impl<'a> Fields<'a> {
    /// The members of `v`, an object of struct `what` (`struct RawModel`) with keys `known`.
    #[inline(never)]
    pub(crate) fn of(v: &'a Json, path: &'a str, what: &'static str, known: &'static [&'static str]) -> R<Fields<'a>> {
        let Json::Obj(members) = v else {
            return Err(invalid_type(v, path, what));
        };
        for (i, (k, _)) in members.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(ConfigError {
                    path: join(path, k),
                    kind: ErrorKind::UnknownField {
                        field: k.clone(),
                        expected: known,
                    },
                });
            }
            if members.iter().take(i).any(|(p, _)| p == k) {
                return Err(ConfigError {
                    path: path.to_string(),
                    kind: ErrorKind::DuplicateField { field: k.clone() },
                });
            }
        }
        Ok(Fields { path, members })
    }

    fn get(&self, key: &str) -> Option<(&'a Json, String)> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| (v, join(self.path, key)))
    }

    /// Absent or `null`: `None`.
    pub(crate) fn opt<T>(&self, key: &str, read: impl Fn(&Json, &str) -> R<T>) -> R<Option<T>> {
        match self.get(key) {
            None | Some((Json::Null, _)) => Ok(None),
            Some((v, p)) => read(v, &p).map(Some),
        }
    }

    /// Absent: `default`; `null` is a wrong type here.
    pub(crate) fn or<T>(&self, key: &str, read: impl Fn(&Json, &str) -> R<T>, default: T) -> R<T> {
        match self.get(key) {
            None => Ok(default),
            Some((v, p)) => read(v, &p),
        }
    }

    pub(crate) fn req<T>(&self, key: &'static str, read: impl Fn(&Json, &str) -> R<T>) -> R<T> {
        match self.get(key) {
            None => Err(ConfigError {
                path: self.path.to_string(),
                kind: ErrorKind::MissingField { field: key },
            }),
            Some((v, p)) => read(v, &p),
        }
    }
}

pub(crate) fn string(v: &Json, path: &str) -> R<String> {
    match v {
        Json::Str(s) => Ok(s.clone()),
        _ => Err(invalid_type(v, path, "a string")),
    }
}

pub(crate) fn boolean(v: &Json, path: &str) -> R<bool> {
    match v {
        Json::Bool(b) => Ok(*b),
        _ => Err(invalid_type(v, path, "a boolean")),
    }
}

fn whole(v: &Json, path: &str, max: u64, name: &'static str) -> R<u64> {
    match v {
        Json::Num(n) if json::is_integer(n) => match n.parse::<u64>() {
            Ok(x) if x <= max => Ok(x),
            _ => Err(ConfigError {
                path: path.to_string(),
                kind: ErrorKind::InvalidValue {
                    found: format!("integer `{n}`"),
                    expected: name,
                },
            }),
        },
        _ => Err(invalid_type(v, path, name)),
    }
}

pub(crate) fn u64_(v: &Json, path: &str) -> R<u64> {
    whole(v, path, u64::MAX, "u64")
}

pub(crate) fn u32_(v: &Json, path: &str) -> R<u32> {
    whole(v, path, u64::from(u32::MAX), "u32").map(|x| x as u32)
}

pub(crate) fn u16_(v: &Json, path: &str) -> R<u16> {
    whole(v, path, u64::from(u16::MAX), "u16").map(|x| x as u16)
}

pub(crate) fn list<T>(read: impl Fn(&Json, &str) -> R<T>) -> impl Fn(&Json, &str) -> R<Vec<T>> {
    move |v, path| match v {
        Json::Arr(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| read(x, &format!("{path}[{i}]")))
            .collect(),
        _ => Err(invalid_type(v, path, "a sequence")),
    }
}

/// The index in `names` of a string that is one of them (the generic part of reading a unit
/// enum is only the index's value, `raw::one`).
#[inline(never)]
pub(crate) fn name_index(v: &Json, path: &str, names: &'static [&'static str]) -> R<usize> {
    match v {
        Json::Str(s) => names.iter().position(|n| n == s).ok_or_else(|| ConfigError {
            path: path.to_string(),
            kind: ErrorKind::UnknownVariant {
                variant: s.clone(),
                expected: names,
            },
        }),
        _ => Err(invalid_type(v, path, "a string")),
    }
}
