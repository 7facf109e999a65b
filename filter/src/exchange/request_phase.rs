//! The request phase: spoofed headers out, scope, model, routing headers, local replies.

use super::*;

/// Where Istio puts the caller's identity on a waypoint (and in its other HBONE listeners):
/// there is no client certificate on the connection the waypoint's HTTP filters see.
pub const PEER_PRINCIPAL_STATE: &str = "io.istio.peer_principal";

/// The caller's SPIFFE identity and the source it came from (`identity::source`: where the
/// filter runs decides), reading only the properties that source needs.
pub(super) fn caller_identity<H: Host>(vm: &Vm, host: &mut H, h: &HeaderMap) -> (Option<String>, Source) {
    let cfg = &vm.config;
    let (kind, direction) = if Source::needs_node(cfg.identity_source) {
        let (kind, attribute) = {
            let node = vm.node(host);
            (node.kind, node.direction)
        };
        let direction = if kind == NodeKind::Sidecar || cfg.identity_source == IdentitySource::Workload {
            Direction::from_property(host.property(attribute).as_deref())
        } else {
            Direction::Unspecified
        };
        (kind, direction)
    } else {
        (NodeKind::Other, Direction::Unspecified)
    };
    let source = identity::source(cfg.identity_source, kind, direction);
    let peer_certificate = |host: &mut H| {
        host.property(&["connection", "uri_san_peer_certificate"])
            .filter(|p| !p.is_empty())
    };
    let peer_principal = |host: &mut H| {
        host.property(&["filter_state", PEER_PRINCIPAL_STATE])
            .filter(|p| !p.is_empty())
            .map(policy::with_spiffe_scheme)
    };
    let found = match source {
        Source::Workload => {
            let w = vm.node(host).workload.clone().map(String::into_bytes);
            if w.is_none() {
                vm.log_identity_once(
                    host,
                    "model-router: the caller is this sidecar's own workload, but the node metadata has no valid \
                     NAMESPACE and SERVICE_ACCOUNT (Istio's agent writes them): callers have no identity",
                );
            }
            w
        }
        Source::Refused => {
            vm.log_identity_once(
                host,
                &format!(
                    "model-router: identitySource: workload does not apply {} (a proxy never lends its own identity \
                     to its callers): callers have no identity",
                    if direction == Direction::Inbound {
                        "on an inbound listener".to_string()
                    } else {
                        format!("on a {}", kind.name())
                    },
                ),
            );
            None
        }
        Source::PeerCertificate => peer_certificate(host),
        Source::PeerPrincipal => peer_principal(host),
        Source::Peer => peer_certificate(host).or_else(|| peer_principal(host)),
        Source::Header => None,
    };
    let claimed = cfg.identity_header.as_deref().and_then(|n| h.get(n));
    let identity = match source {
        Source::Header => policy::identity(None, claimed),
        s if s.header_fallback() && found.is_none() => policy::identity(None, claimed),
        _ => policy::identity(found.as_deref(), None),
    };
    (identity, source)
}

pub(super) fn details(r: &Reject) -> String {
    format!("model_router_{}", r.reason.code())
}

