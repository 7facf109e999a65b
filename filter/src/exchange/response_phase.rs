//! The response phase and the end of an exchange: response headers, usage, restoring the
//! client's model name, and what is counted and charged however the exchange ended.

use super::*;

/// The first of these headers that holds a count (TGI's, Bedrock's token count headers).
#[inline(never)]
pub(super) fn count_header(h: &HeaderMap, names: [&str; 2]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| h.get_str(n).and_then(|v| v.trim().parse().ok()))
}

impl Stream {
    pub fn on_response_headers<H: Host>(&mut self, vm: &Vm, host: &mut H, end_of_stream: bool) -> Action {
        let mode = vm.config.response_headers;
        if mode != ResponseHeaders::None {
            if let Some((_, d)) = self.flow.routed(&vm.config) {
                host.put_header(Map::Response, ROUTE_RESPONSE_HEADER, &d.name);
            }
            if let (ResponseHeaders::RouteAndModel, Some((m, _))) = (mode, self.flow.matched(&vm.config)) {
                host.put_header(Map::Response, MODEL_RESPONSE_HEADER, &m.name);
            }
        }
        for (k, v) in self.rate_info.headers() {
            host.put_header(Map::Response, &k, &v);
        }
        if self.flow.counted() {
            let h = host.headers(Map::Response);
            if mode == ResponseHeaders::None {
                // The decision stays inside the mesh; nothing a backend echoes gives it away.
                // (Only requests the filter decided about have a decision to give away.)
                for name in [ROUTE_RESPONSE_HEADER, MODEL_RESPONSE_HEADER] {
                    if h.get(name).is_some() {
                        host.del_header(Map::Response, name);
                    }
                }
            }
            let number = |name| h.get_str(name).and_then(|v| v.trim().parse::<u64>().ok());
            self.status = number(":status").and_then(|s| u32::try_from(s).ok());
            if let Some(s) = self.status {
                self.outcome(vm, host, Some(s));
            }
            let encoded = h
                .get_str("content-encoding")
                .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
            let ct = h.get_str("content-type");
            self.meter.response_headers(
                ct.as_deref(),
                encoded,
                count_header(&h, ["x-prompt-tokens", "x-amzn-bedrock-input-token-count"]),
                count_header(&h, ["x-generated-tokens", "x-amzn-bedrock-output-token-count"]),
            );
            if !encoded && !end_of_stream {
                self.restorer = self.restorer_for(vm, ct.as_deref());
                if self.restorer.is_some() && h.get("content-length").is_some() {
                    // The body's length changes: it goes on chunked (or with HTTP/2 framing).
                    host.del_header(Map::Response, "content-length");
                }
            }
            if end_of_stream {
                self.response_body(vm, host, 0, true);
            }
        }
        Action::Continue
    }

    pub fn on_response_body<H: Host>(
        &mut self,
        vm: &Vm,
        host: &mut H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        self.response_body(vm, host, body_size, end_of_stream);
        Action::Continue
    }

    /// The response's trailers: its body ended without a body callback saying so. Its usage and
    /// time to first token are final now. Bytes the model-name restorer still held (an SSE event
    /// without its closing blank line) cannot be added here: the host has no body left to write
    /// to, and that is logged.
    pub fn on_response_trailers<H: Host>(&mut self, vm: &Vm, host: &mut H) -> Action {
        self.response_body(vm, host, 0, true);
        Action::Continue
    }

