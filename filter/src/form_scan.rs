//! A streaming reader of `multipart/form-data` bodies (RFC 7578) that finds one field, the way
//! `json_scan` finds a JSON body's top-level keys: `feed(chunk)` as bytes arrive, `finish()` at
//! the end, the value's raw bytes (bounded) and its byte span in the whole body for a rewrite.
//! Uploads such as OpenAI's `/v1/audio/transcriptions` name their model in a form field.
//!
//! It is strict where form parsers differ, so that no backend reads a different field than the
//! filter did: the body must begin with its boundary; lines end with CRLF; a boundary in a part's
//! content must end that part; every part has one `Content-Disposition: form-data` with one
//! plain `name`. A `name` with a backslash or in the extended form (`name*=`), and a wanted field
//! sent as a file or with a transfer encoding, are refused. Every part named like the wanted
//! field is recorded (the caller refuses repeats). File contents are passed over, never kept.

use memchr::memchr;

use crate::json_scan::Found;

/// Part header lines longer than this are refused (form parsers cap them too).
const MAX_HEADER_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid multipart form at byte {offset}: {reason}")]
pub struct FormError {
    pub offset: u64,
    pub reason: &'static str,
}

/// The boundary of a `multipart/*` content type (RFC 2046 §5.1.1: 1 to 70 characters of a
/// restricted set, the last not a space), or `None` when it has none or an invalid one.
pub fn boundary(content_type: &str) -> Option<Vec<u8>> {
    let mut found: Option<&[u8]> = None;
    for param in content_type.as_bytes().split(|&b| b == b';').skip(1) {
        let mut kv = param.splitn(2, |&b| b == b'=');
        let (Some(key), Some(v)) = (kv.next(), kv.next()) else {
            return None;
        };
        if !same(trim(key), b"boundary") {
            continue;
        }
        let v = trim(v);
        let v = match v.strip_prefix(b"\"") {
            Some(q) => q.strip_suffix(b"\"")?,
            None => v,
        };
        if found.replace(v).is_some() {
            // Two boundaries: which one a parser takes is anyone's guess.
            return None;
        }
    }
    let b = found?;
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(c);
    (!b.is_empty() && b.len() <= 70 && !b.ends_with(b" ") && b.iter().all(allowed)).then(|| b.to_vec())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The body's first bytes: `--boundary` (`matched` bytes of the delimiter so far, from 2).
    Start,
    /// After a delimiter: `--` (the end), or padding and CRLF (a part).
    AfterDelimiter,
    /// After the first `-` of the closing `--`.
    CloseDash,
    /// After the CR that ends a delimiter line.
    DelimiterLf,
    /// In a part's header lines.
    Headers,
    /// After the CR that ends a header line.
    HeaderLf,
    /// In a part's content (`matched` bytes of a delimiter pending).
    Content,
    /// After the closing delimiter: ignored.
    Epilogue,
}

/// What the current part's headers said.
#[derive(Debug, Default)]
struct Part {
    disposition: bool,
    /// The part is the wanted field.
    wanted: bool,
    file: bool,
    /// A `Content-Transfer-Encoding` other than the identity ones.
    encoded: bool,
}

#[derive(Debug)]
pub struct FormScanner {
    /// `\r\n--` and the boundary.
    delimiter: Vec<u8>,
    field: &'static str,
    capture_limit: usize,
    state: State,
    /// Bytes of the delimiter matched so far.
    matched: usize,
    /// Absolute offset of the next byte to be fed.
    offset: u64,
    line: Vec<u8>,
    part: Part,
    capture: Option<Found>,
    found: Vec<Found>,
    error: Option<FormError>,
}

