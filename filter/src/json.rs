//! A small, strict JSON document model for the few places that need a whole value: the plugin
//! configuration, a usage object, `stream_options`. Request bodies are never parsed into it (the
//! streaming `json_scan` reads them); replies are written with [`write_str`].
//!
//! Kept here instead of serde_json so the Wasm module carries one small parser: serde's generic
//! code was most of the module's size. Numbers stay as their text (no float parsing or
//! formatting); objects keep their order and their repeated keys (the reader decides).

use std::fmt;

/// Deeper nesting is refused (serde_json's default limit).
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text, as valid JSON number syntax.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    /// Members in document order, repeats included.
    Obj(Vec<(String, Json)>),
}

/// Where and why a text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub message: &'static str,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at line {} column {}", self.message, self.line, self.column)
    }
}

impl Json {
    /// The last value of `key` in an object (what most parsers keep for a repeated key).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// How serde names a value's kind in its errors (`string "x"`, `integer `3``, `map` …).
    pub fn describe(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => format!("boolean `{b}`"),
            Json::Num(n) if is_integer(n) => format!("integer `{n}`"),
            Json::Num(n) => format!("floating point `{n}`"),
            Json::Str(s) => {
                let mut q = String::new();
                write_str(&mut q, s);
                format!("string {q}")
            }
            Json::Arr(_) => "sequence".into(),
            Json::Obj(_) => "map".into(),
        }
    }

    /// Compact JSON text.
    pub fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => write_str(out, s),
            Json::Arr(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write(&mut s);
        f.write_str(&s)
    }
}

/// True for number text without fraction or exponent.
pub fn is_integer(n: &str) -> bool {
    !n.contains(['.', 'e', 'E'])
}

/// Parses a whole JSON text: UTF-8, one value, nothing after it but whitespace.
pub fn parse(bytes: &[u8]) -> Result<Json, JsonError> {
    let mut p = Parser { b: bytes, i: 0 };
    if let Err(e) = std::str::from_utf8(bytes) {
        p.i = e.valid_up_to();
        return Err(p.err("invalid UTF-8"));
    }
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i < bytes.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(v)
}

/// Decodes one JSON string literal, quotes included.
pub fn unescape(quoted: &[u8]) -> Result<String, JsonError> {
    let mut p = Parser { b: quoted, i: 0 };
    if let Err(e) = std::str::from_utf8(quoted) {
        p.i = e.valid_up_to();
        return Err(p.err("invalid UTF-8"));
    }
    if p.peek() != Some(b'"') {
        return Err(p.err("expected a string"));
    }
    let s = p.string()?;
    if p.i < quoted.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(s)
}

