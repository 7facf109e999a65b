//! Per-VM state: loading, the root's timer (held requests, overdue rate limit answers, first
//! bytes), node facts, the rate limit service's calls.

use super::*;

impl Vm {
    /// `now_ns`: the host's clock at load time (also the weighted choice's seed).
    pub fn new(config: Config, now_ns: u64) -> Vm {
        let seed = now_ns;
        let limit_headers = policy::limit_headers(&config);
        let policies = config.models.iter().any(|m| m.allow.is_some() || m.limits.is_some());
        let rls_service = config
            .rate_limit_service
            .as_ref()
            .map(|r| rls::grpc_service(&r.cluster))
            .unwrap_or_default();
        let stats = StatNames::new(&config);
        let health_slots = if config.failover.is_some() {
            config.models.iter().map(|m| m.destinations.len()).sum()
        } else {
            0
        };
        let health_key = if health_slots > 0 {
            crate::health::key(&config)
        } else {
            String::new()
        };
        Vm {
            config,
            hold: RefCell::new(HoldNet::default()),
            rng: Cell::new(crate::routing::mix(seed ^ 0x9e37_79b9_7f4a_7c15) | 1),
            ticking: Cell::new(false),
            logged_release: Cell::new(false),
            rls_service,
            limit_headers,
            policies,
            loaded_s: now_ns / 1_000_000_000,
            callouts: RefCell::new(Vec::new()),
            memory_reported: Cell::new(0),
            stats,
            node: OnceCell::new(),
            logged_identity: Cell::new(false),
            bucket_seed: Cell::new(None),
            health_key,
            health_slots,
            announced: Cell::new(false),
            awaiting: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn bucket_seed<H: Host>(&self, host: &mut H) -> u64 {
        if let Some(seed) = self.bucket_seed.get() {
            return seed;
        }
        let seed = policy::bucket_seed(host, self.random());
        self.bucket_seed.set(Some(seed));
        seed
    }

    /// The proxy's node, read once (three crossings at most, on the first request that asks).
    pub(super) fn node<H: Host>(&self, host: &mut H) -> &NodeInfo {
        self.node.get_or_init(|| {
            // Envoy's configuration attributes are `xds.node`, `xds.listener_direction`; older
            // Envoys had them at the top level.
            let (xds, id) = match host.property(&["xds", "node", "id"]) {
                Some(id) => (true, Some(id)),
                None => (false, host.property(&["node", "id"])),
            };
            let attribute = |path: &[&'static str]| -> Vec<&'static str> {
                xds.then_some("xds").into_iter().chain(path.iter().copied()).collect()
            };
            let direction: &'static [&'static str] = if xds {
                &["xds", "listener_direction"]
            } else {
                &["listener_direction"]
            };
            let kind = NodeKind::from_node_id(&id.unwrap_or_default());
            let may_be_caller = match self.config.identity_source {
                IdentitySource::Auto => kind == NodeKind::Sidecar,
                IdentitySource::Workload => matches!(kind, NodeKind::Sidecar | NodeKind::Other),
                _ => false,
            };
            let workload = if may_be_caller {
                let ns = host.property(&attribute(&["node", "metadata", "NAMESPACE"]));
                let sa = host.property(&attribute(&["node", "metadata", "SERVICE_ACCOUNT"]));
                identity::workload_principal(&self.config.trust_domain, ns.as_deref(), sa.as_deref())
            } else {
                None
            };
            NodeInfo {
                kind,
                workload,
                direction,
            }
        })
    }

    pub(super) fn log_identity_once<H: Host>(&self, host: &mut H, message: &str) {
        if !self.logged_identity.replace(true) {
            host.log(LogLevel::Warn, message);
        }
    }

    /// Keeps `model_router_vm_memory_bytes` (the sum over the VMs that share the stat) current
    /// with this VM's linear memory; it only ever changes when the memory grows.
    pub(super) fn report_memory<H: Host>(&self, host: &mut H) {
        let now = host.memory_bytes();
        let before = self.memory_reported.replace(now);
        if now != before {
            let delta = i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
            host.metric(&telemetry::vm_memory(delta));
        }
    }

    /// A call to the rate limit service, for `Host::grpc_call`.
    pub(super) fn rls_call<'a>(&'a self, call: Call, message: &'a [u8]) -> Option<GrpcCall<'a>> {
        let r = self.config.rate_limit_service.as_ref()?;
        Some(GrpcCall {
            service: &self.rls_service,
            service_name: call.service(),
            method: call.method(),
            message,
            timeout_ms: r.timeout_ms,
            detached: call == Call::Report,
        })
    }

    /// The rate limit service's timeout (requests only wait on it when there is one).
    pub(super) fn rls_timeout_ns(&self) -> u64 {
        self.config
            .rate_limit_service
            .as_ref()
            .map_or(0, |r| u64::from(r.timeout_ms) * 1_000_000)
    }

    /// A request (`context`) waits for the answer to `call` (`token`).
    pub(super) fn call_started<H: Host>(&self, host: &mut H, token: u32, context: u32, call: Call, now: u64) {
        let deadline_ns = now
            .saturating_add(self.rls_timeout_ns())
            .saturating_add(CALLOUT_GRACE_NS);
        self.callouts.borrow_mut().push(Callout {
            token,
            context,
            call,
            deadline_ns,
        });
        self.tick_on(host);
    }

    /// The request that waits for the answer `token` (the host delivers answers to the root).
    pub fn caller_of(&self, token: u32) -> Option<u32> {
        self.callouts
            .borrow()
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.context)
    }

    /// The answer `token` of `context` came: the call it answers (`None`: not waited for).
    pub(super) fn call_answered(&self, context: u32, token: u32) -> Option<Call> {
        let mut calls = self.callouts.borrow_mut();
        let i = calls.iter().position(|c| c.token == token && c.context == context)?;
        Some(calls.remove(i).call)
    }

    /// `context` still waits for an answer.
    pub(super) fn waiting(&self, context: u32) -> bool {
        self.callouts.borrow().iter().any(|c| c.context == context)
    }

    /// `context` no longer waits (decided, refused, or gone): its calls' answers are ignored.
    pub(super) fn calls_done(&self, context: u32) {
        self.callouts.borrow_mut().retain(|c| c.context != context);
    }

    /// An answer to a call the root made (a `Report`): only failures are worth a count.
    pub fn on_root_grpc<H: Host>(&self, host: &mut H, result: Result<&[u8], u32>) {
        let reason = match result {
            Ok(bytes) => match rls::answer(bytes) {
                Some(a) if a.code != rls::Code::Unknown => return,
                _ => "invalid_response",
            },
            Err(status) => rls::failure_reason(status),
        };
        host.metric(&telemetry::rate_limit_service_failure(Call::Report.label(), reason));
    }

    #[cfg(test)]
    pub(crate) fn hold_state(&self) -> crate::hold::State {
        self.hold.borrow().state()
    }

    pub(super) fn random(&self) -> u64 {
        // xorshift64*: statistically fine for traffic splitting.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The root context's timer: lets go of held requests whose body never came, counts first
    /// bytes that are overdue. Returns the requests whose rate limit answers are overdue, with
    /// those calls (out of the table now): the caller runs `Stream::on_callout_expired` on each
    /// (in its context).
    pub fn on_tick<H: Host>(&self, host: &mut H) -> Vec<(u32, Vec<Call>)> {
        let now = host.now_ns();
        let tick = self.hold.borrow_mut().tick(now);
        let expired = self.overdue_calls(now);
        self.first_byte_overdue(host, now);
        if tick.stop && self.callouts.borrow().is_empty() && self.awaiting.borrow().is_empty() {
            host.set_tick_ms(0);
            self.ticking.set(false);
        }
        if !tick.release.is_empty() {
            self.release_held(host, tick);
        }
        expired
    }

    /// The calls past their deadline, by request, taken out of the table.
    fn overdue_calls(&self, now: u64) -> Vec<(u32, Vec<Call>)> {
        let mut calls = self.callouts.borrow_mut();
        let mut out: Vec<(u32, Vec<Call>)> = Vec::new();
        for c in calls.iter().filter(|c| c.deadline_ns <= now) {
            match out.iter_mut().find(|(id, _)| *id == c.context) {
                Some((_, list)) => list.push(c.call),
                None => out.push((c.context, vec![c.call])),
            }
        }
        calls.retain(|c| c.deadline_ns > now);
        out
    }

    pub(super) fn release_held<H: Host>(&self, host: &mut H, tick: crate::hold::Tick) {
        if !self.logged_release.replace(true) {
            host.log(
                LogLevel::Warn,
                "model-router: the body of a held request did not arrive within 1 s; letting it go. \
                 If every request does this, the host cannot hold headers: body routing needs \
                 allow_on_headers_stop_iteration: true (see docs/configuration.md).",
            );
        }
        if tick.switched_off {
            host.log(
                LogLevel::Warn,
                "model-router: several held requests in a row never got their body; routing from headers \
                 only for now (requests whose model is in the body are unrouted), trying again later.",
            );
        }
        // No borrow is held here: resuming can call back into this VM.
        for id in tick.release {
            host.metric(&telemetry::hold_released());
            if self.policies {
                // Going on unread would skip access control and limits: refuse, retryably.
                let r = Reject::new(
                    RejectReason::BodyNotReceived,
                    "The request body did not arrive in time to check the model's access rules; retry.",
                );
                host.metric(&telemetry::rejected(r.reason, telemetry::OTHER));
                let body = r.body();
                let headers = [("content-type", "application/json"), ("retry-after", "1")];
                if !host.reply_to(id, r.status(), &details(&r), &headers, &body) {
                    host.resume(id);
                }
            } else {
                host.resume(id);
            }
        }
    }

    pub(super) fn watch_held<H: Host>(&self, host: &mut H, id: u32, now: u64) {
        if self.hold.borrow_mut().held(id, now) {
            self.tick_on(host);
        }
    }

    /// Starts the root's timer unless it runs (the tick stops it once nothing needs it).
    pub(super) fn tick_on<H: Host>(&self, host: &mut H) {
        if !self.ticking.replace(true) {
            host.set_tick_ms(TICK_MS);
        }
    }
}
