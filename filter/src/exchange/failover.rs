//! Failover in the exchange: the breakers' shared table, what a request sent upstream tells of
//! its destination (response status, Envoy's flags, a first byte that never came).

use super::*;

/// A request waiting for its first byte (`Vm::awaiting`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Awaiting {
    id: u32,
    deadline_ns: u64,
    at: (usize, usize, usize),
}

impl Vm {
    /// The breakers' gauges, once per VM, from the shared table, and the failover counters made
    /// at zero (a series exists before its first count); the table for this request.
    #[inline(never)]
    pub(super) fn health<H: Host>(&self, host: &mut H) -> crate::health::Table {
        let t = crate::health::read(host, &self.health_key, self.health_slots);
        if !self.announced.replace(true) {
            let mut i = 0;
            for m in &self.config.models {
                for d in &m.destinations {
                    host.metric(&telemetry::destination_state(&m.name, &d.name, t.get(i).state));
                    i += 1;
                }
                telemetry::failover_zeros(&m.name, &m.destinations, &mut |op| host.metric(op));
            }
        }
        t
    }

    /// Applies `f` to a breaker; a change of state is set on its gauge (and an opening logged).
    #[inline(never)]
    pub(super) fn breaker<H: Host>(&self, host: &mut H, at: (usize, usize, usize), event: Event) {
        let (m, d, slot) = at;
        let Some((before, after)) = crate::health::update(host, &self.health_key, self.health_slots, slot, event)
        else {
            return;
        };
        let (Some(m), true) = (self.config.models.get(m), before.state != after.state) else {
            return;
        };
        let Some(d) = m.destinations.get(d) else { return };
        host.metric(&telemetry::destination_state(&m.name, &d.name, after.state));
        let said = |what: &str| "destination `".to_string() + &d.name + "` of model `" + &m.name + "` " + what;
        if after.state == crate::health::OPEN {
            let seconds = self
                .config
                .failover
                .as_ref()
                .map_or(0, |f| crate::health::probation_ms(f, after.level).div_ceil(1000));
            host.log(
                LogLevel::Warn,
                &said(&("is failing: no new requests for its probation of ".to_string() + &seconds.to_string() + " s")),
            );
        } else if after.state == crate::health::CLOSED {
            // As visible as its opening (a proxy that logs warnings shows both).
            host.log(LogLevel::Warn, &said("recovered: it takes new requests again"));
        }
    }

    /// Failover: a request sent upstream is awaited until its response headers come; the tick
    /// counts it as a timeout once its `firstByteTimeout` passed (the request goes on).
    pub(super) fn await_first_byte<H: Host>(&self, host: &mut H, id: u32, at: (usize, usize, usize), now: u64) {
        let Some(t) = self.config.failover.as_ref().and_then(|f| f.first_byte_timeout_ms) else {
            return;
        };
        let deadline_ns = now.saturating_add(u64::from(t) * 1_000_000);
        self.awaiting.borrow_mut().push(Awaiting { id, deadline_ns, at });
        self.tick_on(host);
    }

    /// The request's first byte came (or it ended): `false` when the tick already counted it.
    pub(super) fn first_byte_came(&self, id: u32) -> bool {
        if self
            .config
            .failover
            .as_ref()
            .is_none_or(|f| f.first_byte_timeout_ms.is_none())
        {
            return true;
        }
        let mut awaiting = self.awaiting.borrow_mut();
        let before = awaiting.len();
        awaiting.retain(|a| a.id != id);
        awaiting.len() != before
    }

    /// The tick: every awaited request past its deadline is a timeout failure of its destination.
    pub(super) fn first_byte_overdue<H: Host>(&self, host: &mut H, now: u64) {
        let overdue: Vec<Awaiting> = {
            let mut awaiting = self.awaiting.borrow_mut();
            if awaiting.iter().all(|a| a.deadline_ns >= now) {
                return;
            }
            let overdue = awaiting.iter().filter(|a| a.deadline_ns < now).copied().collect();
            awaiting.retain(|a| a.deadline_ns >= now);
            overdue
        };
        let Some(p) = self.config.failover.as_ref() else { return };
        for a in overdue {
            self.failed(host, p, a.at, "timeout", now);
        }
    }

