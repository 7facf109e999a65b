//! Incremental splitters of JSON streams that are not SSE: `feed(chunk)` as bytes pass,
//! `finish()` at the end, each item handed on whole (items larger than `MAX_ITEM_BYTES` are
//! dropped and counted; memory stays bounded).
//!
//! - `Lines`: newline-delimited JSON (`application/x-ndjson`, Ollama's streams).
//! - `Elements`: the elements of one top-level JSON array that arrives in pieces (Gemini's
//!   `streamGenerateContent` without `alt=sse`: `[{…},\r\n{…}]`).

use memchr::memchr;

pub const MAX_ITEM_BYTES: usize = 1 << 20;

/// An item being gathered, bounded.
#[derive(Debug, Default)]
struct Item {
    bytes: Vec<u8>,
    too_big: bool,
}

impl Item {
    fn push(&mut self, b: &[u8]) {
        if self.too_big || self.bytes.len() + b.len() > MAX_ITEM_BYTES {
            self.too_big = true;
            self.bytes.clear();
        } else {
            self.bytes.extend_from_slice(b);
        }
    }

    /// Hands the item on (when it is not blank) and starts the next one.
    fn end(&mut self, dropped: &mut u64, on_item: &mut dyn FnMut(&[u8])) {
        if self.too_big {
            *dropped += 1;
        } else if self.bytes.iter().any(|b| !b.is_ascii_whitespace()) {
            on_item(&self.bytes);
        }
        self.bytes.clear();
        self.too_big = false;
    }
}

#[derive(Debug, Default)]
pub struct Lines {
    item: Item,
    pub dropped: u64,
}

impl Lines {
    pub fn feed(&mut self, mut chunk: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while let Some(i) = memchr(b'\n', chunk) {
            let (line, rest) = chunk.split_at_checked(i).unwrap_or((chunk, &[]));
            self.item.push(line);
            self.item.end(&mut self.dropped, on_line);
            chunk = rest.get(1..).unwrap_or_default();
        }
        self.item.push(chunk);
    }

    /// The stream ended: a last line without its newline is still one.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        self.item.end(&mut self.dropped, on_line);
    }
}

#[derive(Debug, Default)]
pub struct Elements {
    item: Item,
    /// Open brackets, the array's own included.
    depth: u32,
    in_string: bool,
    escaped: bool,
    pub dropped: u64,
}

impl Elements {
    /// Hands on each element of the top-level array that is an object or an array (the only
    /// elements that can carry anything), with its brackets.
    pub fn feed(&mut self, chunk: &[u8], on_element: &mut dyn FnMut(&[u8])) {
        // Where the element being read began in this chunk.
        let mut from = (self.depth >= 2).then_some(0);
        for (i, &b) in chunk.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth = self.depth.saturating_add(1);
                    if self.depth == 2 {
                        from = Some(i);
                    }
                }
                b'}' | b']' => {
                    if self.depth == 2 {
                        if let Some(f) = from.take() {
                            self.item.push(chunk.get(f..=i).unwrap_or_default());
                        }
                        self.item.end(&mut self.dropped, on_element);
                    }
                    self.depth = self.depth.saturating_sub(1);
                }
                _ => {}
            }
        }
        if let Some(f) = from {
            self.item.push(chunk.get(f..).unwrap_or_default());
        }
    }

    /// The stream ended: an element still open is discarded.
    pub fn finish(&mut self) {
        self.item = Item::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = Lines::default();
        let mut out = Vec::new();
        let mut on = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            p.feed(c, &mut on);
        }
        p.finish(&mut on);
        out
    }

    fn elements(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = Elements::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        p.finish();
        out
    }

    #[test]
    fn lines_split_at_every_byte() {
        let s = b"{\"a\":1}\n\n  \r\n{\"b\":\"x\\ny\"}\r\n{\"done\":true}";
        let want = vec!["{\"a\":1}", "{\"b\":\"x\\ny\"}\r", "{\"done\":true}"];
        for cut in 0..=s.len() {
            assert_eq!(lines(&[&s[..cut], &s[cut..]]), want, "cut {cut}");
        }
    }

    #[test]
    fn elements_split_at_every_byte() {
        let s = b" [{\"a\":[1,{\"b\":\"]}\\\"\"}]}\r\n,\r\n7, \"s]\" ,[2],{\"usageMetadata\":{\"promptTokenCount\":3}}\r\n]";
        let want = vec![
            "{\"a\":[1,{\"b\":\"]}\\\"\"}]}",
            "[2]",
            "{\"usageMetadata\":{\"promptTokenCount\":3}}",
        ];
        for cut in 0..=s.len() {
            assert_eq!(elements(&[&s[..cut], &s[cut..]]), want, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(elements(&bytes), want);
        // Cut off: the open element is not handed on.
        assert_eq!(elements(&[&s[..s.len() - 10]]), want[..2].to_vec());
    }

    #[test]
    fn huge_items_are_dropped() {
        let mut s = b"[{\"x\":\"".to_vec();
        s.extend(std::iter::repeat_n(b'y', MAX_ITEM_BYTES));
        s.extend_from_slice(b"\"},{\"z\":1}]");
        let mut p = Elements::default();
        let mut out = Vec::new();
        for c in s.chunks(4096) {
            p.feed(c, &mut |l| out.push(l.to_vec()));
        }
        assert_eq!(out, vec![b"{\"z\":1}".to_vec()]);
        assert_eq!(p.dropped, 1);
        let mut l = Lines::default();
        let mut n = 0;
        for c in s.chunks(4096) {
            l.feed(c, &mut |_| n += 1);
        }
        l.finish(&mut |_| n += 1);
        assert_eq!((n, l.dropped), (0, 1));
    }
}
