//! Weighted, optionally sticky, choice of a destination. Randomness comes from the caller.

use crate::config::{Config, Destination, Model};
use crate::failover::Fallback;
use crate::health::{Admit, Table};

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
    index_at(&model.destinations, point(model, how, model.total_weight))
}

/// The point on a weight line of `total` for `model`.
fn point(model: &Model, how: Pick, total: u64) -> u64 {
    let total = total.max(1);
    match how {
        Pick::Random(r) => r % total,
        // Mixed with the model name so that one user is not pinned to "the first 90%" of every model.
        Pick::Sticky(h) => mix(h ^ hash(model.name.as_bytes())) % total,
    }
}

/// How a request got its destination when failover is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The weighted (or sticky) choice, as without failover.
    First,
    /// Another destination of the model: the first choice was open.
    Destination,
    /// A fallback (of the destination or the model).
    Fallback,
}

impl Via {
    /// The `reason` label of `model_router_failovers_total`.
    pub fn label(self) -> &'static str {
        match self {
            Via::First => "none",
            Via::Destination => "destination",
            Via::Fallback => "fallback",
        }
    }
}

/// Where a request goes when failover is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Go {
        model: usize,
        destination: usize,
        /// The slot (`slot`) of a breaker that lets this request through as a trial.
        trial: Option<usize>,
        via: Via,
    },
    /// Nothing can take it: every destination and fallback is open. When the first may take
    /// a request again (ms).
    Unavailable { until_ms: u64 },
}

/// The slot of `config.models[model].destinations[destination]` in the health table.
pub fn slot(cfg: &Config, model: usize, destination: usize) -> usize {
    cfg.models.iter().take(model).map(|m| m.destinations.len()).sum::<usize>() + destination
}

/// Failover's choice for a request for `cfg.models[model]`: the weighted choice while it admits
/// requests (stickiness kept); else the destination's fallbacks; else the model's other
/// destinations by their weights renormalised over those that admit requests; else the
/// model's fallbacks in order (another model's only when `cross_model`: the body names the
/// model, so it can be rewritten); else unavailable.
pub fn choose(cfg: &Config, health: &Table, now_ms: u64, model: usize, how: Pick, cross_model: bool) -> Choice {
    let Some(p) = cfg.failover.as_ref() else {
        return Choice::Unavailable { until_ms: 0 };
    };
    let Some(m) = cfg.models.get(model) else {
        return Choice::Unavailable { until_ms: 0 };
    };
    let mut until = u64::MAX;
    let mut admit = |mi: usize, d: usize| match health.get(slot(cfg, mi, d)).admit(p, now_ms) {
        Admit::Yes => Some(None),
        Admit::Trial => Some(Some(slot(cfg, mi, d))),
        Admit::No(t) => {
            until = until.min(t);
            None
        }
    };
    let go = |mi, d, trial, via| Choice::Go {
        model: mi,
        destination: d,
        trial,
        via,
    };
    let first = pick(m, how);
    if let Some(trial) = admit(model, first) {
        return go(model, first, trial, Via::First);
    }
    let own = m.destinations.get(first).map_or(&[][..], |d| &d.fallbacks[..]);
    let fallbacks = own.iter().map(|f| (f, Via::Fallback));
    let me = Fallback {
        model,
        destination: None,
    };
    let rest = std::iter::once((&me, Via::Destination));
    for (f, via) in fallbacks.chain(rest).chain(m.fallbacks.iter().map(|f| (f, Via::Fallback))) {
        if f.model != model && !cross_model {
            continue;
        }
        let Some(fm) = cfg.models.get(f.model) else { continue };
        if let Some(d) = f.destination {
            if let Some(trial) = admit(f.model, d) {
                return go(f.model, d, trial, via);
            }
            continue;
        }
        // Renormalised over the destinations that admit requests; else a trial of one.
        let mut healthy = vec![false; fm.destinations.len()];
        let mut total = 0;
        let mut trial = None;
        for (d, dest) in fm.destinations.iter().enumerate() {
            match admit(f.model, d) {
                Some(None) if dest.weight > 0 => {
                    healthy[d] = true;
                    total += u64::from(dest.weight);
                }
                Some(Some(t)) if trial.is_none() && dest.weight > 0 => trial = Some((d, t)),
                _ => {}
            }
        }
        if total > 0 {
            let mut at = point(fm, how, total);
            for (d, dest) in fm.destinations.iter().enumerate().filter(|(d, _)| healthy[*d]) {
                if at < u64::from(dest.weight) {
                    return go(f.model, d, None, via);
                }
                at -= u64::from(dest.weight);
            }
        }
        if let Some((d, t)) = trial {
            return go(f.model, d, Some(t), via);
        }
    }
    Choice::Unavailable { until_ms: until }
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
