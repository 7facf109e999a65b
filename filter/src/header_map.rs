//! The proxy-wasm encoding of a header map, decoded without trusting the host's lengths.

/// The media type of a `content-type` value, lowercase, without parameters (`""` when absent).
pub fn mime_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Headers as the host serialises them: a count, (name length, value length) pairs, then each
/// name and value followed by a NUL.
#[derive(Debug, Default)]
pub struct HeaderMap {
    pairs: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    pub fn from_pairs(pairs: Vec<(String, Vec<u8>)>) -> HeaderMap {
        HeaderMap { pairs }
    }

    pub fn parse(b: &[u8]) -> HeaderMap {
        let word =
            |at: usize| -> Option<usize> { Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize) };
        let mut pairs = Vec::new();
        let Some(n) = word(0) else { return HeaderMap { pairs } };
        let mut data = n.checked_mul(8).and_then(|x| x.checked_add(4)).unwrap_or(usize::MAX);
        for i in 0..n {
            // Every offset is checked: the lengths come from the host (and usize is 32 bits).
            let (Some(kl), Some(vl)) = (word(4 + i * 8), word(8 + i * 8)) else {
                break;
            };
            let key_end = data.checked_add(kl);
            let val_start = key_end.and_then(|e| e.checked_add(1));
            let val_end = val_start.and_then(|s| s.checked_add(vl));
            let (Some(key_end), Some(val_start), Some(val_end)) = (key_end, val_start, val_end) else {
                break;
            };
            let (Some(k), Some(v)) = (b.get(data..key_end), b.get(val_start..val_end)) else {
                break;
            };
            pairs.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
            data = val_end.saturating_add(1);
        }
        HeaderMap { pairs }
    }

    /// The first value of `name` (names are lowercase in Envoy).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn decodes_and_survives_truncation() {
        let b = encode(&[
            (":method", b"POST"),
            (":path", b"/v1/chat/completions"),
            ("x-bin", b"\xff\x00z"),
        ]);
        let m = HeaderMap::parse(&b);
        assert_eq!(m.get_str(":method").as_deref(), Some("POST"));
        assert_eq!(m.get(":path"), Some(&b"/v1/chat/completions"[..]));
        assert_eq!(m.get("x-bin"), Some(&b"\xff\x00z"[..]));
        assert_eq!(m.get("absent"), None);
        for cut in 0..b.len() {
            let _ = HeaderMap::parse(&b[..cut]);
        }
        // A count far larger than the data does not allocate or read past the end.
        let mut lying = b.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::parse(&lying).get(":method").is_none());
    }
}
