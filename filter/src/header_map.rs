//! The proxy-wasm encoding of a header map, decoded without trusting the host's lengths.

use std::borrow::Cow;

/// The media type of a `content-type` value, lowercase, without parameters (`""` when absent).
pub fn mime_type(content_type: Option<&str>) -> Cow<'_, str> {
    let t = content_type.unwrap_or("").split(';').next().unwrap_or("").trim();
    if t.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(t.to_ascii_lowercase())
    } else {
        Cow::Borrowed(t)
    }
}

/// The proxy-wasm encoding of these pairs (for the host: local replies, gRPC metadata).
#[cfg(any(test, feature = "decide", all(target_arch = "wasm32", target_os = "wasi")))]
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size: usize = pairs
        .iter()
        .map(|(k, v)| 10 + k.as_ref().len() + v.as_ref().len())
        .sum();
    let mut raw = Vec::with_capacity(4 + size);
    raw.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        raw.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        raw.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        raw.extend_from_slice(k.as_ref());
        raw.push(0);
        raw.extend_from_slice(v.as_ref());
        raw.push(0);
    }
    raw
}

/// Headers as the host serialises them: a count, (name length, value length) pairs, then each
/// name and value followed by a NUL. The bytes are kept as the host gave them, with an index of
/// where each name and value lies: reading a map allocates twice, however many headers it has.
#[derive(Debug, Default)]
pub struct HeaderMap {
    raw: Vec<u8>,
    /// (name start, name end, value start, value end) in `raw`, in the host's order.
    index: Vec<[usize; 4]>,
}

impl HeaderMap {
    /// The map of these pairs (encoded as the host would).
    #[cfg(any(test, feature = "decide"))]
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderMap {
        HeaderMap::parse(encode(pairs))
    }

    /// Decodes the host's bytes (taken, not copied). Lengths are not trusted: decoding stops at
    /// the first pair that does not fit.
    pub fn parse(raw: Vec<u8>) -> HeaderMap {
        let b = raw.as_slice();
        let word =
            |at: usize| -> Option<usize> { Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize) };
        let Some(n) = word(0) else {
            return HeaderMap::default();
        };
        // Never more entries than the bytes could hold (a lying count allocates nothing).
        let mut index = Vec::with_capacity(n.min(b.len() / 10));
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
            if val_end > b.len() {
                break;
            }
            index.push([data, key_end, val_start, val_end]);
            data = val_end.saturating_add(1);
        }
        HeaderMap { raw, index }
    }

    /// The first value of `name` (names are lowercase in Envoy).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.index
            .iter()
            .find(|[ks, ke, _, _]| self.raw.get(*ks..*ke) == Some(name.as_bytes()))
            .and_then(|[_, _, vs, ve]| self.raw.get(*vs..*ve))
    }

    /// The first value of `name` as text (bytes that are not UTF-8 replaced).
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(String::from_utf8_lossy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's encoding written out independently, to check `encode` against.
    fn host_encoding(pairs: &[(&str, &[u8])]) -> Vec<u8> {
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
    fn media_types() {
        assert_eq!(mime_type(Some("Application/JSON; charset=utf-8")), "application/json");
        assert_eq!(mime_type(Some(" text/event-stream ")), "text/event-stream");
        assert_eq!(mime_type(None), "");
    }

    #[test]
    fn decodes_and_survives_truncation() {
        let pairs: [(&str, &[u8]); 3] = [
            (":method", b"POST"),
            (":path", b"/v1/chat/completions"),
            ("x-bin", b"\xff\x00z"),
        ];
        let b = host_encoding(&pairs);
        assert_eq!(HeaderMap::from_pairs(&pairs).raw, b, "encoded as the host does");
        let m = HeaderMap::parse(b.clone());
        assert_eq!(m.get_str(":method").as_deref(), Some("POST"));
        assert_eq!(m.get(":path"), Some(&b"/v1/chat/completions"[..]));
        assert_eq!(m.get("x-bin"), Some(&b"\xff\x00z"[..]));
        assert_eq!(m.get("absent"), None);
        for cut in 0..b.len() {
            // A cut map keeps the pairs that are whole, and nothing else.
            let m = HeaderMap::parse(b[..cut].to_vec());
            let whole = pairs.iter().filter(|(k, _)| m.get(k).is_some()).count();
            assert_eq!(whole, m.index.len());
            assert!(m.get_str(":path").is_none_or(|p| p == "/v1/chat/completions"));
        }
        // A count far larger than the data does not allocate or read past the end.
        let mut lying = b.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let m = HeaderMap::parse(lying);
        assert!(m.get(":method").is_none());
        assert!(m.index.capacity() <= b.len());
    }
}