/// Appends `s` as a JSON string literal (quotes, `\"`, `\\`, control characters escaped).
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let b = c as u8;
            out.push_str("\\u00");
            // A nibble is under 16, the table's length.
            #[allow(clippy::indexing_slicing)]
            let (hi, lo) = (HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]);
            out.push(hi as char);
            out.push(lo as char);
        } else {
            out.push_str(esc);
        }
        from = i + c.len_utf8();
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, message: &'static str) -> JsonError {
        let upto = self.b.get(..self.i).unwrap_or(self.b);
        let line = 1 + upto.iter().filter(|&&c| c == b'\n').count();
        let start = upto.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
        JsonError {
            message,
            line,
            column: self.i.min(self.b.len()) - start + 1,
        }
    }

    /// The input from `self.i` on.
    fn rest(&self) -> &[u8] {
        self.b.get(self.i..).unwrap_or_default()
    }

    /// The input from `from` to `self.i`.
    fn since(&self, from: usize) -> &[u8] {
        self.b.get(from..self.i).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8], v: Json) -> Result<Json, JsonError> {
        if self.rest().starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        match self.peek() {
            None => Err(self.err("EOF while parsing a value")),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(open @ (b'[' | b'{')) => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("recursion limit exceeded"));
                }
                self.i += 1;
                self.ws();
                let close = if open == b'[' { b']' } else { b'}' };
                let mut items = Vec::new();
                let mut members = Vec::new();
                if self.peek() == Some(close) {
                    self.i += 1;
                } else {
                    loop {
                        if open == b'[' {
                            items.push(self.value(depth + 1)?);
                        } else {
                            if self.peek() != Some(b'"') {
                                return Err(self.err("key must be a string"));
                            }
                            let k = self.string()?;
                            self.ws();
                            if self.peek() != Some(b':') {
                                return Err(self.err("expected `:`"));
                            }
                            self.i += 1;
                            self.ws();
                            members.push((k, self.value(depth + 1)?));
                        }
                        self.ws();
                        match self.peek() {
                            Some(b',') => {
                                self.i += 1;
                                self.ws();
                            }
                            Some(c) if c == close => {
                                self.i += 1;
                                break;
                            }
                            None => return Err(self.err("EOF while parsing a list or object")),
                            Some(_) => return Err(self.err("expected `,` or a closing bracket")),
                        }
                    }
                }
                Ok(if open == b'[' {
                    Json::Arr(items)
                } else {
                    Json::Obj(members)
                })
            }
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - from
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let from = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let first = self.peek();
        let n = self.digits();
        if n == 0 || (first == Some(b'0') && n > 1) {
            return Err(self.err("invalid number"));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        // ASCII only, checked above.
        Ok(Json::Num(String::from_utf8_lossy(self.since(from)).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    /// A string literal at `self.i` (the opening quote); the input is valid UTF-8.
    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.extend_from_slice(self.since(start));
            match self.peek() {
                None => return Err(self.err("EOF while parsing a string")),
                Some(b'"') => {
                    self.i += 1;
                    // Only whole UTF-8 sequences were copied, and escapes add valid ones.
                    return String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.rest().starts_with(b"\\u") {
                                    return Err(self.err("lone leading surrogate in hex escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone leading surrogate in hex escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let c =
                                char::from_u32(cp).ok_or_else(|| self.err("lone trailing surrogate in hex escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    self.i += 1;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(_) => return Err(self.err("control character (\\u0000-\\u001F) found while parsing a string")),
            }
        }
    }
}

/// A JSON number's text as (negative, significant digits, digits before the decimal point):
/// `-12.50e1` is (true, [1, 2, 5], 3). Zero is (_, [], 0). `None` for text that is no number.
fn decimal(n: &str) -> Option<(bool, Vec<u8>, i64)> {
    let (neg, n) = match n.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, n),
    };
    let (mantissa, exp) = match n.find(['e', 'E']) {
        Some(i) => (&n[..i], n[i + 1..].trim_start_matches('+').parse::<i64>().ok()?),
        None => (n, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let mut point = (int.len() as i64).saturating_add(exp);
    let lead = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..lead);
    point = point.saturating_sub(lead as i64);
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        point = 0;
    }
    Some((neg, digits, point))
}

/// A JSON number's value as a whole count: the integer part of any non-negative number
/// (`12`, `12.0`, `1.2e3`), saturated at `u64::MAX` with `overflow` set. `None` for negative
/// numbers (other than zero) and non-numbers. Decimal arithmetic: no float parsing.
pub fn whole_count(n: &str) -> Option<(u64, bool)> {
    // The usual case, a plain integer that fits: no digit vector.
    if (1..=19).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) {
        return n.parse().ok().map(|v| (v, false));
    }
    let (neg, digits, point) = decimal(n)?;
    if digits.is_empty() {
        return Some((0, false));
    }
    if neg || point > 20 {
        return if neg { None } else { Some((u64::MAX, true)) };
    }
    let mut value: u64 = 0;
    for i in 0..point.max(0) as usize {
        let d = digits.get(i).copied().unwrap_or(0);
        match value.checked_mul(10).and_then(|v| v.checked_add(u64::from(d))) {
            Some(v) => value = v,
            None => return Some((u64::MAX, true)),
        }
    }
    Some((value, false))
}

/// True when a JSON number's text is exactly one (`1`, `1.0`, `10e-1`).
pub fn is_one(n: &str) -> bool {
    decimal(n).is_some_and(|(neg, digits, point)| !neg && digits == [1] && point == 1)
}

// The CLI and the playground read YAML into the same document model (serde-saphyr, through the
// `config-yaml` crate, → `Json`), so one reader checks every configuration. Unused by the
// Wasm filter (and dropped from it).
impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Num(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Num(n.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Json, E> {
                if !n.is_finite() {
                    return Err(E::custom(format!("{n} is not a JSON number")));
                }
                let s = format!("{n:?}");
                Ok(Json::Num(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::Str(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut m = Vec::new();
                while let Some(k) = a.next_key::<Json>()? {
                    let k = match k {
                        Json::Str(s) | Json::Num(s) => s,
                        Json::Bool(b) => b.to_string(),
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "a key must be a string, not a {}",
                                other.describe()
                            )))
                        }
                    };
                    m.push((k, a.next_value()?));
                }
                Ok(Json::Obj(m))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_serde_json_parses_and_refuses_what_it_refuses() {
        let cases = [
            r#"{"a":[1,-2.5e3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"],"b":{}}"#,
            "  [ ]  ",
            "0",
            "-0.0E+1",
            r#""\u0000""#,
            "",
            "01",
            "1.",
            "-",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "[1] x",
            "\"a\u{1}\"",
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\x""#,
            "tru",
            "{1:2}",
            "\"é\"",
        ];
        for c in cases {
            let ours = parse(c.as_bytes());
            let theirs = serde_json::from_str::<serde_json::Value>(c);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{c:?}: {ours:?} vs {theirs:?}");
            if let (Ok(o), Ok(t)) = (ours, theirs) {
                let back: serde_json::Value = serde_json::from_str(&o.to_string()).unwrap();
                assert_eq!(back, t, "{c:?}");
            }
        }
        assert!(parse(b"\"\xff\"").is_err());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn errors_say_where() {
        let e = parse(b"{\n  \"a\": x}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 8));
        assert_eq!(e.to_string(), "expected a value at line 2 column 8");
    }

    #[test]
    fn strings_round_trip_like_serde_json() {
        for s in ["", "plain", "q\"b\\s/", "\u{0}\u{1f}\n\t\u{7f}é😀"] {
            assert_eq!(quote(s), serde_json::to_string(s).unwrap());
            assert_eq!(unescape(quote(s).as_bytes()).unwrap(), s);
        }
        assert!(unescape(b"\"a\" ").is_err());
        assert!(unescape(b"a").is_err());
    }

    #[test]
    fn repeated_keys_are_kept_and_the_last_wins() {
        let v = parse(br#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Json::Num("2".into())));
        assert_eq!(v.to_string(), r#"{"a":1,"a":2}"#);
    }

    #[test]
    fn whole_counts() {
        let cases: &[(&str, Option<(u64, bool)>)] = &[
            ("0", Some((0, false))),
            ("12", Some((12, false))),
            ("12.9", Some((12, false))),
            ("1.2e3", Some((1200, false))),
            ("1E2", Some((100, false))),
            ("15e-1", Some((1, false))),
            ("5e-400", Some((0, false))),
            ("-0", Some((0, false))),
            ("-0.0", Some((0, false))),
            ("-1", None),
            ("-0.5", None),
            ("18446744073709551615", Some((u64::MAX, false))),
            ("18446744073709551616", Some((u64::MAX, true))),
            ("1e20", Some((u64::MAX, true))),
            ("1e400", Some((u64::MAX, true))),
            ("0e400", Some((0, false))),
            ("0.001e3", Some((1, false))),
            ("1e+2", Some((100, false))),
        ];
        for (n, want) in cases {
            assert_eq!(whole_count(n), *want, "{n}");
        }
        for n in ["1", "1.0", "10e-1", "0.1e1", "1E0", "1.000"] {
            assert!(is_one(n), "{n}");
        }
        for n in ["-1", "0", "11", "1.01", "1e1", "0.1", "2"] {
            assert!(!is_one(n), "{n}");
        }
    }
}
