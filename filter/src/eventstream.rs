//! An incremental parser of AWS event-stream framing (`application/vnd.amazon.eventstream`, Amazon
//! Bedrock's `converse-stream` and `invoke-with-response-stream` answers): `feed(chunk)` as bytes
//! pass, `finish()` at the end. Each message is a 12-byte prelude (total length, headers length,
//! the prelude's CRC32), headers, a payload and the whole message's CRC32, all big-endian. Both
//! CRCs are checked: a message that fails them, or a length that cannot be, stops the parse for
//! good (nothing after a broken frame can be trusted to be read right). Only payloads are handed
//! on (the usage is in the JSON payload of the `metadata` event); memory stays bounded.

/// Payloads larger than this are skipped unread (their CRC is still checked).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

const PRELUDE: usize = 12;
/// Prelude and message CRC: the smallest message.
const MIN_MESSAGE: u32 = 16;

/// CRC-32 (IEEE 802.3, as zlib and AWS compute it) by nibbles: a 64-byte table.
const CRC_NIBBLES: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 4 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        // Evaluated at compile time: out of bounds fails the build (and i < 16 by the loop).
        #[allow(clippy::indexing_slicing)]
        {
            t[i] = c;
        }
        i += 1;
    }
    t
};

/// Continues CRC-32 `crc` (0 to start) over `bytes`.
// Its indexes are `c & 15`, under the table's length 16.
#[allow(clippy::indexing_slicing)]
#[inline(never)]
pub fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c ^= u32::from(b);
        c = CRC_NIBBLES[(c & 15) as usize] ^ (c >> 4);
        c = CRC_NIBBLES[(c & 15) as usize] ^ (c >> 4);
    }
    !c
}

#[derive(Debug, Default)]
pub struct EventStreamParser {
    prelude: [u8; PRELUDE],
    /// Bytes of the current message seen.
    at: u32,
    total: u32,
    /// Where the payload begins in the message.
    payload_at: u32,
    /// CRC-32 of the current message's bytes so far (its last four excepted).
    crc: u32,
    tail: [u8; 4],
    payload: Vec<u8>,
    /// A CRC failed or a length was impossible: nothing more is read.
    pub broken: bool,
    /// Messages whose payload was too large to hand on.
    pub dropped: u64,
}

