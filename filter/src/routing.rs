//! Weighted, optionally sticky, choice of a destination. Randomness comes from the caller.

use crate::config::{Destination, Model};

/// Where the point on the weight line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A random number supplied by the caller.
    Random(u64),
    /// The hash of the sticky header's value: the same value always lands on the same destination.
    Sticky(u64),
}

impl Pick {
    /// `Sticky` when the sticky header was sent, else `Random(random)`.
    pub fn new(sticky_value: Option<&[u8]>, random: u64) -> Pick {
        match sticky_value {
            Some(v) => Pick::Sticky(hash(v)),
            None => Pick::Random(random),
        }
    }
}

/// Index of the chosen destination in `model.destinations`.
pub fn pick(model: &Model, how: Pick) -> usize {
    let total = model.total_weight.max(1);
    let point = match how {
        Pick::Random(r) => r % total,
        // Mixed with the model name so that one user is not pinned to "the first 90%" of every model.
        Pick::Sticky(h) => mix(h ^ hash(model.name.as_bytes())) % total,
    };
    index_at(&model.destinations, point)
}

fn index_at(destinations: &[Destination], point: u64) -> usize {
    let mut acc = 0u64;
    for (i, d) in destinations.iter().enumerate() {
        acc += u64::from(d.weight);
        if point < acc {
            return i;
        }
    }
    // Unreachable for a validated model (point < total); the last positive weight is a safe answer.
    destinations.iter().rposition(|d| d.weight > 0).unwrap_or(0)
}

/// FNV-1a, then a strong finalizer so that similar values spread evenly.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn model(weights: &[u32]) -> Model {
        let dests: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!(r#"{{"name":"d{i}","weight":{w}}}"#))
            .collect();
        let json = format!(r#"{{"models":[{{"name":"m","destinations":[{}]}}]}}"#, dests.join(","));
        Config::from_json(json.as_bytes()).unwrap().models.remove(0)
    }

    #[test]
    fn random_points_follow_weights_exactly() {
        let m = model(&[90, 0, 10]);
        let mut counts = [0u32; 3];
        for r in 0..100u64 {
            counts[pick(&m, Pick::Random(r))] += 1;
        }
        assert_eq!(counts, [90, 0, 10]);
    }

    #[test]
    fn sticky_is_stable_and_splits_by_weight() {
        let m = model(&[90, 10]);
        let mut counts = [0u32; 2];
        for user in 0..10_000 {
            let v = format!("user-{user}");
            let a = pick(&m, Pick::new(Some(v.as_bytes()), 1));
            let b = pick(&m, Pick::new(Some(v.as_bytes()), 99));
            assert_eq!(a, b, "{v} moved");
            counts[a] += 1;
        }
        // 10k draws at p=0.1: sd = 30; 5 sd either side.
        assert!((850..=1150).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn zero_weights_never_chosen() {
        let m = model(&[0, 5, 0]);
        for r in 0..50 {
            assert_eq!(pick(&m, Pick::Random(r * 7919)), 1);
            assert_eq!(pick(&m, Pick::Sticky(r)), 1);
        }
    }
}