impl FormScanner {
    /// `boundary` from the content type (see `boundary`); `field`: the form field to record.
    pub fn new(boundary: &[u8], field: &'static str, capture_limit: usize) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        FormScanner {
            delimiter,
            field,
            capture_limit,
            state: State::Start,
            matched: 2,
            offset: 0,
            line: Vec::new(),
            part: Part::default(),
            capture: None,
            found: Vec::new(),
            error: None,
        }
    }

    /// Every part named `field`, in body order: the span and bytes of its content.
    pub fn found(&self) -> &[Found] {
        &self.found
    }

    /// Feeds the next chunk. After an error, further input is ignored and the error is kept.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), FormError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            match self.step(chunk, i, b) {
                Ok(next) => i = next,
                Err(reason) => return Err(self.fail(self.offset + i as u64, reason)),
            }
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Declares the end of the body: a form not closed by `--boundary--` is an error.
    pub fn finish(&mut self) -> Result<(), FormError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state == State::Epilogue {
            return Ok(());
        }
        let reason = if self.offset == 0 {
            "empty body"
        } else {
            "the form ends without its closing boundary"
        };
        Err(self.fail(self.offset, reason))
    }

    fn fail(&mut self, offset: u64, reason: &'static str) -> FormError {
        let e = FormError { offset, reason };
        self.error = Some(e.clone());
        e
    }

    /// Consumes input from `chunk[i..]` (`b` is `chunk[i]`), returns the index of the next
    /// unconsumed byte.
    fn step(&mut self, chunk: &[u8], i: usize, b: u8) -> Result<usize, &'static str> {
        match self.state {
            State::Start => {
                if self.delimiter.get(self.matched) != Some(&b) {
                    return Err("the body does not begin with the boundary");
                }
                self.matched += 1;
                if self.matched == self.delimiter.len() {
                    self.matched = 0;
                    self.state = State::AfterDelimiter;
                }
            }
            State::AfterDelimiter => match b {
                b'-' => self.state = State::CloseDash,
                // Transport padding (RFC 2046).
                b' ' | b'\t' => {}
                b'\r' => self.state = State::DelimiterLf,
                b'\n' => return Err("a boundary line not ended by CRLF"),
                _ => return Err("a boundary inside a part's content"),
            },
            State::CloseDash => {
                if b != b'-' {
                    return Err("a boundary inside a part's content");
                }
                self.state = State::Epilogue;
            }
            State::DelimiterLf => {
                if b != b'\n' {
                    return Err("a boundary line not ended by CRLF");
                }
                self.part = Part::default();
                self.line.clear();
                self.state = State::Headers;
            }
            State::Headers => {
                // The header line up to its CR, at once.
                let rest = chunk.get(i..).unwrap_or_default();
                let n = find(b'\r', rest).unwrap_or(rest.len());
                let (line, end) = rest.split_at_checked(n).unwrap_or((rest, &[]));
                if self.line.len() + n > MAX_HEADER_LINE {
                    return Err("a part header line is too long");
                }
                if line.contains(&b'\n') {
                    return Err("a part header line not ended by CRLF");
                }
                self.line.extend_from_slice(line);
                if !end.is_empty() {
                    self.state = State::HeaderLf;
                    return Ok(i + n + 1);
                }
                return Ok(chunk.len());
            }
            State::HeaderLf => {
                if b != b'\n' {
                    return Err("a part header line not ended by CRLF");
                }
                if self.line.is_empty() {
                    self.begin_content(self.offset + i as u64 + 1)?;
                } else {
                    header(&mut self.part, self.field, &self.line)?;
                    self.line.clear();
                    self.state = State::Headers;
                }
            }
            State::Content => return self.content(chunk, i, b),
            State::Epilogue => return Ok(chunk.len()),
        }
        Ok(i + 1)
    }

    /// Content bytes: everything up to a delimiter, which ends the part.
    fn content(&mut self, chunk: &[u8], i: usize, b: u8) -> Result<usize, &'static str> {
        if self.matched == 0 {
            // Skip to the next CR, the only byte that can begin a delimiter.
            let rest = chunk.get(i..).unwrap_or_default();
            let n = memchr(b'\r', rest).unwrap_or(rest.len());
            let (content, end) = rest.split_at_checked(n).unwrap_or((rest, &[]));
            self.keep(content);
            if end.is_empty() {
                return Ok(chunk.len());
            }
            self.matched = 1;
            return Ok(i + n + 1);
        }
        if self.delimiter.get(self.matched) == Some(&b) {
            self.matched += 1;
            if self.matched == self.delimiter.len() {
                let end = self.offset + i as u64 + 1 - self.delimiter.len() as u64;
                self.matched = 0;
                self.end_part(end);
                self.state = State::AfterDelimiter;
            }
            return Ok(i + 1);
        }
        // Not a delimiter after all: what matched was content. Only its first byte is a CR, so
        // a new match can begin only at this byte.
        if let Some(f) = &mut self.capture {
            f.keep(
                self.delimiter.get(..self.matched).unwrap_or_default(),
                self.capture_limit,
            );
        }
        self.matched = 0;
        Ok(i)
    }

    #[inline(never)]
    fn begin_content(&mut self, start: u64) -> Result<(), &'static str> {
        if !self.part.disposition {
            return Err("a part without Content-Disposition");
        }
        if self.part.wanted {
            if self.part.file {
                return Err("the model field is sent as a file");
            }
            if self.part.encoded {
                return Err("the model field has a Content-Transfer-Encoding");
            }
            self.capture = Some(Found {
                key: 0,
                start,
                end: start,
                raw: Vec::with_capacity(self.capture_limit.min(48)),
                truncated: false,
            });
        }
        self.state = State::Content;
        Ok(())
    }

    fn end_part(&mut self, end: u64) {
        if let Some(mut f) = self.capture.take() {
            f.end = end;
            self.found.push(f);
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        if let Some(f) = &mut self.capture {
            f.keep(bytes, self.capture_limit);
        }
    }
}