/// Copies what fits of `src` into `dst` from `at` on; returns how many bytes.
fn fill(dst: &mut [u8], at: usize, src: &[u8]) -> usize {
    let dst = dst.get_mut(at..).unwrap_or_default();
    let n = dst.len().min(src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
    n
}

impl EventStreamParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk`, calling `on_payload` with the payload of every complete, intact message.
    pub fn feed(&mut self, mut chunk: &[u8], on_payload: &mut dyn FnMut(&[u8])) {
        while !chunk.is_empty() && !self.broken {
            let at = self.at as usize;
            if at < PRELUDE {
                let n = fill(&mut self.prelude, at, chunk);
                self.at += n as u32;
                chunk = chunk.get(n..).unwrap_or_default();
                if self.at as usize == PRELUDE {
                    self.start_message();
                }
                continue;
            }
            let crc_at = self.total - 4;
            if self.at < crc_at {
                let n = ((crc_at - self.at) as usize).min(chunk.len());
                let (bytes, rest) = chunk.split_at_checked(n).unwrap_or((chunk, &[]));
                self.crc = crc32(self.crc, bytes);
                if self.total - MIN_MESSAGE <= MAX_PAYLOAD_BYTES as u32 {
                    let skip = self.payload_at.saturating_sub(self.at) as usize;
                    self.payload.extend_from_slice(bytes.get(skip..).unwrap_or_default());
                }
                self.at += bytes.len() as u32;
                chunk = rest;
                continue;
            }
            // The tail's four bytes end the message: what fits of them is what is left of it.
            let n = fill(&mut self.tail, (self.at - crc_at) as usize, chunk);
            self.at += n as u32;
            chunk = chunk.get(n..).unwrap_or_default();
            if self.at == self.total {
                if u32::from_be_bytes(self.tail) != self.crc {
                    self.broken = true;
                    return;
                }
                if self.total - MIN_MESSAGE > MAX_PAYLOAD_BYTES as u32 {
                    self.dropped += 1;
                } else {
                    on_payload(&self.payload);
                }
                self.payload.clear();
                self.at = 0;
            }
        }
    }

    /// The prelude is whole: check it and set up the message.
    fn start_message(&mut self) {
        let [t0, t1, t2, t3, h0, h1, h2, h3, c0, c1, c2, c3] = self.prelude;
        let (total, headers) = (
            u32::from_be_bytes([t0, t1, t2, t3]),
            u32::from_be_bytes([h0, h1, h2, h3]),
        );
        let lengths = [t0, t1, t2, t3, h0, h1, h2, h3];
        if crc32(0, &lengths) != u32::from_be_bytes([c0, c1, c2, c3])
            || total < MIN_MESSAGE
            || headers > total - MIN_MESSAGE
        {
            self.broken = true;
            return;
        }
        self.total = total;
        self.payload_at = PRELUDE as u32 + headers;
        self.crc = crc32(0, &self.prelude);
    }

    /// The stream ended; true when it ended between messages, intact.
    pub fn finish(&mut self) -> bool {
        let clean = !self.broken && self.at == 0;
        self.payload = Vec::new();
        self.at = 0;
        clean
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// One message with the given string headers and payload, CRCs right.
    pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (k, v) in headers {
            h.push(k.len() as u8);
            h.extend_from_slice(k.as_bytes());
            h.push(7); // string
            h.extend_from_slice(&(v.len() as u16).to_be_bytes());
            h.extend_from_slice(v.as_bytes());
        }
        let total = (16 + h.len() + payload.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&total.to_be_bytes());
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32(0, &m);
        m.extend_from_slice(&c.to_be_bytes());
        m.extend_from_slice(&h);
        m.extend_from_slice(payload);
        let c = crc32(0, &m);
        m.extend_from_slice(&c.to_be_bytes());
        m
    }

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        message(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    fn parse(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, bool, bool) {
        let mut p = EventStreamParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |b| out.push(b.to_vec()));
        }
        let clean = p.finish();
        (out, clean, p.broken)
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
        assert_eq!(crc32(0, b""), 0);
    }

    #[test]
    fn split_at_every_byte() {
        let mut stream = event("messageStart", r#"{"role":"assistant"}"#);
        stream.extend(message(&[], b""));
        stream.extend(event("metadata", r#"{"usage":{"inputTokens":5,"outputTokens":7}}"#));
        let want: Vec<Vec<u8>> = vec![
            br#"{"role":"assistant"}"#.to_vec(),
            Vec::new(),
            br#"{"usage":{"inputTokens":5,"outputTokens":7}}"#.to_vec(),
        ];
        for cut in 0..=stream.len() {
            assert_eq!(
                parse(&[&stream[..cut], &stream[cut..]]),
                (want.clone(), true, false),
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse(&bytes), (want.clone(), true, false));
        // Cut inside a message: what came before is read, the stream did not end cleanly.
        assert_eq!(
            parse(&[&stream[..stream.len() - 1]]),
            (want[..2].to_vec(), false, false)
        );
    }

    #[test]
    fn a_bad_frame_stops_the_parse() {
        let good = event("contentBlockDelta", r#"{"delta":{"text":"hi"}}"#);
        let usage = event("metadata", r#"{"usage":{"inputTokens":5,"outputTokens":7}}"#);
        // Every single flipped bit, anywhere in the first message, stops everything after it.
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            bad.extend_from_slice(&usage);
            let (out, clean, broken) = parse(&[&bad]);
            assert!(out.is_empty(), "bit {i}: {out:?}");
            assert!(!clean && broken, "bit {i}");
        }
        // A header length beyond the message.
        let mut m = Vec::new();
        m.extend_from_slice(&16u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        let c = crc32(0, &m);
        m.extend_from_slice(&c.to_be_bytes());
        assert!(parse(&[&m]).2);
    }

    #[test]
    fn large_payloads_are_skipped_but_checked() {
        let big = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
        let mut stream = message(&[], &big);
        stream.extend(event("metadata", "{}"));
        let mut p = EventStreamParser::new();
        let mut out = Vec::new();
        for c in stream.chunks(4096) {
            p.feed(c, &mut |b| out.push(b.to_vec()));
        }
        assert_eq!(out, vec![b"{}".to_vec()]);
        assert_eq!(p.dropped, 1);
        assert!(p.finish());
    }
}
