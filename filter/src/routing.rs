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
    pub const fn label(self) -> &'static str {
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
    cfg.models
        .iter()
        .take(model)
        .map(|m| m.destinations.len())
        .sum::<usize>()
        + destination
}

/// Failover's choice for a request for `cfg.models[model]`: the weighted choice while it admits
/// requests (stickiness kept); else the destination's fallbacks; else the model's other
/// destinations by their weights renormalised over those that admit requests; else the
/// model's fallbacks in order (another model's only when `cross_model`: the body names the
/// model, so it can be rewritten); else unavailable.
pub fn choose(cfg: &Config, health: &Table, now_ms: u64, model: usize, how: Pick, cross_model: bool) -> Choice {
    let mut until = u64::MAX;
    let (Some(p), Some(m)) = (cfg.failover.as_ref(), cfg.models.get(model)) else {
        return Choice::Unavailable { until_ms: until };
    };
    // Some(trial slot or None) when `models[mi].destinations[d]` takes the request.
    let mut admit = |mi: usize, d: usize| {
        let s = slot(cfg, mi, d);
        match health.get(s).admit(p, now_ms) {
            Admit::Yes => Some(None),
            Admit::Trial => Some(Some(s)),
            Admit::No(t) => {
                until = until.min(t);
                None
            }
        }
    };
    let first = pick(m, how);
    let me = Fallback {
        model,
        destination: None,
    };
    let chosen = Fallback {
        model,
        destination: Some(first),
    };
    let own = m.destinations.get(first).map_or(&[][..], |d| &d.fallbacks[..]);
    let order = std::iter::once((&chosen, Via::First))
        .chain(own.iter().map(|f| (f, Via::Fallback)))
        .chain(std::iter::once((&me, Via::Destination)))
        .chain(m.fallbacks.iter().map(|f| (f, Via::Fallback)));
    for (f, via) in order {
        let Some(fm) = cfg.models.get(f.model).filter(|_| cross_model || f.model == model) else {
            continue;
        };
        let found = match f.destination {
            Some(d) => admit(f.model, d).map(|t| (d, t)),
            None => {
                // Renormalised over the destinations that take requests; else a trial of one.
                let ok: Vec<Option<Option<usize>>> = (0..fm.destinations.len()).map(|d| admit(f.model, d)).collect();
                // `ok` has one entry per destination.
                let weight = |d: usize| fm.destinations.get(d).map_or(0, |x| u64::from(x.weight));
                let open = |d: usize| ok.get(d) == Some(&Some(None));
                let total: u64 = (0..ok.len()).filter(|&d| open(d)).map(weight).sum();
                let mut at = point(fm, how, total);
                (0..ok.len())
                    .find(|&d| {
                        let here = open(d) && total > 0 && at < weight(d);
                        if open(d) && !here {
                            at = at.saturating_sub(weight(d));
                        }
                        here
                    })
                    .map(|d| (d, None))
                    .or_else(|| {
                        ok.iter()
                            .enumerate()
                            .find_map(|(d, t)| Some((d, (*t)?)).filter(|_| weight(d) > 0))
                    })
            }
        };
        if let Some((destination, trial)) = found {
            return Choice::Go {
                model: f.model,
                destination,
                trial,
                via,
            };
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

#[cfg(test)]
mod choose_tests {
    use super::*;
    use crate::health::{Health, OPEN};

    fn cfg() -> Config {
        Config::from_json(
            br#"{"failover":{"probation":"1s"},"models":[
              {"name":"m","destinations":[{"name":"a","weight":60},{"name":"b","weight":30},{"name":"c","weight":10}],
               "fallbacks":[{"model":"f","destination":"f2"}]},
              {"name":"f","destinations":[{"name":"f1"},{"name":"f2"}]}]}"#,
        )
        .unwrap()
    }

    fn open(slots: &[usize]) -> Table {
        let mut t = Table(vec![Health::default(); 5]);
        for &s in slots {
            t.0[s] = Health {
                state: OPEN,
                level: 1,
                count: 0,
                at_ms: 5_000,
            };
        }
        t
    }

    fn go(c: Choice) -> (usize, usize, Via) {
        match c {
            Choice::Go {
                model,
                destination,
                via,
                ..
            } => (model, destination, via),
            Choice::Unavailable { .. } => panic!("unavailable"),
        }
    }

    #[test]
    fn weights_renormalise_over_the_healthy_and_stickiness_stays_unless_open() {
        let cfg = cfg();
        let t = open(&[0]);
        let mut counts = [0u32; 3];
        for r in 0..400u64 {
            let (m, d, via) = go(choose(&cfg, &t, 0, 0, Pick::Random(r), true));
            assert_eq!(m, 0);
            assert_eq!(via == Via::First, d != 0 && pick(&cfg.models[0], Pick::Random(r)) == d);
            counts[d] += 1;
        }
        // 30:10 of what is left: exactly, over a whole number of weight lines.
        assert_eq!(counts, [0, 300, 100]);
        let healthy = Table(vec![Health::default(); 5]);
        for user in 0..200u64 {
            let how = Pick::Sticky(user);
            let before = go(choose(&cfg, &healthy, 0, 0, how, true)).1;
            let after = go(choose(&cfg, &t, 0, 0, how, true)).1;
            assert!(
                before == 0 || after == before,
                "user {user} moved from a healthy {before}"
            );
        }
    }

    #[test]
    fn fallbacks_then_unavailable_with_the_nearest_probation() {
        let cfg = cfg();
        let all = open(&[0, 1, 2]);
        assert_eq!(
            go(choose(&cfg, &all, 0, 0, Pick::Random(7), true)),
            (1, 1, Via::Fallback)
        );
        // A model in the path cannot be rewritten: no fallback to another model.
        assert_eq!(
            choose(&cfg, &all, 0, 0, Pick::Random(7), false),
            Choice::Unavailable { until_ms: 5_000 }
        );
        let everything = open(&[0, 1, 2, 4]);
        assert_eq!(
            choose(&cfg, &everything, 0, 0, Pick::Random(7), true),
            Choice::Unavailable { until_ms: 5_000 }
        );
        // Probation over: a trial.
        match choose(&cfg, &everything, 5_000, 0, Pick::Random(0), true) {
            Choice::Go { trial, .. } => assert!(trial.is_some()),
            c => panic!("{c:?}"),
        }
    }
}
