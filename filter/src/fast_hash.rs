//! A fast hash for the VM's own maps (metric ids by stat name, calls by token). Their keys come
//! from the proxy and the configuration, never from a client (an unknown model is counted as
//! `other`), so SipHash's protection against chosen keys buys nothing there; in Wasm SipHash was
//! about 5 % of the filter's time per request. The mixing step is FxHash's (rotate, xor, multiply;
//! the multiplier is `rustc-hash`'s 64-bit one), on a `u64` state, one multiply per 8 bytes. No
//! hash made here leaves the VM (the split's stable hash is `routing::hash`). (The context map in
//! `abi` keeps std's hash: see the note there.)
//!
//! Why not the `rustc-hash` crate (2.1, issue #34)? It would do for these maps (their hashes
//! never leave the VM, so another function changes no behaviour), and the module grew by only
//! 332 B after `wasm-opt -O3`, but it cost 2.6 % more instructions per request in V8
//! (`scripts/bench-v8.sh`: 91 765 against 89 413): on `wasm32` it takes its 32-bit paths (a
//! `usize` state, byte strings mixed with 32 × 32 → 64-bit products), though Wasm multiplies
//! 64-bit numbers natively, and every request looks up several stats by their long names. Kept
//! until a maintained crate is as fast here; the test below and the benchmark are the checks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0xf135_7aea_2e62_a9c5;

#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // The length first: the last word is padded with zeros.
        self.add(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for w in words.by_ref() {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            for (d, s) in b.iter_mut().zip(rest) {
                *d = *s;
            }
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with `FastHasher`.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(t: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(t)
    }

    #[test]
    fn distinguishes_keys_and_works_as_a_map() {
        // Strings differing only past the first word, or only in length, hash differently.
        assert_ne!(hash(&"model=.=a;.;x"), hash(&"model=.=a;.;y"));
        assert_ne!(hash(&"abc"), hash(&"abc\0"));
        assert_ne!(hash(&1u32), hash(&2u32));
        let mut m: FastMap<u32, u32> = FastMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
        for i in 0..10_000 {
            assert_eq!(m.remove(&i), Some(i * 2));
        }
        assert!(m.is_empty());
    }
}
