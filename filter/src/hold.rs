//! The hold safety net, as a consecutive-failures breaker (in the manner of linkerd's
//! `consecutive_failures` with probation). Host-free: time is passed in, decisions come back as
//! data.
//!
//! Body routing holds the request headers until the body has been read. A host that cannot hold
//! (Envoy without `allow_on_headers_stop_iteration`) never delivers the body of a held request,
//! which would hang it; a client that stalls looks the same for a while. So:
//!
//! - held requests are watched; one still waiting after `HOLD_TIMEOUT_NS` is let go (released);
//! - only after `FAILURES_TO_OPEN` *consecutive* released requests does the VM stop holding
//!   (header-only routing) — one slow client does not switch body routing off;
//! - header-only mode lasts `FIRST_BACKOFF_NS`, then the next requests are held again as a probe;
//!   a probe that fails doubles the wait (up to `MAX_BACKOFF_NS`);
//! - the first body delivered while headers are held proves the host can hold: from then on
//!   nothing is watched (no timer), and a slow client just waits, as Envoy's own timeouts decide.

/// How long held headers wait for the body before the request is let go.
pub const HOLD_TIMEOUT_NS: u64 = 1_000_000_000;
/// How often the root context looks at waiting requests while any are watched.
pub const TICK_MS: u32 = 100;
/// Consecutive released requests that switch the VM to header-only routing.
pub const FAILURES_TO_OPEN: u32 = 3;
pub const FIRST_BACKOFF_NS: u64 = 30_000_000_000;
pub const MAX_BACKOFF_NS: u64 = 600_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not known yet whether the host holds; `failures` consecutive held requests were released.
    Unknown { failures: u32 },
    /// A held request's body arrived: this host holds headers.
    Proven,
    /// Header-only routing until `until_ns`.
    Off { until_ns: u64, backoff_ns: u64 },
    /// Holding again after `Off`; one more release switches it off for twice as long.
    Probing { backoff_ns: u64 },
}

/// May this request's headers be held?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Hold,
    /// Yes, as the first request of a probe after header-only routing.
    Probe,
    No,
}

/// What a tick decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Held requests to let go (context ids).
    pub release: Vec<u32>,
    /// The VM has just switched to header-only routing.
    pub switched_off: bool,
    /// Nothing is watched any more: the timer can stop.
    pub stop: bool,
}

#[derive(Debug)]
pub struct HoldNet {
    state: State,
    /// Held requests and since when.
    waiting: Vec<(u32, u64)>,
    /// Requests let go whose stream has not heard of it yet.
    released: Vec<u32>,
}

impl Default for HoldNet {
    fn default() -> Self {
        HoldNet {
            state: State::Unknown { failures: 0 },
            waiting: Vec::new(),
            released: Vec::new(),
        }
    }
}

impl HoldNet {
    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    pub fn permit(&mut self, now_ns: u64) -> Permit {
        match self.state {
            State::Unknown { .. } | State::Proven | State::Probing { .. } => Permit::Hold,
            State::Off { until_ns, backoff_ns } if now_ns >= until_ns => {
                self.state = State::Probing { backoff_ns };
                Permit::Probe
            }
            State::Off { .. } => Permit::No,
        }
    }

    /// A request's headers are now held. True when it must be watched (the timer must run).
    pub fn held(&mut self, id: u32, now_ns: u64) -> bool {
        if self.state == State::Proven {
            return false;
        }
        self.waiting.push((id, now_ns));
        true
    }

    /// The body of a held request arrived: the host holds headers.
    pub fn delivered(&mut self, id: u32) {
        self.state = State::Proven;
        self.waiting.clear();
        self.released.retain(|&r| r != id);
    }

    /// The stream ended (or stopped being held): stop watching it.
    pub fn forget(&mut self, id: u32) {
        self.waiting.retain(|&(w, _)| w != id);
    }