impl Stream {
    pub fn on_request_headers<H: Host>(&mut self, vm: &Vm, host: &mut H, end_of_stream: bool) -> Action {
        let now = host.now_ns();
        self.meter = Meter::new(now);
        let cfg = &vm.config;
        let h = host.headers(Map::Request);
        // Only the filter sets the route and model headers: a client's are dropped first.
        let inference = (cfg.inference_model_header != InferenceModelHeader::None).then_some(INFERENCE_MODEL_HEADER);
        for name in [cfg.route_header.as_str(), cfg.model_header.as_str()]
            .into_iter()
            .chain(inference)
        {
            if h.get(name).is_some() {
                host.del_header(Map::Request, name);
            }
        }
        let method = h.get_str(":method").unwrap_or_default();
        let path = h.get_str(":path").unwrap_or_default();
        let authority = h
            .get_str(":authority")
            .or_else(|| h.get_str("host"))
            .unwrap_or_default();
        let content_type = h.get_str("content-type");
        let content_length = h.get_str("content-length").and_then(|v| v.trim().parse().ok());
        if cfg.serve_model_list && cfg.scope.contains(&authority, &path) {
            if let Some(req) = models::models_request(&method, &path) {
                return self.models_reply(vm, host, &h, &req);
            }
        }
        let sticky = cfg.sticky_header.as_deref().and_then(|n| h.get(n)).map(<[u8]>::to_vec);
        let permit = if cfg.body_routing {
            vm.hold.borrow_mut().permit(now)
        } else {
            Permit::No
        };
        if permit == Permit::Probe {
            host.metric(&telemetry::hold_probe());
        }
        if vm.health_slots > 0 {
            let t = vm.health(host);
            self.flow.set_health(t, now / 1_000_000);
        }
        let info = RequestInfo {
            method: &method,
            path: &path,
            authority: &authority,
            content_type: content_type.as_deref(),
            content_length,
            sticky: sticky.as_deref(),
            end_of_stream,
            random: vm.random(),
        };
        let action = self.flow.on_request_headers(cfg, &info, permit != Permit::No);
        if vm.policies && self.flow.counted() {
            let (principal, source) = caller_identity(vm, host, &h);
            self.principal = principal;
            self.identity_source = Some(source);
            self.limit_values = vm
                .limit_headers
                .iter()
                .filter_map(|n| h.get(n).map(|v| (n.clone(), v.to_vec())))
                .collect();
        }
        if self.flow.counted() && !matches!(action, HeadersAction::Reject(_)) && h.get("accept-encoding").is_some() {
            // The response's usage is read: ask the backend for an uncompressed answer.
            host.del_header(Map::Request, "accept-encoding");
        }
        match action {
            HeadersAction::Continue { set, remove } => {
                let admission = match self.admit(vm, host, Some(now)) {
                    Ok(a) => a,
                    Err(r) => return self.reject(vm, host, &r),
                };
                for name in remove {
                    host.del_header(Map::Request, name);
                }
                if !self.set_request_headers(host, &set) {
                    return self.route_failed(vm, host);
                }
                self.go_on(vm, host, admission)
            }
            HeadersAction::Hold => {
                vm.watch_held(host, self.id, now);
                Action::Pause
            }
            HeadersAction::Reject(r) => self.reject(vm, host, &r),
        }
    }

    pub fn on_request_body<H: Host>(&mut self, vm: &Vm, host: &mut H, body_size: usize, end_of_stream: bool) -> Action {
        if self.take_released(vm) {
            return Action::Continue;
        }
        if vm.waiting(self.id) {
            // Still waiting for the rate limit service: going on now would let the headers go too.
            return Action::Pause;
        }
        if self.flow.held() {
            // A body callback while the headers are held: this host holds headers.
            vm.hold.borrow_mut().delivered(self.id);
        }
        if !self.flow.reading_body() {
            return Action::Continue;
        }
        let chunk = if body_size > self.body_seen {
            host.body(Buffer::Request, self.body_seen, body_size - self.body_seen)
        } else {
            Vec::new()
        };
        self.body_seen = body_size;
        match self.flow.on_request_body(&vm.config, &chunk, end_of_stream) {
            BodyAction::NeedMore => Action::Pause,
            BodyAction::Continue { mut set, edits } => {
                let admission = match self.admit(vm, host, None) {
                    Ok(a) => a,
                    Err(r) => return self.reject(vm, host, &r),
                };
                if !edits.is_empty() {
                    let body = host.body(Buffer::Request, 0, body_size);
                    if !host.replace_body(Buffer::Request, &apply_edits(&body, &edits)) {
                        // Body unchanged: its length must not change either.
                        set.retain(|(k, _)| k != CONTENT_LENGTH);
                        host.log(LogLevel::Warn, "model-router: the host refused the body rewrite");
                    }
                }
                if !self.set_request_headers(host, &set) {
                    return self.route_failed(vm, host);
                }
                self.go_on(vm, host, admission)
            }
            BodyAction::Reject(r) => self.reject(vm, host, &r),
        }
    }

