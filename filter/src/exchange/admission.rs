//! Admission: access control and limits for a matched request, the rate limit service's
//! answers, and going on upstream once decided.

use super::*;

impl Stream {
    /// Access control and rate limits for a matched request (no-op for models without them).
    /// Global limits ask the rate limit service: the request then waits for its answers.
    /// `now`: the time when the caller has read it already.
    pub(super) fn admit<H: Host>(&mut self, vm: &Vm, host: &mut H, now: Option<u64>) -> Result<Admission, Reject> {
        let Outcome::Matched { model, .. } = *self.flow.outcome() else {
            return Ok(Admission::Admitted);
        };
        // The caller is checked and charged as the model it asked for, also when a fallback
        // serves it (a fallback model has no rules of its own: `failover::resolve`).
        let model = self.flow.asked_model().unwrap_or(model);
        let cfg = &vm.config;
        if cfg
            .models
            .get(model)
            .is_none_or(|m| m.allow.is_none() && m.limits.is_none())
        {
            self.admitted = true;
            return Ok(Admission::Admitted);
        }
        // The clock only where a limit needs it (a crossing saved on every other request).
        let now = now.unwrap_or_else(|| host.now_ns());
        let caller = Caller {
            principal: self.principal.as_deref(),
            headers: &self.limit_values,
            seed: vm.bucket_seed(host),
        };
        let mut collisions = Vec::new();
        let admitted = policy::admit(host, cfg, model, &caller, now, &mut collisions);
        for c in collisions {
            let name = cfg.models.get(model).map_or(telemetry::OTHER, |m| m.name.as_str());
            host.metric(&telemetry::limit_bucket_collision(name, c.label()));
        }
        match admitted {
            Ok((charge, info)) => {
                self.rate_info = info;
                let global = charge.as_ref().is_some_and(|c| c.limits().global);
                self.charge = charge;
                if global {
                    self.ask_service(vm, host, model, now);
                    if let Some(r) = self.refusal.take() {
                        vm.calls_done(self.id);
                        self.flow.deny(r.reason);
                        return Err(r);
                    }
                    if vm.waiting(self.id) {
                        return Ok(Admission::Waiting);
                    }
                }
                self.admitted = true;
                Ok(Admission::Admitted)
            }
            Err(r) => {
                self.flow.deny(r.reason);
                Err(r)
            }
        }
    }

    /// Starts the calls a global limit needs: `ShouldRateLimit` for requests, `CheckRateLimit`
    /// for tokens, at once (the request waits for the slower one, not for their sum).
    pub(super) fn ask_service<H: Host>(&mut self, vm: &Vm, host: &mut H, model: usize, now: u64) {
        let (Some(charge), Some(m), Some(r)) = (
            self.charge.as_ref(),
            vm.config.models.get(model),
            vm.config.rate_limit_service.as_ref(),
        ) else {
            return;
        };
        let limits = charge.limits();
        let calls = [
            (Call::Requests, limits.requests_per_minute.is_some()),
            (Call::Tokens, limits.tokens_per_minute.is_some()),
        ];
        let caller = charge.caller().map(str::to_string);
        for (call, needed) in calls {
            if !needed {
                continue;
            }
            let msg = rls::request(call, &r.domain, &m.name, caller.as_deref(), 1);
            match vm.rls_call(call, &msg).and_then(|c| host.grpc_call(&c)) {
                Some(token) => vm.call_started(host, token, self.id, call, now),
                None => self.service_failed(vm, host, call, "unreachable"),
            }
        }
        self.asked_ns = now;
    }

    /// The rate limit service could not say: counted, then `failureMode` decides.
    pub(super) fn service_failed<H: Host>(&mut self, vm: &Vm, host: &mut H, call: Call, reason: &str) {
        host.metric(&telemetry::rate_limit_service_failure(call.label(), reason));
        let deny = vm.config.rate_limit_service.as_ref().is_some_and(|r| r.deny_on_failure);
        if deny && self.refusal.is_none() {
            let mut r = Reject::new(
                RejectReason::RateLimitUnavailable,
                "The rate limit service could not be reached or did not answer in time, and this model's \
                 limits must be checked before it is used; retry.",
            );
            // A server-side condition, not a fault of the request (OpenAI's type for those).
            r.error_type = "server_error".into();
            r.headers.push(("retry-after".into(), "1".into()));
            self.refusal = Some(r);
        }
    }

