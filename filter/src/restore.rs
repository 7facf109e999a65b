//! Puts the client's model name back into a response when `upstreamModel` rewrote the request:
//! the top-level `"model"` of a JSON body, and of every SSE event's JSON data, is replaced when
//! it is exactly the upstream name. Streaming (`feed` / `finish`), holding back only the bytes of
//! a top-level value that may have to change (JSON) or of an unfinished event (SSE); every other
//! byte passes as it came.

use crate::json_scan::TopLevelScanner;

const KEYS: &[&str] = &["model"];
/// Model names longer than this are not looked at (configured names are ≤ 256 bytes).
const CAPTURE: usize = 1024;

/// `model` values to replace: the upstream name, JSON-encoded, and what replaces it.
#[derive(Debug, Clone)]
struct Names {
    from: Vec<u8>,
    to: Vec<u8>,
}

/// The top-level `model` of one JSON document, rewritten as it streams.
#[derive(Debug)]
struct JsonRestorer {
    scanner: TopLevelScanner,
    /// Bytes fed and not yet emitted; `pending[0]` is at absolute offset `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    /// Found values already handled.
    handled: usize,
    /// Replacements (absolute start, end) of values within `pending`.
    replace: Vec<(u64, u64)>,
    /// The body stopped being JSON: pass the rest through.
    broken: bool,
}

impl JsonRestorer {
    fn new() -> Self {
        JsonRestorer {
            scanner: TopLevelScanner::new(KEYS, CAPTURE),
            pending: Vec::new(),
            pending_at: 0,
            handled: 0,
            replace: Vec::new(),
            broken: false,
        }
    }

    /// Feeds bytes; appends to `out` what can be emitted.
    fn feed(&mut self, names: &Names, chunk: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(chunk);
        if !self.broken && self.scanner.feed(chunk).is_err() {
            self.broken = true;
        }
        if self.broken {
            self.emit(names, u64::MAX, out);
            return;
        }
        let found = self.scanner.found();
        for f in found.get(self.handled..).unwrap_or_default() {
            if !f.truncated && f.raw == names.from {
                self.replace.push((f.start, f.end));
            }
        }
        self.handled = found.len();
        let upto = self.scanner.capturing_since().unwrap_or(u64::MAX);
        self.emit(names, upto, out);
    }

    fn finish(&mut self, names: &Names, out: &mut Vec<u8>) {
        self.emit(names, u64::MAX, out);
    }

    /// Emits pending bytes before absolute offset `upto`, with the replacements inside them.
    fn emit(&mut self, names: &Names, upto: u64, out: &mut Vec<u8>) {
        let end_abs = self.pending_at + self.pending.len() as u64;
        let upto = upto.min(end_abs);
        let mut at = self.pending_at;
        // The pending bytes from absolute offset `a` to `z` (both within them, as below).
        let (pending, base) = (&self.pending, self.pending_at);
        let span = |a: u64, z: u64| {
            pending
                .get((a - base) as usize..(z - base) as usize)
                .unwrap_or_default()
        };
        for &(start, end) in self.replace.iter().filter(|(_, e)| *e <= upto) {
            if start < at {
                continue;
            }
            out.extend_from_slice(span(at, start));
            out.extend_from_slice(&names.to);
            at = end;
        }
        out.extend_from_slice(span(at, upto.max(at)));
        let consumed = (upto.max(at) - self.pending_at) as usize;
        self.pending.drain(..consumed);
        self.pending_at += consumed as u64;
        self.replace.retain(|(_, e)| *e > upto);
    }
}

/// Rewrites a whole JSON text (an SSE event's data).
fn restore_whole(names: &Names, json: &[u8]) -> Vec<u8> {
    let mut r = JsonRestorer::new();
    let mut out = Vec::with_capacity(json.len() + names.to.len());
    r.feed(names, json, &mut out);
    r.finish(names, &mut out);
    out
}

/// Rewrites one complete SSE event (its lines and the blank line that ends it).
fn restore_event(names: &Names, event: &[u8], out: &mut Vec<u8>) {
    let mut rest = event;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(rest.len(), |i| i + 1);
        // A CRLF pair stays together.
        let end = if rest.get(end - 1..=end) == Some(&b"\r\n"[..]) {
            end + 1
        } else {
            end
        };
        let (line, after) = rest.split_at_checked(end).unwrap_or((rest, &[]));
        let body_len = line
            .iter()
            .rposition(|&b| b != b'\n' && b != b'\r')
            .map_or(0, |i| i + 1);
        let (text, eol) = line.split_at(body_len);
        match text.strip_prefix(b"data:") {
            Some(data) => {
                let space = usize::from(data.first() == Some(&b' '));
                out.extend_from_slice(text.get(..5 + space).unwrap_or_default());
                out.extend_from_slice(&restore_whole(names, data.get(space..).unwrap_or_default()));
                out.extend_from_slice(eol);
            }
            None => out.extend_from_slice(line),
        }
        rest = after;
    }
}

/// The end of the first complete event in `b` (just past its blank line), if any.
fn event_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'\n' => {
                if b.get(i + 1) == Some(&b'\n') {
                    return Some(i + 2);
                }
                if b.get(i + 1) == Some(&b'\r') {
                    // "\n\r\n" or "\n\r" + something: a CR line end after a LF one.
                    return Some(if b.get(i + 2) == Some(&b'\n') { i + 3 } else { i + 2 });
                }
            }
            b'\r' => {
                let next = if b.get(i + 1) == Some(&b'\n') { i + 2 } else { i + 1 };
                match b.get(next) {
                    Some(b'\n') => return Some(next + 1),
                    Some(b'\r') => {
                        return Some(if b.get(next + 1) == Some(&b'\n') {
                            next + 2
                        } else {
                            next + 1
                        });
                    }
                    _ => {}
                }
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug)]
enum Mode {
    Json(Box<JsonRestorer>),
    /// Bytes of the event not complete yet.
    Sse(Vec<u8>),
}