/// One part header line, into what the part's headers said (`field`: the wanted name).
#[inline(never)]
fn header(part: &mut Part, field: &str, line: &[u8]) -> Result<(), &'static str> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err("a folded part header line");
    }
    let mut kv = line.splitn(2, |&b| b == b':');
    let name = kv.next().unwrap_or_default();
    let value = trim(kv.next().ok_or("a part header line without `:`")?);
    if same(name, b"content-disposition") {
        if part.disposition {
            return Err("a part with two Content-Disposition headers");
        }
        part.disposition = true;
        disposition(part, field, value)?;
    } else if same(name, b"content-transfer-encoding") {
        let identity = [&b"7bit"[..], b"8bit", b"binary"];
        part.encoded |= !identity.iter().any(|e| same(value, e));
    }
    Ok(())
}

/// `form-data; name="…"[; filename="…"]`
fn disposition(part: &mut Part, field: &str, v: &[u8]) -> Result<(), &'static str> {
    let blank = |b: u8| b == b' ' || b == b'\t';
    let skip_blanks = |mut j: usize| {
        while v.get(j).is_some_and(|&c| blank(c)) {
            j += 1;
        }
        j
    };
    // `v[a..z]` and `v[a..]`, empty where out of bounds (every index below is within `v`).
    let span = |a: usize, z: usize| v.get(a..z).unwrap_or_default();
    let from = |a: usize| v.get(a..).unwrap_or_default();
    let mut i = find(b';', v).unwrap_or(v.len());
    if !same(trim(span(0, i)), b"form-data") {
        return Err("a part that is not form-data");
    }
    let mut name = None;
    while let Some(&c) = v.get(i) {
        if c == b';' || blank(c) {
            i += 1;
            continue;
        }
        let eq = i + find(b'=', from(i)).ok_or("a Content-Disposition parameter without a value")?;
        let key = trim(span(i, eq));
        let mut j = skip_blanks(eq + 1);
        let value;
        if v.get(j) == Some(&b'"') {
            let close = j + 1 + find(b'"', from(j + 1)).ok_or("an unclosed quoted Content-Disposition parameter")?;
            value = span(j + 1, close);
            if value.contains(&b'\\') {
                // Parsers unescape differently (`\e`: `e` for one, `\e` for another).
                return Err("a backslash in a Content-Disposition parameter");
            }
            j = skip_blanks(close + 1);
            if v.get(j).is_some_and(|&c| c != b';') {
                return Err("bytes after a Content-Disposition parameter");
            }
        } else {
            let end = find(b';', from(j)).map_or(v.len(), |e| j + e);
            value = trim(span(j, end));
            if value.iter().any(|&c| c == b'"' || c == b'\\') {
                return Err("a quote or backslash in an unquoted Content-Disposition parameter");
            }
            j = end;
        }
        i = j;
        if same(key, b"name") {
            if name.replace(value).is_some() {
                return Err("a part with two names");
            }
        } else if same(key, b"name*") {
            return Err("a part name in the extended form (`name*`)");
        } else if same(key, b"filename") || same(key, b"filename*") {
            part.file = true;
        }
    }
    let name = name.ok_or("a part without a name")?;
    part.wanted = name == field.as_bytes();
    Ok(())
}