    /// True (once) if the net let this request go.
    pub fn take_released(&mut self, id: u32) -> bool {
        match self.released.iter().position(|&r| r == id) {
            Some(i) => {
                self.released.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn tick(&mut self, now_ns: u64) -> Tick {
        if self.state == State::Proven {
            self.waiting.clear();
            return Tick {
                stop: true,
                ..Tick::default()
            };
        }
        let overdue = |since: u64| now_ns.saturating_sub(since) > HOLD_TIMEOUT_NS;
        let release: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, since)| overdue(*since))
            .map(|(id, _)| *id)
            .collect();
        self.waiting.retain(|(_, since)| !overdue(*since));
        let mut switched_off = false;
        if !release.is_empty() {
            let n = u32::try_from(release.len()).unwrap_or(u32::MAX);
            self.state = match self.state {
                State::Unknown { failures } if failures.saturating_add(n) < FAILURES_TO_OPEN => {
                    State::Unknown { failures: failures + n }
                }
                State::Unknown { .. } => {
                    switched_off = true;
                    State::Off {
                        until_ns: now_ns.saturating_add(FIRST_BACKOFF_NS),
                        backoff_ns: FIRST_BACKOFF_NS,
                    }
                }
                State::Probing { backoff_ns } => {
                    let backoff_ns = backoff_ns.saturating_mul(2).min(MAX_BACKOFF_NS);
                    switched_off = true;
                    State::Off {
                        until_ns: now_ns.saturating_add(backoff_ns),
                        backoff_ns,
                    }
                }
                other => other,
            };
            self.released.extend_from_slice(&release);
        }
        Tick {
            stop: self.waiting.is_empty(),
            release,
            switched_off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn one_slow_client_does_not_switch_holding_off() {
        let mut n = HoldNet::default();
        assert_eq!(n.permit(0), Permit::Hold);
        assert!(n.held(1, 0));
        let t = n.tick(2 * S);
        assert_eq!(t.release, vec![1]);
        assert!(!t.switched_off);
        assert!(n.take_released(1));
        assert!(!n.take_released(1), "once");
        assert_eq!(n.state(), State::Unknown { failures: 1 });
        // The next request's body arrives: proven, and a later slow client is never released.
        assert_eq!(n.permit(3 * S), Permit::Hold);
        n.held(2, 3 * S);
        n.delivered(2);
        assert_eq!(n.state(), State::Proven);
        assert!(!n.held(3, 4 * S), "nothing to watch once proven");
        assert_eq!(n.tick(100 * S).release, Vec::<u32>::new());
        assert_eq!(n.permit(100 * S), Permit::Hold);
    }

    #[test]
    fn consecutive_failures_switch_off_then_probe_with_backoff() {
        let mut n = HoldNet::default();
        for id in 1..=2 {
            n.held(id, 0);
        }
        assert!(!n.tick(2 * S).switched_off, "two failures");
        n.held(3, 2 * S);
        assert!(!n.tick(2 * S + S / 2).switched_off, "not overdue yet");
        let t = n.tick(4 * S);
        assert!(t.switched_off && t.stop);
        assert_eq!(n.permit(5 * S), Permit::No);
        assert_eq!(n.permit(4 * S + FIRST_BACKOFF_NS - 1), Permit::No);
        let probe_at = 4 * S + FIRST_BACKOFF_NS;
        assert_eq!(n.permit(probe_at), Permit::Probe);
        assert_eq!(n.permit(probe_at), Permit::Hold, "probing: others may hold too");
        n.held(9, probe_at);
        let t = n.tick(probe_at + 2 * S);
        assert!(t.switched_off);
        assert_eq!(
            n.state(),
            State::Off {
                until_ns: probe_at + 2 * S + 2 * FIRST_BACKOFF_NS,
                backoff_ns: 2 * FIRST_BACKOFF_NS
            }
        );
        // A successful probe proves the host.
        let again = probe_at + 2 * S + 2 * FIRST_BACKOFF_NS;
        assert_eq!(n.permit(again), Permit::Probe);
        n.held(10, again);
        n.delivered(10);
        assert_eq!(n.state(), State::Proven);
    }

    #[test]
    fn backoff_is_bounded_and_ended_streams_are_forgotten() {
        let mut n = HoldNet {
            state: State::Probing {
                backoff_ns: MAX_BACKOFF_NS,
            },
            ..HoldNet::default()
        };
        n.held(1, 0);
        n.held(2, 0);
        n.forget(2);
        let t = n.tick(2 * S);
        assert_eq!(t.release, vec![1]);
        assert!(matches!(n.state(), State::Off { backoff_ns, .. } if backoff_ns == MAX_BACKOFF_NS));
    }
}
