//! Destination health (`failover`): a breaker per destination, as data, with the clock passed in.
//!
//! `Closed` → `Open` after `consecutiveFailures` failures in a row (a failure status, an upstream
//! reset or connect failure, no first byte in time). An open destination gets no new requests for
//! its probation, which doubles each time it opens again without having recovered (up to
//! `maxProbation`). When the probation is over, new requests that land on it are trial requests
//! (`HalfOpen`), at most one per `probation` period; `trialRequests` successes close it, and a
//! failure opens it again for longer. (linkerd2-proxy's `consecutive_failures` failure accrual,
//! with its probation backoff.)
//!
//! The states of all destinations of a configuration are one table in proxy-wasm shared data, so
//! that every worker of a proxy sees the same state; the table is updated with compare-and-swap.

use crate::config::{Config, Failover};
use crate::policy::Store;

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

/// Bytes of one destination in the shared table.
pub const RECORD: usize = 12;

/// One destination's breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub state: u8,
    /// Times it opened without closing in between (the probation doubles with each).
    pub level: u8,
    /// Consecutive failures (closed), or successful trials (half-open).
    pub count: u16,
    /// Open: when the probation ends; half-open: when the last trial was let through (ms).
    pub at_ms: u64,
}

/// May a new request go to a destination now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as a trial request: the breaker records it (`Health::trial`).
    Trial,
    /// No: open (or a trial is already under way); the earliest time it may take one (ms).
    No(u64),
}

impl Health {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.state);
        out.push(self.level);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
    }

    /// One `RECORD` (`chunks_exact`); anything else reads as the default.
    fn decode(b: &[u8]) -> Health {
        let &[state, level, c0, c1, a0, a1, a2, a3, a4, a5, a6, a7] = b else {
            return Health::default();
        };
        Health {
            state: if state <= HALF_OPEN { state } else { CLOSED },
            level,
            count: u16::from_le_bytes([c0, c1]),
            at_ms: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        }
    }

    pub fn admit(&self, p: &Failover, now_ms: u64) -> Admit {
        let next = match self.state {
            CLOSED => return Admit::Yes,
            OPEN => self.at_ms,
            _ => self.at_ms.saturating_add(u64::from(p.probation_ms)),
        };
        if now_ms >= next {
            Admit::Trial
        } else {
            Admit::No(next)
        }
    }

    /// A trial request let through now.
    pub fn trial(self, now_ms: u64) -> Health {
        Health {
            state: HALF_OPEN,
            count: if self.state == HALF_OPEN { self.count } else { 0 },
            at_ms: now_ms,
            ..self
        }
    }

    /// The outcome of a request sent here. Outcomes of requests sent before it opened change
    /// nothing while it is open.
    pub fn observe(self, p: &Failover, ok: bool, now_ms: u64) -> Health {
        match (self.state, ok) {
            (OPEN, _) => self,
            (CLOSED, true) => Health::default(),
            (HALF_OPEN, true) if self.count.saturating_add(1) >= u16::from(p.trials) => Health::default(),
            (HALF_OPEN, true) => Health {
                count: self.count + 1,
                ..self
            },
            (CLOSED, false) if self.count.saturating_add(1) < p.threshold => Health {
                count: self.count + 1,
                ..self
            },
            _ => {
                let level = self.level.saturating_add(1);
                Health {
                    state: OPEN,
                    level,
                    count: 0,
                    at_ms: now_ms.saturating_add(probation_ms(p, level)),
                }
            }
        }
    }
}

/// The probation of the `level`th opening in a row: `probation`, doubled each time, at most
/// `maxProbation`.
pub fn probation_ms(p: &Failover, level: u8) -> u64 {
    let doubled = u64::from(p.probation_ms) << u32::from(level.saturating_sub(1)).min(20);
    doubled.min(u64::from(p.max_probation_ms))
}

/// The breakers of every destination of a configuration, in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table(pub Vec<Health>);