    /// The request's trailers: the body ended without a body callback saying so (HTTP/2, or
    /// HTTP/1 chunked trailers where Envoy keeps them). The body is whole: decide now, as at the
    /// end of the body. (Answering `Continue` undecided would let Envoy pass the held headers and
    /// body on: a client could send any model past access control by adding a trailer.)
    pub fn on_request_trailers<H: Host>(&mut self, vm: &Vm, host: &mut H) -> Action {
        let seen = self.body_seen;
        self.on_request_body(vm, host, seen, true)
    }

    pub(super) fn models_reply<H: Host>(
        &mut self,
        vm: &Vm,
        host: &mut H,
        h: &HeaderMap,
        req: &ModelsRequest,
    ) -> Action {
        let (principal, source) = caller_identity(vm, host, h);
        self.principal = principal.clone();
        self.identity_source = Some(source);
        match models::answer(&vm.config, req, principal.as_deref(), vm.loaded_s) {
            Ok(body) => {
                if host.send_reply(
                    200,
                    "model_router_models",
                    &[("content-type", "application/json")],
                    &body,
                ) {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Err(r) => self.reject(vm, host, &r),
        }
    }

    /// True (once) if the safety net let this held request go; the flow then learns how.
    pub(super) fn take_released(&mut self, vm: &Vm) -> bool {
        if !vm.hold.borrow_mut().take_released(self.id) {
            return false;
        }
        if vm.policies {
            self.flow.deny(RejectReason::BodyNotReceived);
        } else {
            self.flow.release_held();
        }
        true
    }

    pub(super) fn reject<H: Host>(&mut self, vm: &Vm, host: &mut H, r: &Reject) -> Action {
        let (model, _) = telemetry::labels(&vm.config, self.flow.outcome());
        host.metric(&telemetry::rejected(r.reason, model));
        if r.reason == RejectReason::ModelUnavailable {
            host.metric(&telemetry::failover(model, "unavailable"));
            if vm.config.filter_state {
                host.put_filter_state(FS_FAILOVER, b"unavailable");
            }
        }
        if vm.config.filter_state {
            // The access log names the model a refusal was for (`other` when none was known).
            host.put_filter_state(FS_MODEL, model.as_bytes());
            host.put_filter_state(FS_DESTINATION, telemetry::NO_DESTINATION.as_bytes());
        }
        let body = r.body();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !host.send_reply(r.status(), &details(r), &headers, &body) {
            // The host refused a local reply: never leave the request hanging.
            return Action::Continue;
        }
        self.status = Some(r.status());
        Action::Pause
    }

    /// Sets the routing headers; false if the host refused one (or refused to choose the route
    /// again): the request would not go where the filter chose.
    pub(super) fn set_request_headers<H: Host>(&self, host: &mut H, set: &[(String, String)]) -> bool {
        let mut ok = true;
        for (k, v) in set {
            ok &= host.put_header(Map::Request, k, v);
        }
        // Envoy >= 1.33: make sure the route is chosen again with the new headers.
        ok && (set.is_empty() || host.reroute())
    }

    /// The host refused the routing headers: refused, not sent somewhere the filter did not
    /// choose (and not counted as routed).
    pub(super) fn route_failed<H: Host>(&mut self, vm: &Vm, host: &mut H) -> Action {
        host.log(
            LogLevel::Error,
            "model-router: the proxy refused to set the routing header; request refused",
        );
        let mut r = Reject::new(
            RejectReason::RouteFailed,
            "The proxy could not route this request to the model's destination.",
        );
        r.error_type = "server_error".into();
        self.flow.deny(r.reason);
        // Its rate limit answers no longer matter.
        vm.calls_done(self.id);
        self.reject(vm, host, &r)
    }
}
