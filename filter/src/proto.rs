//! The little protobuf the rate limit protocol needs: writing length-delimited and varint fields,
//! and reading a message's fields without trusting a byte of it (every length is checked; a
//! malformed message is `None`, never a panic).

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends field `field` as a varint (wire type 0).
pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

/// Appends field `field` as length-delimited bytes (wire type 2: strings, bytes, messages).
pub fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// One field of a message as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed32 or fixed64 (not used by the rate limit messages; skipped).
    Fixed,
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message, in order; `None` if any part of it is malformed.
pub fn fields(buf: &[u8]) -> Option<Vec<(u32, Value<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let field = u32::try_from(key >> 3).ok().filter(|f| *f > 0)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(buf, &mut at)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                at = at.checked_add(n).filter(|end| *end <= buf.len())?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|end| *end <= buf.len())?;
                let v = Value::Bytes(buf.get(at..end)?);
                at = end;
                v
            }
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let mut inner = Vec::new();
        put_bytes(&mut inner, 1, b"key");
        put_uint(&mut inner, 3, 300);
        let mut msg = Vec::new();
        put_bytes(&mut msg, 2, &inner);
        put_uint(&mut msg, 1, u64::MAX);
        let f = fields(&msg).unwrap();
        assert_eq!(f[1], (1, Value::Varint(u64::MAX)));
        let Value::Bytes(b) = f[0].1 else { panic!() };
        assert_eq!(
            fields(b).unwrap(),
            vec![(1, Value::Bytes(b"key")), (3, Value::Varint(300))]
        );
        // 300 is two bytes: 0xac 0x02.
        assert_eq!(&inner[inner.len() - 2..], &[0xac, 0x02]);
    }

    #[test]
    fn malformed_messages_are_none_at_every_cut() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 3, b"hello world");
        put_uint(&mut msg, 1, 1 << 40);
        let boundary = 2 + b"hello world".len();
        for cut in 1..msg.len() {
            // Every prefix that ends inside a field is refused, never read past.
            assert_eq!(fields(&msg[..cut]).is_some(), cut == boundary, "cut at {cut}");
        }
        assert_eq!(fields(&[0x0b]), None, "wire type 3 (groups) is not accepted");
        assert_eq!(
            fields(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            None,
            "length past the end"
        );
        assert_eq!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None,
            "an 11-byte varint"
        );
        assert_eq!(fields(&[0x00, 0x01]), None, "field number 0");
    }
}