impl Table {
    /// The stored table, or all closed where it is absent or of another shape.
    pub fn decode(bytes: Option<&[u8]>, n: usize) -> Table {
        match bytes {
            Some(b) if b.len() == n * RECORD => Table(b.chunks_exact(RECORD).map(Health::decode).collect()),
            _ => Table(vec![Health::default(); n]),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * RECORD);
        for h in &self.0 {
            h.encode(&mut out);
        }
        out
    }

    pub fn get(&self, i: usize) -> Health {
        self.0.get(i).copied().unwrap_or_default()
    }
}

/// The shared-data key of a configuration's table: its destinations' names, hashed, so that a
/// configuration with other destinations never reads this one's table.
#[inline(never)]
pub fn key(cfg: &Config) -> String {
    let mut names = Vec::new();
    for m in &cfg.models {
        for d in &m.destinations {
            names.extend_from_slice(m.name.as_bytes());
            names.push(0);
            names.extend_from_slice(d.name.as_bytes());
            names.push(0);
        }
    }
    let mut h = crate::routing::hash(&names);
    let mut k = String::from("model_router.health.");
    while h > 0 {
        k.push(char::from(b'a' + (h & 15) as u8));
        h >>= 4;
    }
    k
}

/// What happened at a breaker.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A trial request let through at this time (ms).
    Trial(u64),
    /// A request's outcome: success or not, at this time (ms).
    Outcome(&'a Failover, bool, u64),
}

/// The table as stored now.
pub fn read<S: Store>(store: &S, key: &str, n: usize) -> Table {
    Table::decode(store.get(key).0.as_deref(), n)
}