    /// The exchange ended, however it ended: count it, charge it, release what it held.
    pub fn on_log<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        self.take_released(vm);
        vm.hold.borrow_mut().forget(self.id);
        // Ended (the client went away) before the rate limit service answered: its answers are
        // ignored.
        vm.calls_done(self.id);
        if self.sent.is_some() {
            self.outcome(vm, host, None);
        }
        let cfg = &vm.config;
        // The status seen in the response headers, else (local replies, resets) Envoy's own.
        let status = self.status.unwrap_or_else(|| {
            host.property(&["response", "code"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(|b| u32::try_from(i64::from_le_bytes(b)).unwrap_or(0))
                .unwrap_or(0)
        });
        let (model, dest) = telemetry::labels(cfg, self.flow.outcome());
        let mut ops = Vec::new();
        if self.admitted && matches!(self.flow.outcome(), Outcome::Matched { .. }) {
            ops.extend(self.account(vm, host, status, model, dest));
        }
        let now = host.now_ns();
        let stats = vm.stats.pair(cfg, self.flow.outcome());
        ops.extend(self.meter.finish(self.flow.counted(), &stats, status, now));
        for op in &ops {
            host.metric(op);
        }
        vm.report_memory(host);
    }

    /// Tokens of a finished exchange: charged to its limits (what was reported, else a bounded
    /// estimate), and counted as missing when they could not be read.
    pub(super) fn account<H: Host>(
        &mut self,
        vm: &Vm,
        host: &mut H,
        status: u32,
        model: &str,
        dest: &str,
    ) -> Vec<MetricOp> {
        let mut ops = telemetry::usage_errors(model, dest, &self.meter.usage_errors());
        // Only a backend that answered 2xx (or did not get to answer: a reset, a disconnect)
        // produced tokens; an error answer did not.
        if !(status == 0 || (200..300).contains(&status)) {
            return ops;
        }
        let charges_tokens = self.charge.as_ref().is_some_and(Charge::counts_tokens);
        if !(charges_tokens || self.flow.model_from_body()) {
            return ops;
        }
        let usage = self.meter.usage();
        let complete = self.meter.usage_complete();
        let reason = if self.meter.encoded() {
            Some("encoded")
        } else if !self.meter.ended() {
            (!complete).then_some("incomplete")
        } else if !complete && self.meter.usage_errors().unreadable > 0 {
            Some("unreadable")
        } else {
            (!complete).then_some("absent")
        };
        if let Some(reason) = reason {
            ops.push(telemetry::usage_missing(model, dest, reason));
        }
        if let Some(charge) = self.charge.as_ref().filter(|c| c.counts_tokens()) {
            let input = usage.input.unwrap_or_else(|| self.flow.estimated_input_tokens());
            // A final report without output tokens is an embedding's: none were produced.
            // Without one, the estimate, but never less than the stream delivered.
            let output = if complete {
                usage.output.unwrap_or(0)
            } else {
                let estimate = self.flow.max_tokens().unwrap_or(vm.config.estimated_output_tokens);
                estimate.max(self.meter.messages_seen())
            };
            let tokens = input.saturating_add(output);
            if charge.limits().global {
                // Limitador counts `hits_addend` 0 as 1: nothing used, nothing reported.
                if tokens > 0 {
                    let hits = u32::try_from(tokens).unwrap_or(u32::MAX);
                    let matched = self.flow.model_index().and_then(|i| vm.config.models.get(i));
                    if let (Some(m), Some(r)) = (matched, vm.config.rate_limit_service.as_ref()) {
                        let msg = rls::request(Call::Report, &r.domain, &m.name, charge.caller(), hits);
                        if let Some(call) = vm.rls_call(Call::Report, &msg) {
                            if host.grpc_call(&call).is_none() {
                                ops.push(telemetry::rate_limit_service_failure(
                                    Call::Report.label(),
                                    "unreachable",
                                ));
                            }
                        }
                    }
                }
            } else {
                let now = host.now_ns();
                policy::charge(host, charge, tokens, now);
            }
        }
        ops
    }

    /// The client asked for an alias or a name `upstreamModel` replaced: put it back in the answer.
    pub(super) fn restorer_for(&self, vm: &Vm, content_type: Option<&str>) -> Option<ModelRestorer> {
        if !vm.config.restore_model_name {
            return None;
        }
        let upstream = self.flow.upstream_name(&vm.config)?;
        let client = self.flow.requested_model()?;
        if client == upstream || !(200..300).contains(&self.status.unwrap_or(0)) {
            return None;
        }
        let mime = crate::header_map::mime_type(content_type);
        let sse = mime == "text/event-stream";
        (sse || mime == "application/json" || mime.ends_with("+json"))
            .then(|| ModelRestorer::new(upstream, client, sse))
    }

    pub(super) fn response_body<H: Host>(&mut self, vm: &Vm, host: &mut H, body_size: usize, end_of_stream: bool) {
        if !self.meter.wants_body() && self.restorer.is_none() {
            return;
        }
        // Each response chunk passes on at once: the buffer holds just this one.
        let chunk = if body_size > 0 {
            host.body(Buffer::Response, 0, body_size)
        } else {
            Vec::new()
        };
        if let Some(r) = self.restorer.as_mut() {
            let mut out = r.feed(&chunk);
            if end_of_stream {
                out.extend(r.finish());
            }
            if out != chunk && !host.replace_body(Buffer::Response, &out) {
                host.log(LogLevel::Warn, "model-router: the host refused the response rewrite");
                self.restorer = None;
            }
        }
        if let Some(ttft) = self.meter.response_body(&chunk, end_of_stream, || host.now_ns()) {
            host.metric(&Meter::ttft_op(&vm.stats.pair(&vm.config, self.flow.outcome()), ttft));
        }
        if end_of_stream && vm.config.filter_state {
            let u = self.meter.usage();
            if let Some(n) = u.input {
                host.put_filter_state(FS_INPUT_TOKENS, n.to_string().as_bytes());
            }
            if let Some(n) = u.output {
                host.put_filter_state(FS_OUTPUT_TOKENS, n.to_string().as_bytes());
            }
        }
    }
}