// Small helpers for the header lines (a few dozen bytes each), kept out of line so that the
// module stays small: the fast `memchr` is for part contents.

#[inline(never)]
fn find(byte: u8, b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == byte)
}

#[inline(never)]
fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[inline(never)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[u8] = b"8a34b891d318b3ad96d4e6295f87933f";

    /// What OpenAI's Python client sends for `audio.transcriptions.create` (captured), with a file
    /// whose content looks like the start of a delimiter.
    fn openai_upload(model: &str) -> Vec<u8> {
        format!(
            "--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n\
             --8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n\
             --8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
             Content-Type: audio/x-wav\r\n\r\nRIFF\x00\x01\r\r\n--8a34b8\r\n--x\r\n\
             --8a34b891d318b3ad96d4e6295f87933f--\r\n"
        )
        .into_bytes()
    }

    fn scan(body: &[u8]) -> (FormScanner, Result<(), FormError>) {
        let mut s = FormScanner::new(B, "model", 1024);
        let r = s.feed(body).and_then(|_| s.finish());
        (s, r)
    }

    fn models(s: &FormScanner, body: &[u8]) -> Vec<String> {
        s.found()
            .iter()
            .map(|f| {
                assert_eq!(
                    &body[f.start as usize..f.end as usize],
                    &f.raw[..],
                    "span and bytes agree"
                );
                String::from_utf8(f.raw.clone()).unwrap()
            })
            .collect()
    }

    #[test]
    fn boundaries_from_content_types() {
        let ok = |ct: &str, b: &str| assert_eq!(boundary(ct).as_deref(), Some(b.as_bytes()), "{ct}");
        ok(
            "multipart/form-data; boundary=8a34b891d318b3ad96d4e6295f87933f",
            "8a34b891d318b3ad96d4e6295f87933f",
        );
        ok(
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            "----WebKitFormBoundary7MA4YWxkTrZu0gW",
        );
        ok("multipart/form-data;boundary=\"a b:c\"", "a b:c");
        ok("multipart/form-data; charset=utf-8; BOUNDARY=x", "x");
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"x",
            "multipart/form-data; boundary=a\rb",
            "multipart/form-data; boundary=\"ends with space \"",
            "multipart/form-data; boundary=x; boundary=y",
            "multipart/form-data; boundary=\u{e9}",
        ] {
            assert_eq!(boundary(bad), None, "{bad:?}");
        }
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "a".repeat(71))),
            None
        );
    }

    #[test]
    fn finds_the_model_of_a_real_upload() {
        let body = openai_upload("whisper-1");
        let (s, r) = scan(&body);
        r.unwrap();
        assert_eq!(models(&s, &body), ["whisper-1"]);
    }

    #[test]
    fn split_at_every_byte() {
        let body = openai_upload("whisper-1");
        let (whole, r) = scan(&body);
        r.unwrap();
        for cut in 0..=body.len() {
            for step in [1, 7] {
                let mut s = FormScanner::new(B, "model", 1024);
                let mut parts = vec![&body[..cut]];
                parts.extend(body[cut..].chunks(step));
                for p in parts {
                    s.feed(p).unwrap();
                }
                s.finish().unwrap();
                assert_eq!(s.found(), whole.found(), "cut at {cut}, step {step}");
            }
        }
    }

    #[test]
    fn every_model_part_is_recorded() {
        let body = b"--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=model\r\n\r\nsmall\r\n\
--8a34b891d318b3ad96d4e6295f87933f\r\ncontent-disposition: FORM-DATA; name=\"model\"\r\n\r\nlarge\r\n\
--8a34b891d318b3ad96d4e6295f87933f--";
        let (s, r) = scan(body);
        r.unwrap();
        assert_eq!(models(&s, body), ["small", "large"]);
    }

    #[test]
    fn other_fields_and_names_do_not_count() {
        let body = b"--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"Model\"\r\n\r\nx\r\n\
--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"models\"\r\n\r\ny\r\n\
--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; filename=\"model\"; name=\"file\"\r\n\r\nz\r\n\
--8a34b891d318b3ad96d4e6295f87933f--\r\n";
        let (s, r) = scan(body);
        r.unwrap();
        assert!(s.found().is_empty());
    }

    #[test]
    fn empty_value_and_long_value() {
        let body = b"--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\r\n\
--8a34b891d318b3ad96d4e6295f87933f--";
        let (s, r) = scan(body);
        r.unwrap();
        assert_eq!(models(&s, body), [""]);
        let long = "m".repeat(2000);
        let body = openai_upload(&long);
        let (s, r) = scan(&body);
        r.unwrap();
        let f = &s.found()[0];
        assert!(f.truncated);
        assert_eq!(f.raw.len(), 1024);
        assert_eq!(f.end - f.start, 2000);
    }

    #[test]
    fn ambiguous_or_broken_forms_are_errors() {
        let part = |headers: &str, value: &str| {
            format!(
                "--8a34b891d318b3ad96d4e6295f87933f\r\n{headers}\r\n\r\n{value}\r\n--8a34b891d318b3ad96d4e6295f87933f--\r\n"
            )
        };
        let cases = [
            (String::new(), "empty body"),
            ("{\"model\":\"x\"}".into(), "the body does not begin with the boundary"),
            ("\r\n--8a34b891d318b3ad96d4e6295f87933f--".into(), "the body does not begin with the boundary"),
            ("--8a34b891d318b3ad96d4e6295f87933f\nContent-Disposition: form-data; name=model\n\nx\n--8a34b891d318b3ad96d4e6295f87933f--".into(),
             "a boundary line not ended by CRLF"),
            (part("Content-Disposition: form-data; name=\"model\"\nX: y", "x"), "a part header line not ended by CRLF"),
            (part("Content-Disposition: form-data; name=\"model\"", "x\r\n--8a34b891d318b3ad96d4e6295f87933fx"),
             "a boundary inside a part's content"),
            (part("Content-Disposition: form-data; name=\"mod\\el\"", "x"), "a backslash in a Content-Disposition parameter"),
            (part("Content-Disposition: form-data; name=\"x\"; name*=UTF-8''model", "x"), "a part name in the extended form (`name*`)"),
            (part("Content-Disposition: form-data; name=\"x\"; name=\"model\"", "x"), "a part with two names"),
            (part("Content-Disposition: form-data; name=\"model\"\r\nContent-Disposition: form-data; name=\"x\"", "x"),
             "a part with two Content-Disposition headers"),
            (part("Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"", "x"), "the model field is sent as a file"),
            (part("Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64", "eA=="),
             "the model field has a Content-Transfer-Encoding"),
            (part("Content-Type: text/plain", "x"), "a part without Content-Disposition"),
            (part("Content-Disposition: attachment; name=\"model\"", "x"), "a part that is not form-data"),
            (part("Content-Disposition: form-data; filename=\"a\"", "x"), "a part without a name"),
            (part("Content-Disposition: form-data; name=\"model\"\r\n folded", "x"), "a folded part header line"),
            (part("Content-Disposition: form-data; name=\"model\"x", "x"), "bytes after a Content-Disposition parameter"),
            (part("Content-Disposition: form-data; name=model\"", "x"), "a quote or backslash in an unquoted Content-Disposition parameter"),
            (part(&format!("X: {}", "a".repeat(5000)), "x"), "a part header line is too long"),
            ("--8a34b891d318b3ad96d4e6295f87933f\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx".into(),
             "the form ends without its closing boundary"),
        ];
        for (body, reason) in cases {
            let (_, r) = scan(body.as_bytes());
            assert_eq!(r.map_err(|e| e.reason), Err(reason), "{body:?}");
        }
    }

    #[test]
    fn padding_identity_encodings_and_epilogue_are_accepted() {
        let body = b"--8a34b891d318b3ad96d4e6295f87933f \t\r\nContent-Disposition: form-data; name=\"model\"\r\n\
Content-Transfer-Encoding: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nllama\r\n\
--8a34b891d318b3ad96d4e6295f87933f--\r\nanything --8a34b891d318b3ad96d4e6295f87933f\r\n";
        let (s, r) = scan(body);
        r.unwrap();
        assert_eq!(models(&s, body), ["llama"]);
    }
}