    /// The answer to a call this request made (`result`: the response message, or the gRPC
    /// status it failed with).
    pub fn on_grpc_answer<H: Host>(&mut self, vm: &Vm, host: &mut H, token: u32, result: Result<&[u8], u32>) {
        let Some(call) = vm.call_answered(self.id, token) else {
            return;
        };
        match result.map(rls::answer) {
            Ok(Some(a)) if a.code != rls::Code::Unknown => self.answered(vm, call, a),
            Ok(_) => self.service_failed(vm, host, call, "invalid_response"),
            Err(status) => {
                let timeout_ns = vm.rls_timeout_ns();
                let waited = host.now_ns().saturating_sub(self.asked_ns);
                let reason = if waited >= timeout_ns - timeout_ns / 10 {
                    "timeout"
                } else {
                    rls::failure_reason(status)
                };
                self.service_failed(vm, host, call, reason);
            }
        }
        if !vm.waiting(self.id) {
            self.decided(vm, host);
        }
    }

    /// The host never answered in time (the tick's backstop): `calls`, which the tick took
    /// out of the table, failed.
    pub fn on_callout_expired<H: Host>(&mut self, vm: &Vm, host: &mut H, calls: &[Call]) {
        if calls.is_empty() {
            return;
        }
        for call in calls {
            self.service_failed(vm, host, *call, "timeout");
        }
        if !vm.waiting(self.id) {
            self.decided(vm, host);
        }
    }

    pub(super) fn answered(&mut self, vm: &Vm, call: Call, a: rls::Answer) {
        let Some(limits) = self.charge.as_ref().map(Charge::limits) else {
            return;
        };
        let (kind, limit) = match call {
            Call::Requests => ("requests", limits.requests_per_minute),
            _ => ("tokens", limits.tokens_per_minute),
        };
        let limit = limit.unwrap_or(0);
        if let Some(remaining) = a.remaining {
            let v = Some((limit, remaining, a.reset_s));
            match call {
                Call::Requests => self.rate_info.requests = v,
                _ => self.rate_info.tokens = v,
            }
        }
        if a.code == rls::Code::OverLimit
            && self
                .refusal
                .as_ref()
                .is_none_or(|r| r.reason != RejectReason::RateLimitExceeded)
        {
            let model = self
                .flow
                .asked_model()
                .or(self.flow.model_index())
                .and_then(|i| vm.config.models.get(i))
                .map_or("", |m| m.name.as_str());
            // Limitador's windows are fixed: a minute at most when it does not say.
            let retry = a.reset_s.unwrap_or(60).max(1);
            self.refusal = Some(policy::limited_message(
                model,
                kind,
                limit,
                " (counted across all proxies)",
                retry,
                &self.rate_info,
            ));
        }
    }

    /// Every answer is in: refuse, or let the stopped request go on.
    pub(super) fn decided<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        vm.calls_done(self.id);
        if let Some(r) = self.refusal.take() {
            self.flow.deny(r.reason);
            if self.reject(vm, host, &r) == Action::Continue {
                host.resume(self.id);
            }
            return;
        }
        self.admitted = true;
        self.note_matched(vm, host);
        host.resume(self.id);
    }

    /// After admission: a request admitted now goes on; one waiting for the service stays stopped.
    pub(super) fn go_on<H: Host>(&mut self, vm: &Vm, host: &mut H, admission: Admission) -> Action {
        match admission {
            Admission::Admitted => {
                self.note_matched(vm, host);
                Action::Continue
            }
            Admission::Waiting => Action::Pause,
        }
    }

    /// Once the model is known and admitted: count it in flight, and name it for access logs.
    pub(super) fn note_matched<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        if !matches!(self.flow.outcome(), Outcome::Matched { .. }) {
            return;
        }
        if vm.health_slots > 0 {
            self.failover_sent(vm, host);
        }
        let ops = self.meter.routed(&vm.stats.pair(&vm.config, self.flow.outcome()));
        if !ops.is_empty() {
            for op in &ops {
                host.metric(op);
            }
            if vm.config.filter_state {
                let (m, d) = telemetry::labels(&vm.config, self.flow.outcome());
                host.put_filter_state(FS_MODEL, m.as_bytes());
                host.put_filter_state(FS_DESTINATION, d.as_bytes());
            }
        }
    }
}