    /// One outcome of a destination on its breaker (`failure`: its reason), counted.
    pub(super) fn failed<H: Host>(
        &self,
        host: &mut H,
        p: &Failover,
        at: (usize, usize, usize),
        failure: &str,
        now: u64,
    ) {
        self.breaker(host, at, Event::Outcome(p, false, now / 1_000_000));
        if let Some(m) = self.config.models.get(at.0) {
            if let Some(d) = m.destinations.get(at.1) {
                host.metric(&telemetry::destination_failure(&m.name, &d.name, failure));
            }
        }
    }
}

/// Envoy's response flags (`StreamInfo::legacyResponseFlags()`; 0 where unknown).
fn response_flags<H: Host>(host: &mut H) -> u64 {
    host.property(&["response", "flags"])
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

impl Stream {
    /// Failover: a routed request goes upstream; a trial is marked on its breaker, a failover
    /// counted, and the outcome awaited.
    #[inline(never)]
    pub(super) fn failover_sent<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        let Outcome::Matched {
            model,
            destination: Some(d),
        } = *self.flow.outcome()
        else {
            return;
        };
        let cfg = &vm.config;
        let now = host.now_ns();
        let at = (model, d, crate::routing::slot(cfg, model, d));
        let (via, trial) = self.flow.failover();
        if let Some(slot) = trial {
            vm.breaker(host, (model, d, slot), Event::Trial(now / 1_000_000));
        }
        let label = match (via, trial) {
            (Via::First, Some(_)) => "trial",
            (Via::First, None) => "",
            (v, _) => v.label(),
        };
        if via != Via::First {
            let asked = self.flow.asked_model().unwrap_or(model);
            let name = cfg.models.get(asked).map_or(telemetry::OTHER, |m| m.name.as_str());
            host.metric(&telemetry::failover(name, label));
        }
        if cfg.filter_state && !label.is_empty() {
            host.put_filter_state(FS_FAILOVER, label.as_bytes());
        }
        self.sent = Some((at, now));
        vm.await_first_byte(host, self.id, at, now);
    }

    /// Failover: what the response (`status`: its headers' status; `None`: none came) tells of
    /// the destination. Envoy's response flags tell resets, connect failures and its timeouts.
    #[inline(never)]
    pub(super) fn outcome<H: Host>(&mut self, vm: &Vm, host: &mut H, status: Option<u32>) {
        let (Some((at, sent_ns)), Some(p)) = (self.sent.take(), vm.config.failover.as_ref()) else {
            return;
        };
        if self.answered {
            // The end of an answer whose headers were fine: did the backend finish it?
            let now = host.now_ns();
            match response_flags(host) {
                f if f & (FLAG_REMOTE_RESET | FLAG_CONNECTION_TERMINATION | FLAG_UPSTREAM_PROTOCOL_ERROR) != 0 => {
                    vm.failed(host, p, at, "reset", now)
                }
                _ => vm.breaker(host, at, Event::Outcome(p, true, now / 1_000_000)),
            }
            return;
        }
        if !vm.first_byte_came(self.id) {
            // The tick counted it as a timeout already.
            return;
        }
        let now = host.now_ns();
        let late = p
            .first_byte_timeout_ms
            .is_some_and(|t| now.saturating_sub(sent_ns) > u64::from(t) * 1_000_000);
        let from_flags = |f: u64| match f {
            _ if f & (FLAG_NO_HEALTHY_UPSTREAM | FLAG_CONNECT_FAILURE) != 0 => Some("connect_failure"),
            _ if f & (FLAG_REMOTE_RESET | FLAG_CONNECTION_TERMINATION) != 0 => Some("reset"),
            _ if f & FLAG_REQUEST_TIMEOUT != 0 => Some("timeout"),
            _ => None,
        };
        let failure = match status {
            Some(s) if s >= 500 || p.fails(s) => from_flags(response_flags(host)).or(p.fails(s).then_some("status")),
            Some(_) if !late => {
                // In time and no failure status: the end of the body decides (on_log).
                self.sent = Some((at, sent_ns));
                self.answered = true;
                return;
            }
            Some(_) => None,
            None => match from_flags(response_flags(host)) {
                None if !late => return,
                f => f,
            },
        }
        .or(late.then_some("timeout"));
        match failure {
            Some(reason) => vm.failed(host, p, at, reason, now),
            None => vm.breaker(host, at, Event::Outcome(p, true, now / 1_000_000)),
        }
    }
}