/// Restores the client's model name in one response body.
#[derive(Debug)]
pub struct ModelRestorer {
    names: Names,
    mode: Mode,
}

impl ModelRestorer {
    /// `upstream`: the name the backend was sent; `client`: the name the client asked for.
    /// `sse`: the response is an event stream (else one JSON document).
    pub fn new(upstream: &str, client: &str, sse: bool) -> ModelRestorer {
        let enc = |s: &str| crate::json::quote(s).into_bytes();
        ModelRestorer {
            names: Names {
                from: enc(upstream),
                to: enc(client),
            },
            mode: if sse {
                Mode::Sse(Vec::new())
            } else {
                Mode::Json(Box::new(JsonRestorer::new()))
            },
        }
    }

    /// The bytes to send for this chunk (possibly fewer: some are held until they are known).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 16);
        match &mut self.mode {
            Mode::Json(r) => r.feed(&self.names, chunk, &mut out),
            Mode::Sse(held) => {
                held.extend_from_slice(chunk);
                let mut start = 0;
                while let Some(n) = event_end(held.get(start..).unwrap_or_default()) {
                    restore_event(&self.names, held.get(start..start + n).unwrap_or_default(), &mut out);
                    start += n;
                }
                held.drain(..start);
            }
        }
        out
    }

    /// The body ended: whatever is still held.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        match &mut self.mode {
            Mode::Json(r) => r.finish(&self.names, &mut out),
            Mode::Sse(held) => {
                // An unfinished event is passed on as it came.
                out.append(held);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut ModelRestorer, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&body.len())) {
            out.extend(r.feed(&body[prev..c]));
            prev = c;
        }
        out.extend(r.finish());
        out
    }

    const UP: &str = "meta-llama/Llama-3.1-8B-Instruct";

    #[test]
    fn json_top_level_model_only_at_every_split() {
        let body = br#"{"id":"x","object":"chat.completion","model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"message":{"content":"say \"model\":\"meta-llama/Llama-3.1-8B-Instruct\"","model":"meta-llama/Llama-3.1-8B-Instruct"}}],"usage":{"prompt_tokens":1}}"#;
        let want = String::from_utf8_lossy(body).replacen(
            r#""model":"meta-llama/Llama-3.1-8B-Instruct","choices""#,
            r#""model":"gpt-4o-mini","choices""#,
            1,
        );
        for cut in 0..=body.len() {
            let mut r = ModelRestorer::new(UP, "gpt-4o-mini", false);
            let out = run(&mut r, body, &[cut]);
            assert_eq!(String::from_utf8_lossy(&out), want, "cut {cut}");
        }
        // Model last (embeddings), other names, spacing, and bodies that are not JSON pass as they are.
        for (body, want) in [
            (
                r#"{"data":[{"embedding":[0.1]}], "model" : "meta-llama/Llama-3.1-8B-Instruct" ,"usage":{}}"#,
                r#"{"data":[{"embedding":[0.1]}], "model" : "gpt-4o-mini" ,"usage":{}}"#,
            ),
            (
                r#"{"model":"meta-llama/Llama-3.1-8B-Instruct-2024"}"#,
                r#"{"model":"meta-llama/Llama-3.1-8B-Instruct-2024"}"#,
            ),
            (
                r#"not json "model":"meta-llama/Llama-3.1-8B-Instruct""#,
                r#"not json "model":"meta-llama/Llama-3.1-8B-Instruct""#,
            ),
        ] {
            let mut r = ModelRestorer::new(UP, "gpt-4o-mini", false);
            assert_eq!(String::from_utf8_lossy(&run(&mut r, body.as_bytes(), &[7])), want);
        }
    }

    #[test]
    fn held_back_only_while_the_value_may_change() {
        let mut r = ModelRestorer::new(UP, "gpt-4o-mini", false);
        assert_eq!(
            r.feed(br#"{"id":"x","model":"meta-ll"#),
            br#"{"id":"x","model":"#.to_vec()
        );
        assert_eq!(
            r.feed(br#"ama/Llama-3.1-8B-Instruct","x":1"#),
            br#""gpt-4o-mini","x":1"#.to_vec()
        );
        assert_eq!(r.feed(b"}"), b"}".to_vec());
    }

    #[test]
    fn sse_events_at_every_split() {
        let stream = "data: {\"id\":\"c\",\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
: keep-alive\r\n\r\n\
event: x\r\ndata:{\"model\":\"meta-llama/Llama-3.1-8B-Instruct\"}\r\n\r\n\
data: [DONE]\n\n";
        let want = stream.replace("meta-llama/Llama-3.1-8B-Instruct", "gpt-4o-mini");
        for cut in 0..=stream.len() {
            let mut r = ModelRestorer::new(UP, "gpt-4o-mini", true);
            let out = run(&mut r, stream.as_bytes(), &[cut]);
            assert_eq!(String::from_utf8_lossy(&out), want, "cut {cut}");
        }
        // An unfinished last event passes unchanged.
        let mut r = ModelRestorer::new(UP, "gpt-4o-mini", true);
        let tail = b"data: {\"model\":\"meta-llama/Llama-3.1-8B-Instruct\"}";
        assert!(r.feed(tail).is_empty());
        assert_eq!(r.finish(), tail.to_vec());
    }
}