/// Applies `f` to one breaker with compare-and-swap: (before, after) when it changed and was
/// written; `None` when nothing changed or contention never let the write through.
pub fn update<S: Store>(store: &mut S, key: &str, n: usize, slot: usize, event: Event) -> Option<(Health, Health)> {
    for _ in 0..8 {
        let (value, cas) = store.get(key);
        let cas = if value.is_none() { u32::MAX } else { cas };
        let mut t = Table::decode(value.as_deref(), n);
        let before = *t.0.get(slot)?;
        let after = match event {
            Event::Trial(now_ms) => before.trial(now_ms),
            Event::Outcome(p, ok, now_ms) => before.observe(p, ok, now_ms),
        };
        if after == before {
            return None;
        }
        *t.0.get_mut(slot)? = after;
        match store.set(key, &t.encode(), cas) {
            Ok(()) => return Some((before, after)),
            Err(true) => continue,
            Err(false) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Failover {
        Failover {
            threshold: 3,
            probation_ms: 1000,
            max_probation_ms: 8000,
            trials: 2,
            statuses: vec![500, 502, 503, 504],
            first_byte_timeout_ms: None,
        }
    }

    #[test]
    fn opens_after_the_threshold_then_trials_close_it() {
        let p = policy();
        let mut h = Health::default();
        for _ in 0..2 {
            h = h.observe(&p, false, 0);
            assert_eq!(h.admit(&p, 0), Admit::Yes);
        }
        h = h.observe(&p, false, 10);
        assert_eq!((h.state, h.at_ms), (OPEN, 1010));
        assert_eq!(h.admit(&p, 1009), Admit::No(1010));
        assert_eq!(h.admit(&p, 1010), Admit::Trial);
        h = h.trial(1010);
        assert_eq!(h.admit(&p, 1011), Admit::No(2010), "one trial per probation period");
        h = h.observe(&p, true, 1100);
        assert_eq!(h.state, HALF_OPEN);
        h = h.trial(2010).observe(&p, true, 2020);
        assert_eq!(h, Health::default());
    }

    #[test]
    fn a_failed_trial_doubles_the_probation_up_to_the_cap() {
        let p = policy();
        let mut h = Health::default();
        for _ in 0..3 {
            h = h.observe(&p, false, 0);
        }
        let mut now = 0;
        for expected in [1000, 2000, 4000, 8000, 8000, 8000] {
            assert_eq!(h.at_ms - now, expected);
            now = h.at_ms;
            h = h.trial(now).observe(&p, false, now);
        }
    }

    #[test]
    fn success_resets_the_count_and_stale_outcomes_do_not_move_an_open_breaker() {
        let p = policy();
        let h = Health::default()
            .observe(&p, false, 0)
            .observe(&p, false, 0)
            .observe(&p, true, 0);
        assert_eq!(h, Health::default());
        let open = Health::default()
            .observe(&p, false, 0)
            .observe(&p, false, 0)
            .observe(&p, false, 0);
        assert_eq!(open.observe(&p, true, 5), open);
        assert_eq!(open.observe(&p, false, 5), open);
    }

    #[test]
    fn the_table_round_trips_and_a_foreign_shape_is_all_closed() {
        let t = Table(vec![
            Health {
                state: HALF_OPEN,
                level: 3,
                count: 1,
                at_ms: u64::MAX - 1,
            },
            Health::default(),
        ]);
        let b = t.encode();
        assert_eq!(b.len(), 2 * RECORD);
        assert_eq!(Table::decode(Some(&b), 2), t);
        assert_eq!(Table::decode(Some(&b), 3), Table(vec![Health::default(); 3]));
        assert_eq!(Table::decode(None, 1), Table(vec![Health::default()]));
    }

    #[cfg(not(target_family = "wasm"))]
    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Ev {
            Wait(u64),
            Outcome(bool),
            Request,
        }

        fn ev() -> impl Strategy<Value = Ev> {
            prop_oneof![
                (0u64..20_000).prop_map(Ev::Wait),
                any::<bool>().prop_map(Ev::Outcome),
                Just(Ev::Request),
            ]
        }

        proptest! {
            /// Against a model of the rules: the breaker opens exactly at the threshold of
            /// consecutive failures, admits nothing while open, trials at most one per
            /// probation period, closes after `trials` successes, and its probation stays within
            /// [probation, maxProbation] and grows with each reopening.
            #[test]
            fn follows_the_rules(events in proptest::collection::vec(ev(), 0..200),
                                 threshold in 1u16..6, trials in 1u8..4) {
                let p = Failover { threshold, trials, ..policy() };
                let mut h = Health::default();
                let mut now = 1_000u64;
                let mut run = 0u16;
                for e in events {
                    let before = h;
                    match e {
                        Ev::Wait(ms) => now += ms,
                        Ev::Request => match h.admit(&p, now) {
                            Admit::Yes => prop_assert_eq!(h.state, CLOSED),
                            Admit::No(t) => {
                                prop_assert!(t > now);
                                prop_assert_ne!(h.state, CLOSED);
                            }
                            Admit::Trial => {
                                prop_assert_ne!(h.state, CLOSED);
                                h = h.trial(now);
                                prop_assert_eq!(h.admit(&p, now), Admit::No(now + u64::from(p.probation_ms)));
                            }
                        },
                        Ev::Outcome(ok) => {
                            h = h.observe(&p, ok, now);
                            match (before.state, ok) {
                                (CLOSED, true) => { run = 0; prop_assert_eq!(h, Health::default()); }
                                (CLOSED, false) => {
                                    run += 1;
                                    if run >= threshold {
                                        prop_assert_eq!(h.state, OPEN);
                                        prop_assert_eq!(h.at_ms - now, u64::from(p.probation_ms));
                                        run = 0;
                                    } else {
                                        prop_assert_eq!(h.state, CLOSED);
                                    }
                                }
                                (OPEN, _) => prop_assert_eq!(h, before),
                                (_, false) => {
                                    prop_assert_eq!(h.state, OPEN);
                                    let probation = h.at_ms - now;
                                    prop_assert!(probation >= u64::from(p.probation_ms));
                                    prop_assert!(probation <= u64::from(p.max_probation_ms));
                                    prop_assert!(probation >= probation_ms(&p, before.level));
                                }
                                (_, true) => {
                                    let closes = before.count + 1 >= u16::from(trials);
                                    prop_assert_eq!(h.state, if closes { CLOSED } else { HALF_OPEN });
                                }
                            }
                        }
                    }
                    let mut b = Vec::new();
                    h.encode(&mut b);
                    prop_assert_eq!(Table::decode(Some(&b), 1).get(0), h);
                }
            }
        }
    }
}
