//! An incremental Server-Sent Events parser (WHATWG rules): `feed(chunk)` as bytes pass, `finish()`
//! at the end. The stream itself is never held back or changed; the parser keeps only the current
//! line and the current event's data, both bounded.

use memchr::memchr2;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; empty means the default type, `message`.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Events whose data is larger than this are dropped whole (the bytes still pass through); usage
/// events are small, so nothing of value is lost and memory stays bounded.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    line_too_long: bool,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    event_too_big: bool,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may come).
    at_start: bool,
    started: bool,
    /// Events dropped for size.
    pub dropped: u64,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Parses `chunk`, calling `on_event` for every complete event.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(Event)) {
        if !self.started {
            self.started = true;
            self.at_start = true;
        }
        if self.at_start {
            // One U+FEFF only at the start of the stream, possibly split across chunks.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            // The line holds the BOM's bytes seen so far (fewer than three) while at the start.
            let rest = BOM.get(self.line.len()..).unwrap_or_default();
            let take = chunk.len().min(rest.len());
            match chunk.split_at_checked(take) {
                Some((got, tail)) if rest.starts_with(got) => {
                    if got.len() == rest.len() {
                        self.line.clear();
                        self.at_start = false;
                    } else {
                        self.line.extend_from_slice(got);
                    }
                    chunk = tail;
                }
                _ => self.at_start = false,
            }
        }
        if self.after_cr {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        self.after_cr = false;
        while !chunk.is_empty() {
            match memchr2(b'\n', b'\r', chunk) {
                None => {
                    self.push_line_bytes(chunk);
                    return;
                }
                // i < chunk.len(): memchr2 found a byte there.
                #[allow(clippy::indexing_slicing)]
                Some(i) => {
                    self.push_line_bytes(&chunk[..i]);
                    let was_cr = chunk[i] == b'\r';
                    self.end_line(on_event);
                    chunk = &chunk[i + 1..];
                    if was_cr {
                        if chunk.is_empty() {
                            self.after_cr = true;
                        } else if let Some(rest) = chunk.strip_prefix(b"\n") {
                            chunk = rest;
                        }
                    }
                }
            }
        }
    }

    /// The stream ended. An event still open is discarded, as the spec says.
    pub fn finish(&mut self) {
        self.line.clear();
        self.reset_event();
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.line_too_long {
            return;
        }
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            self.line_too_long = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(Event)) {
        self.at_start = false;
        if self.line_too_long {
            self.line_too_long = false;
            self.event_too_big = true;
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(on_event);
        } else if line.first() != Some(&b':') {
            let mut parts = line.splitn(2, |&b| b == b':');
            let field = parts.next().unwrap_or_default();
            let value = parts.next().map_or(&b""[..], |v| v.strip_prefix(b" ").unwrap_or(v));
            match field {
                b"data" => {
                    if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                        self.event_too_big = true;
                    } else {
                        self.data.extend_from_slice(value);
                        self.data.push(b'\n');
                    }
                    self.has_data = true;
                }
                b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
                // id and retry do not matter for accounting; other fields are ignored.
                _ => {}
            }
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event)) {
        if self.event_too_big {
            self.dropped += 1;
        } else if self.has_data {
            self.data.pop(); // the final LF
            on_event(Event {
                event: std::mem::take(&mut self.event),
                data: String::from_utf8_lossy(&self.data).into_owned(),
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.event_too_big = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e| out.push(e));
        }
        p.finish();
        out
    }

    fn ev(event: &str, data: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
        }
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: comment\r\nretry: 100\nid: 7\r\ndata: {\"a\":1}\r\n\r\nevent: message_delta\rdata:x\rdata:  two\r\rdata\n\nevent: lone\n\ndata: [DONE]\n\ndata: open-at-end";

    fn expected() -> Vec<Event> {
        vec![
            ev("", "{\"a\":1}"),
            ev("message_delta", "x\n two"),
            ev("", ""),
            ev("", "[DONE]"),
        ]
    }

    #[test]
    fn whatwg_rules() {
        assert_eq!(parse_chunks(&[STREAM]), expected());
    }

    #[test]
    fn split_at_every_byte() {
        for cut in 0..=STREAM.len() {
            assert_eq!(parse_chunks(&[&STREAM[..cut], &STREAM[cut..]]), expected(), "cut {cut}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), expected());
    }

    #[test]
    fn bom_only_at_start() {
        // Later on, a BOM is just part of the field name, so that line is ignored.
        let evs = parse_chunks(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(evs, vec![ev("", "a")]);
        assert_eq!(parse_chunks(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]), vec![ev("", "a")]);
        // A lone 0xEF is no BOM: it stays in the line, whose field name is then not `data`.
        assert_eq!(parse_chunks(&[b"\xEF", b"data: a\n\n"]).len(), 0);
    }

    #[test]
    fn huge_events_are_dropped_but_parsing_goes_on() {
        let mut big = b"data: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_EVENT_BYTES + 10));
        big.extend_from_slice(b"\n\ndata: after\n\n");
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in big.chunks(4096) {
            p.feed(c, &mut |e| out.push(e));
        }
        assert_eq!(out, vec![ev("", "after")]);
        assert_eq!(p.dropped, 1);
    }
}
