//! A streaming scanner that finds chosen keys of a JSON body's top-level object without building a
//! document: `feed(chunk)` as bytes arrive, `finish()` at the end.
//!
//! It checks the structure as it goes (brackets, strings, numbers, literals, commas), so a body
//! that is not JSON is noticed before its model is. For each wanted top-level key it records the
//! raw bytes of the value (bounded) and the value's byte span in the whole body, which is what a
//! rewrite needs. Nested keys of the same name do not count. It never looks back at earlier
//! chunks, so its cost is linear in what it is fed, and the caller can stop feeding as soon as
//! every wanted key has been seen.

use memchr::memchr2;

/// Deeper nesting than this is refused as invalid (serde_json's own default limit is 128).
pub const MAX_DEPTH: usize = 512;

/// The raw value of one wanted top-level key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Index of the key in the `wanted` list.
    pub key: usize,
    /// Byte offset of the value's first byte in the whole body.
    pub start: u64,
    /// Byte offset just past the value's last byte.
    pub end: u64,
    /// The value's bytes exactly as in the body, up to the capture limit.
    pub raw: Vec<u8>,
    /// The value was longer than the capture limit, so `raw` is cut short.
    pub truncated: bool,
}

impl Found {
    /// Appends bytes of the value, up to `limit` in all; past it the value is marked truncated.
    pub fn keep(&mut self, bytes: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.raw.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.raw.extend_from_slice(bytes.get(..room).unwrap_or(bytes));
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {reason}")]
pub struct JsonError {
    pub offset: u64,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Expecting a value (top level, after `:`, after `[` or `,` in an array).
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrEnd,
    /// Just after `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a complete value: `,`, a closing bracket, or the end.
    AfterValue,
    Str(StrState),
    Num(NumState),
    /// Inside `true`/`false`/`null`: the literal and how many bytes matched.
    Lit(&'static [u8], u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrState {
    Plain,
    Escape,
    /// Inside `\uXXXX`, with this many hex digits still to come.
    Hex(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumState {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumState {
    fn complete(self) -> bool {
        matches!(
            self,
            NumState::Zero | NumState::Int | NumState::Frac | NumState::ExpDigits
        )
    }
    fn next(self, b: u8) -> Option<NumState> {
        use NumState::*;
        Some(match (self, b) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Int,
            (Zero | Int, b'.') => Dot,
            (Zero | Int | Frac, b'e' | b'E') => Exp,
            (Int, b'0'..=b'9') => Int,
            (Dot | Frac, b'0'..=b'9') => Frac,
            (Exp, b'+' | b'-') => ExpSign,
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => ExpDigits,
            _ => return None,
        })
    }
}

/// Keys longer than this cannot be wanted ones; they are skipped without being kept.
const MAX_KEY: usize = 64;

#[derive(Debug)]
pub struct TopLevelScanner {
    wanted: &'static [&'static str],
    /// The wanted keys the scan waits for (all of them, or the first `n` of `done_after`) that
    /// were not found yet, one bit each (wanted lists are short constants).
    missing: u64,
    /// Stop reading input once done (set by `done_after`); otherwise validate to the end.
    stop_early: bool,
    capture_limit: usize,
    lex: Lex,
    /// Open containers, `{` or `[`.
    stack: Vec<u8>,
    /// Absolute offset of the next byte to be fed.
    offset: u64,
    /// The top-level value has been completed.
    closed: bool,
    /// Offset of the top-level object's `{`.
    top_open: Option<u64>,
    /// Set when the top-level value is not an object: no key can be found then.
    top_not_object: bool,
    /// The string being lexed is an object key.
    in_key: bool,
    /// The string being lexed is a top-level key.
    in_top_key: bool,
    key_buf: Vec<u8>,
    key_too_long: bool,
    /// Index of the wanted key whose value comes next.
    pending_key: Option<usize>,
    /// The value being captured.
    capture: Option<Found>,
    found: Vec<Found>,
    error: Option<JsonError>,
    /// Check that the input is UTF-8 (RFC 8259 §8.1), as Python's, Go's and serde's parsers do.
    strict_utf8: bool,
    /// The start of a UTF-8 sequence cut by the end of the previous chunk.
    utf8_carry: Vec<u8>,
}

impl TopLevelScanner {
    /// `wanted`: the top-level keys to record. `capture_limit`: how many raw bytes of each value to keep.
    pub fn new(wanted: &'static [&'static str], capture_limit: usize) -> Self {
        TopLevelScanner {
            wanted,
            missing: first_keys(wanted.len()),
            stop_early: false,
            capture_limit,
            lex: Lex::Value,
            // Sized for the usual depth of a request, so that it is allocated once.
            stack: Vec::with_capacity(8),
            offset: 0,
            closed: false,
            top_open: None,
            top_not_object: false,
            in_key: false,
            in_top_key: false,
            key_buf: Vec::with_capacity(MAX_KEY),
            key_too_long: false,
            pending_key: None,
            capture: None,
            found: Vec::with_capacity(wanted.len()),
            error: None,
            strict_utf8: false,
            utf8_carry: Vec::new(),
        }
    }

    /// Also refuse input that is not UTF-8 (requests: what the backend's parser would refuse).
    pub fn strict_utf8(mut self) -> Self {
        self.strict_utf8 = true;
        self
    }

    /// Consider the scan done once the first `n` wanted keys are found: `feed` then stops reading,
    /// even in the middle of a chunk.
    pub fn done_after(mut self, n: usize) -> Self {
        self.missing = first_keys(n.min(self.wanted.len()));
        self.stop_early = true;
        self
    }

    /// The values found so far, in body order.
    pub fn found(&self) -> &[Found] {
        &self.found
    }

    /// The first value found for wanted key `key`.
    pub fn get(&self, key: usize) -> Option<&Found> {
        self.found.iter().find(|f| f.key == key)
    }

    /// Every value found for wanted key `key`, in body order (a key may be repeated).
    pub fn all(&self, key: usize) -> impl Iterator<Item = &Found> {
        self.found.iter().filter(move |f| f.key == key)
    }

    /// How many times the top-level key `key` appeared.
    pub fn count(&self, key: usize) -> usize {
        self.all(key).count()
    }

    /// The scan is done: the keys asked for are found (see `done_after`), or can no longer be
    /// (the top level closed or is not an object).
    pub fn all_found(&self) -> bool {
        self.closed || self.top_not_object || self.missing == 0
    }

    /// Where the value of a wanted key that is being read began (its end is not known yet).
    pub fn capturing_since(&self) -> Option<u64> {
        self.capture.as_ref().map(|f| f.start)
    }

    /// Offset of the top-level object's opening brace, once seen.
    pub fn top_open(&self) -> Option<u64> {
        self.top_open
    }

    /// Feeds the next chunk. After an error, further input is ignored and the error is kept.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), JsonError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        // A byte that is not UTF-8 is reported where it is, unless the structure broke earlier:
        // the first error in the body wins, however the body was cut into chunks.
        let utf8_bad = if self.strict_utf8 {
            self.check_utf8(chunk).err()
        } else {
            None
        };
        let limit = utf8_bad.map_or(chunk.len(), |at| {
            (at.saturating_sub(self.offset) as usize).min(chunk.len())
        });
        let chunk_len = chunk.len();
        let chunk = chunk.get(..limit).unwrap_or(chunk);
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if self.stop_early && self.all_found() && !self.closed {
                // Nothing more is needed; the rest is not looked at.
                break;
            }
            match self.step(chunk, i, b) {
                Ok(next) => i = next,
                Err(reason) => {
                    let e = JsonError {
                        offset: self.offset + i as u64,
                        reason,
                    };
                    self.error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        if let Some(at) = utf8_bad {
            return Err(self.fail(at, "invalid UTF-8"));
        }
        self.offset += chunk_len as u64;
        Ok(())
    }

    /// Declares the end of the body: an unfinished value is an error.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if let Lex::Num(n) = self.lex {
            if n.complete() && self.stack.is_empty() {
                self.value_done(self.offset);
            }
        }
        if !self.utf8_carry.is_empty() {
            let at = self.offset - self.utf8_carry.len() as u64;
            return Err(self.fail(at, "invalid UTF-8"));
        }
        if self.closed && self.lex == Lex::AfterValue {
            return Ok(());
        }
        let reason = if self.offset == 0 {
            "empty body"
        } else {
            "unexpected end of input"
        };
        let e = JsonError {
            offset: self.offset,
            reason,
        };
        self.error = Some(e.clone());
        Err(e)
    }

    fn fail(&mut self, offset: u64, reason: &'static str) -> JsonError {
        let e = JsonError { offset, reason };
        self.error = Some(e.clone());
        e
    }

    /// Validates `chunk` as the continuation of UTF-8 text; `Err(offset)` of the first bad byte.
    fn check_utf8(&mut self, chunk: &[u8]) -> Result<(), u64> {
        if self.utf8_carry.is_empty() && all_ascii(chunk) {
            return Ok(());
        }
        let mut rest = chunk;
        // Where the cut sequence began: an error in it is reported at its first byte, as it is
        // when the body comes in one piece.
        let lead_at = self.offset - self.utf8_carry.len() as u64;
        if let Some(&lead) = self.utf8_carry.first() {
            let want = match lead {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (want - self.utf8_carry.len()).min(rest.len());
            let (head, tail) = rest.split_at_checked(take).unwrap_or((rest, &[]));
            self.utf8_carry.extend_from_slice(head);
            rest = tail;
            if self.utf8_carry.len() < want {
                // Still incomplete; the bytes so far must be a valid prefix.
                return match std::str::from_utf8(&self.utf8_carry) {
                    Err(e) if e.error_len().is_some() => Err(lead_at),
                    _ => Ok(()),
                };
            }
            if std::str::from_utf8(&self.utf8_carry).is_err() {
                return Err(lead_at);
            }
            self.utf8_carry.clear();
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                self.utf8_carry
                    .extend_from_slice(rest.get(e.valid_up_to()..).unwrap_or_default());
                Ok(())
            }
            Err(e) => Err(self.offset + (chunk.len() - rest.len() + e.valid_up_to()) as u64),
        }
    }

    /// Consumes input from `chunk[i..]` (`b` is `chunk[i]`), returns the index of the next
    /// unconsumed byte.
    fn step(&mut self, chunk: &[u8], i: usize, b: u8) -> Result<usize, &'static str> {
        let at = self.offset + i as u64;
        match self.lex {
            Lex::Str(s) => return self.string(chunk, i, b, s),
            Lex::Num(n) => {
                if let Some(next) = n.next(b) {
                    self.lex = Lex::Num(next);
                    self.keep(chunk.get(i..=i).unwrap_or_default());
                    return Ok(i + 1);
                }
                if !n.complete() {
                    return Err("malformed number");
                }
                self.value_done(at);
                // The byte that ended the number is looked at again as what follows a value.
                return Ok(i);
            }
            Lex::Lit(word, n) => {
                if word.get(n as usize) != Some(&b) {
                    return Err("malformed literal");
                }
                self.keep(chunk.get(i..=i).unwrap_or_default());
                if n as usize + 1 == word.len() {
                    self.value_done(at + 1);
                } else {
                    self.lex = Lex::Lit(word, n + 1);
                }
                return Ok(i + 1);
            }
            _ => {}
        }
        // Inside a captured container every byte is kept, so `raw` is the value as sent.
        if self.capture.is_some() {
            self.keep(chunk.get(i..=i).unwrap_or_default());
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return Ok(i + 1);
        }
        match self.lex {
            Lex::Value | Lex::ValueOrEnd => {
                if self.lex == Lex::ValueOrEnd && b == b']' {
                    return self.close(b, at).map(|_| i + 1);
                }
                if self.closed {
                    return Err("trailing data after the JSON value");
                }
                if self.begin_value(b, at) {
                    self.keep(chunk.get(i..=i).unwrap_or_default());
                }
                match b {
                    b'{' | b'[' => self.open(b)?,
                    b'"' => {
                        self.in_key = false;
                        self.in_top_key = false;
                        self.lex = Lex::Str(StrState::Plain);
                    }
                    b'-' => self.lex = Lex::Num(NumState::Minus),
                    b'0' => self.lex = Lex::Num(NumState::Zero),
                    b'1'..=b'9' => self.lex = Lex::Num(NumState::Int),
                    b't' => self.lex = Lex::Lit(b"true", 1),
                    b'f' => self.lex = Lex::Lit(b"false", 1),
                    b'n' => self.lex = Lex::Lit(b"null", 1),
                    _ => return Err("expected a value"),
                }
                Ok(i + 1)
            }
            Lex::KeyOrEnd | Lex::Key => {
                if self.lex == Lex::KeyOrEnd && b == b'}' {
                    return self.close(b, at).map(|_| i + 1);
                }
                if b != b'"' {
                    return Err("expected a string key");
                }
                self.in_key = true;
                self.in_top_key = self.stack.len() == 1;
                self.key_buf.clear();
                self.key_too_long = false;
                self.lex = Lex::Str(StrState::Plain);
                Ok(i + 1)
            }
            Lex::Colon => {
                if b != b':' {
                    return Err("expected `:` after a key");
                }
                self.lex = Lex::Value;
                Ok(i + 1)
            }
            Lex::AfterValue => match (b, self.stack.last()) {
                (b',', Some(b'{')) => {
                    self.lex = Lex::Key;
                    Ok(i + 1)
                }
                (b',', Some(b'[')) => {
                    self.lex = Lex::Value;
                    Ok(i + 1)
                }
                (b'}' | b']', Some(_)) => self.close(b, at).map(|_| i + 1),
                (_, None) => Err("trailing data after the JSON value"),
                _ => Err("expected `,` or a closing bracket"),
            },
            Lex::Str(_) | Lex::Num(_) | Lex::Lit(..) => Err("internal scanner state"),
        }
    }

    fn string(&mut self, chunk: &[u8], i: usize, b: u8, s: StrState) -> Result<usize, &'static str> {
        match s {
            StrState::Plain => {
                // Skip to the next quote, backslash or control character in one pass: this is
                // where the time goes.
                let rest = chunk.get(i..).unwrap_or_default();
                let n = string_end(rest);
                let (plain, end) = rest.split_at_checked(n).unwrap_or((rest, &[]));
                self.string_bytes(plain);
                let Some(&b) = end.first() else {
                    return Ok(chunk.len());
                };
                if b < 0x20 {
                    // RFC 8259: control characters must be escaped inside strings. The bytes
                    // before it were consumed, so the error names its exact offset.
                    if n == 0 {
                        return Err("unescaped control character in string");
                    }
                    return Ok(i + n);
                }
                self.string_bytes(end.get(..1).unwrap_or_default());
                if b == b'\\' {
                    self.lex = Lex::Str(StrState::Escape);
                } else {
                    self.end_string(self.offset + (i + n) as u64 + 1)?;
                }
                Ok(i + n + 1)
            }
            StrState::Escape => {
                self.string_bytes(chunk.get(i..=i).unwrap_or_default());
                self.lex = match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Lex::Str(StrState::Plain),
                    b'u' => Lex::Str(StrState::Hex(4)),
                    _ => return Err("invalid escape in string"),
                };
                Ok(i + 1)
            }
            StrState::Hex(left) => {
                if !b.is_ascii_hexdigit() {
                    return Err("invalid \\u escape in string");
                }
                self.string_bytes(chunk.get(i..=i).unwrap_or_default());
                self.lex = Lex::Str(if left == 1 {
                    StrState::Plain
                } else {
                    StrState::Hex(left - 1)
                });
                Ok(i + 1)
            }
        }
    }

    fn string_bytes(&mut self, bytes: &[u8]) {
        if self.in_top_key {
            if self.key_buf.len() + bytes.len() > MAX_KEY {
                self.key_too_long = true;
            } else {
                self.key_buf.extend_from_slice(bytes);
            }
        } else {
            self.keep(bytes);
        }
    }

    fn end_string(&mut self, end: u64) -> Result<(), &'static str> {
        if self.in_key {
            if self.in_top_key {
                self.pending_key = if self.key_too_long { None } else { self.match_key() };
            }
            self.in_key = false;
            self.in_top_key = false;
            self.lex = Lex::Colon;
            return Ok(());
        }
        self.value_done(end);
        Ok(())
    }

    /// Which wanted key the finished top-level key is (the closing quote is in `key_buf`).
    fn match_key(&self) -> Option<usize> {
        let raw = self.key_buf.strip_suffix(b"\"")?;
        let decoded;
        let key: &[u8] = if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            decoded = crate::json::unescape(&quoted).ok()?;
            decoded.as_bytes()
        } else {
            raw
        };
        // Repeated keys are all recorded: the caller decides what a repeat means (see `count`).
        self.wanted.iter().position(|w| w.as_bytes() == key)
    }

    /// A value starts at `at`; returns true when it is one to capture.
    fn begin_value(&mut self, b: u8, at: u64) -> bool {
        if self.stack.is_empty() {
            if b == b'{' {
                self.top_open = Some(at);
            } else {
                self.top_not_object = true;
            }
        }
        if self.stack.len() == 1 && self.stack.first() == Some(&b'{') {
            if let Some(key) = self.pending_key.take() {
                self.capture = Some(Found {
                    key,
                    start: at,
                    end: at,
                    // Most captured values (a model name, a flag, a number) fit at once.
                    raw: Vec::with_capacity(self.capture_limit.min(48)),
                    truncated: false,
                });
                return true;
            }
        }
        false
    }

    fn open(&mut self, b: u8) -> Result<(), &'static str> {
        if self.stack.len() >= MAX_DEPTH {
            return Err("nesting too deep");
        }
        self.stack.push(b);
        self.lex = if b == b'{' { Lex::KeyOrEnd } else { Lex::ValueOrEnd };
        Ok(())
    }

    fn close(&mut self, b: u8, at: u64) -> Result<(), &'static str> {
        let open = if b == b'}' { b'{' } else { b'[' };
        if self.stack.pop() != Some(open) {
            return Err("mismatched closing bracket");
        }
        self.value_done(at + 1);
        Ok(())
    }

    /// A value ended at `end` (exclusive): the scanner now expects what follows a value.
    fn value_done(&mut self, end: u64) {
        self.lex = Lex::AfterValue;
        if self.stack.is_empty() {
            self.closed = true;
        }
        // A captured value ends when we are back in the top-level object.
        if self.stack.len() == 1 {
            if let Some(mut f) = self.capture.take() {
                f.end = end;
                self.missing &= !1u64.checked_shl(f.key as u32).unwrap_or(0);
                self.found.push(f);
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        if let Some(f) = &mut self.capture {
            f.keep(bytes, self.capture_limit);
        }
    }
}

/// The bits of the first `n` keys (all of them from 64 on).
fn first_keys(n: usize) -> u64 {
    1u64.checked_shl(n as u32).map_or(u64::MAX, |b| b - 1)
}

/// Index of the first byte that ends a run of plain string content: `"`, `\\` or a control
/// character (below 0x20); `b.len()` if there is none. In the Wasm module (built with `simd128`,
/// `.cargo/config.toml`) this is one pass of 16-byte compares (`scripts/test.sh` runs these
/// tests inside Wasm too); elsewhere `string_end_portable`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn string_end(b: &[u8]) -> usize {
    use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_load, v128_or};
    let quote = u8x16_splat(b'"');
    let backslash = u8x16_splat(b'\\');
    let space = u8x16_splat(0x20);
    let mut i = 0;
    while i + 16 <= b.len() {
        // SAFETY: `i + 16 <= b.len()`, so the 16 bytes read are inside `b`; `v128_load` needs no
        // alignment.
        let v = unsafe { v128_load(b.as_ptr().add(i).cast::<v128>()) };
        let hit = v128_or(v128_or(u8x16_eq(v, quote), u8x16_eq(v, backslash)), u8x16_lt(v, space));
        let mask = u8x16_bitmask(hit);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    i + string_end_portable(b.get(i..).unwrap_or_default())
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn string_end(b: &[u8]) -> usize {
    string_end_portable(b)
}

/// `string_end` without SIMD intrinsics: `memchr2` finds the quote or backslash, then the run
/// before it is checked for a control character in blocks without an early exit (which compile
/// to vector compares), and only the block that has one is searched byte by byte.
fn string_end_portable(b: &[u8]) -> usize {
    let n = memchr2(b'"', b'\\', b).unwrap_or(b.len());
    const BLOCK: usize = 32;
    let plain = b.get(..n).unwrap_or(b);
    let mut blocks = plain.chunks_exact(BLOCK);
    for (i, block) in blocks.by_ref().enumerate() {
        if block.iter().fold(false, |acc, &x| acc | (x < 0x20)) {
            return i * BLOCK + block.iter().position(|&x| x < 0x20).unwrap_or(0);
        }
    }
    let done = n - blocks.remainder().len();
    done + blocks
        .remainder()
        .iter()
        .position(|&x| x < 0x20)
        .unwrap_or(blocks.remainder().len())
}

/// True when every byte is ASCII (then the bytes are UTF-8): eight bytes at a time, as one
/// 64-bit word (Wasm has 64-bit integers even where pointers are 32 bits).
fn all_ascii(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    let mut high = 0u64;
    for w in words.by_ref() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        high |= u64::from_le_bytes(a);
    }
    let rest = words.remainder().iter().fold(0u8, |a, &x| a | x);
    high & 0x8080_8080_8080_8080 == 0 && rest < 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["model", "stream"];

    #[test]
    fn block_searches_agree_with_byte_by_byte() {
        // Every length around the block sizes (16 and 32), every byte value at every position,
        // alone or before a later quote: the first ending byte is the one found. Inside Wasm
        // (`scripts/test.sh`) this checks the SIMD search; natively, the portable one.
        for len in 0..50 {
            for at in 0..=len {
                for special in 0..=255u8 {
                    for later_quote in [false, true] {
                        let mut b = vec![b'a'; len];
                        if at < len {
                            b[at] = special;
                        }
                        if later_quote && at + 1 < len {
                            b[len - 1] = b'"';
                        }
                        let naive = b
                            .iter()
                            .position(|&x| x == b'"' || x == b'\\' || x < 0x20)
                            .unwrap_or(len);
                        assert_eq!(string_end(&b), naive, "{b:?}");
                        assert_eq!(string_end_portable(&b), naive, "{b:?}");
                        assert_eq!(all_ascii(&b), b.is_ascii(), "{b:?}");
                    }
                }
            }
        }
    }

    fn scan_whole(body: &[u8]) -> (TopLevelScanner, Result<(), JsonError>) {
        let mut s = TopLevelScanner::new(KEYS, 1024);
        let r = s.feed(body).and_then(|_| s.finish());
        (s, r)
    }

    fn raw(s: &TopLevelScanner, k: usize) -> Option<String> {
        s.get(k).map(|f| String::from_utf8_lossy(&f.raw).into_owned())
    }

    #[test]
    fn finds_top_level_keys_with_spans() {
        let body = br#"{"messages":[{"model":"nested"}],"model" : "gpt-4o","stream":true}"#;
        let (s, r) = scan_whole(body);
        r.unwrap();
        let m = s.get(0).unwrap();
        assert_eq!(&body[m.start as usize..m.end as usize], br#""gpt-4o""#);
        assert_eq!(raw(&s, 1).as_deref(), Some("true"));
    }

    #[test]
    fn nested_model_keys_do_not_count() {
        let body = br#"{"tools":[{"function":{"model":"x"}}],"metadata":{"model":"y"}}"#;
        let (s, r) = scan_whole(body);
        r.unwrap();
        assert!(s.get(0).is_none());
    }

    #[test]
    fn escaped_key_matches_and_value_kept_raw() {
        let body = br#"{"mod\u0065l":"a\"b\u00e9"}"#;
        let (s, r) = scan_whole(body);
        r.unwrap();
        assert_eq!(raw(&s, 0).as_deref(), Some(r#""a\"b\u00e9""#));
    }

    #[test]
    fn repeated_keys_are_all_recorded() {
        let (s, r) = scan_whole(br#"{"model":"a","x":{"model":"n"},"mod\u0065l":"b"}"#);
        r.unwrap();
        assert_eq!(raw(&s, 0).as_deref(), Some(r#""a""#));
        assert_eq!(s.count(0), 2, "the escaped spelling is the same key");
        let all: Vec<_> = s.all(0).map(|f| f.raw.clone()).collect();
        assert_eq!(all, vec![br#""a""#.to_vec(), br#""b""#.to_vec()]);
    }

    #[test]
    fn control_characters_and_bad_utf8_are_refused() {
        for body in [&b"{\"model\":\"a\nb\"}"[..], b"{\"a\":\"\t\"}", b"{\"k\x01\":1}"] {
            let (_, r) = scan_whole(body);
            assert_eq!(
                r.unwrap_err().reason,
                "unescaped control character in string",
                "{body:?}"
            );
        }
        let strict = |body: &[u8]| {
            let mut s = TopLevelScanner::new(KEYS, 64).strict_utf8();
            s.feed(body).and_then(|_| s.finish())
        };
        for bad in [
            &b"{\"model\":\"gpt\xff\"}"[..],
            b"{\"a\":\"\xc3\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xe2\x82",
        ] {
            assert!(strict(bad).is_err(), "{bad:?}");
        }
        assert!(strict("{\"a\":\"h\u{e9}llo \u{1f600}\"}".as_bytes()).is_ok());
        // Lenient scanners (response bodies) do not look.
        assert!(scan_whole(b"{\"a\":\"\xff\"}").1.is_ok());
    }

    /// UTF-8 checked across every split, including inside a multi-byte character.
    #[test]
    fn utf8_split_at_every_byte() {
        let good = "{\"model\":\"h\u{e9}\u{20ac}\u{1f600}\"}";
        let bodies: [&[u8]; 3] = [
            good.as_bytes(),
            b"{\"a\":\"\xe2\x82\x28\"}",
            b"{\"a\":\"\xf0\x9f\x98\"}",
        ];
        for (n, body) in bodies.iter().enumerate() {
            let whole = {
                let mut s = TopLevelScanner::new(KEYS, 64).strict_utf8();
                s.feed(body).and_then(|_| s.finish()).is_ok()
            };
            assert_eq!(whole, n == 0);
            for cut in 0..=body.len() {
                let mut s = TopLevelScanner::new(KEYS, 64).strict_utf8();
                let r = s
                    .feed(&body[..cut])
                    .and_then(|_| s.feed(&body[cut..]))
                    .and_then(|_| s.finish());
                assert_eq!(r.is_ok(), whole, "cut {cut} of {body:?}");
            }
        }
    }

    #[test]
    fn values_of_every_kind_are_captured() {
        for (v, want) in [
            ("{\"a\":[1,{\"b\":null}]}", "{\"a\":[1,{\"b\":null}]}"),
            ("[]", "[]"),
            ("-12.5e+3", "-12.5e+3"),
            ("0", "0"),
            ("false", "false"),
            ("null", "null"),
        ] {
            let body = format!("{{\"model\":{v},\"x\":1}}");
            let (s, r) = scan_whole(body.as_bytes());
            r.unwrap();
            assert_eq!(raw(&s, 0).as_deref(), Some(want), "{body}");
            let f = s.get(0).unwrap();
            assert_eq!(&body.as_bytes()[f.start as usize..f.end as usize], want.as_bytes());
        }
    }

    #[test]
    fn invalid_bodies_are_errors() {
        for body in [
            "",
            "   ",
            "{",
            "{\"model\"",
            "{\"model\":}",
            "{\"model\" \"x\"}",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{}}",
            "{} {}",
            "{\"a\":1]",
            "nope",
            "{'model':'x'}",
            "{\"a\":-}",
            "\u{feff}{}",
        ] {
            let (_, r) = scan_whole(body.as_bytes());
            assert!(r.is_err(), "{body:?} should be invalid");
        }
    }

    #[test]
    fn valid_bodies_pass() {
        for body in [
            "{}",
            "[]",
            "1",
            "\"s\"",
            " {\"a\" : [ ] } ",
            "{\"a\":{\"b\":[1,2,{\"c\":\"d\"}]}}",
            "-0.0e-0",
            "null",
        ] {
            let (_, r) = scan_whole(body.as_bytes());
            assert!(r.is_ok(), "{body:?} should be valid: {r:?}");
        }
    }

    #[test]
    fn non_object_top_level_has_no_keys_and_is_finished_early() {
        let mut s = TopLevelScanner::new(KEYS, 64);
        s.feed(b"[{\"model\":\"x\"}").unwrap();
        assert!(s.all_found());
        assert!(s.get(0).is_none());
    }

    #[test]
    fn capture_limit_truncates() {
        let mut s = TopLevelScanner::new(KEYS, 4);
        s.feed(br#"{"model":"abcdefgh"}"#).unwrap();
        let f = s.get(0).unwrap();
        assert!(f.truncated);
        assert_eq!(f.raw, b"\"abc");
        assert_eq!((f.start, f.end), (9, 19));
    }

    #[test]
    fn depth_limit() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        let (_, r) = scan_whole(deep.as_bytes());
        assert_eq!(r.unwrap_err().reason, "nesting too deep");
    }

    #[test]
    fn stops_being_needed_once_all_found() {
        let mut s = TopLevelScanner::new(&["model"], 64);
        s.feed(br#"{"model":"m","messages":[{"role":"user","content":"#)
            .unwrap();
        assert!(s.all_found());
    }

    /// Every split point gives the same result as the whole body.
    #[test]
    fn split_at_every_byte() {
        let bodies: &[&[u8]] = &[
            br#"{"messages":[{"model":"n","content":"a\"\\b\u00e9"}],"model":"gpt-4o","stream":false}"#,
            br#"{"mod\u0065l":"x\ny","stream":-1.5E+10}"#,
            br#"{"a":[true,false,null,0,{"b":[]}],"model":"m"} "#,
            br#"{"model":"m",]"#,
            br#"{"stream":tru"#,
        ];
        for body in bodies {
            let (whole, wr) = scan_whole(body);
            for cut in 0..=body.len() {
                let mut s = TopLevelScanner::new(KEYS, 1024);
                let r = s
                    .feed(&body[..cut])
                    .and_then(|_| s.feed(&body[cut..]))
                    .and_then(|_| s.finish());
                assert_eq!(r, wr, "cut {cut} of {}", String::from_utf8_lossy(body));
                assert_eq!(s.found(), whole.found(), "cut {cut}");
            }
            // And one byte at a time.
            let mut s = TopLevelScanner::new(KEYS, 1024);
            let mut r = Ok(());
            for b in body.iter() {
                r = r.and_then(|_| s.feed(std::slice::from_ref(b)));
            }
            let r = r.and_then(|_| s.finish());
            assert_eq!(r, wr);
            assert_eq!(s.found(), whole.found());
        }
    }

    #[test]
    fn agrees_with_serde_json_on_validity_and_model() {
        let bodies = [
            r#"{"model":"a","x":[1,2,3]}"#,
            r#"{"x":{"model":"inner"},"model":"outer"}"#,
            r#"{"model":null}"#,
            r#"{"model":"\ud83d\ude00"}"#,
        ];
        for body in bodies {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let (s, r) = scan_whole(body.as_bytes());
            r.unwrap();
            let ours: serde_json::Value = serde_json::from_slice(&s.get(0).unwrap().raw).unwrap();
            assert_eq!(ours, v["model"]);
        }
    }
}
