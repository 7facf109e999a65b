//! The benchmark's floors.
//!
//! Variant (b), with an empty configuration: the least a body-routing filter must do — hold the
//! request headers, buffer the body, set one header — so model-router's own cost can be told
//! apart from the cost of running any Wasm filter that reads the body.
//!
//! Variant (h), configuration `crossings`: the same, plus every host call model-router makes for
//! the benchmark's request (c) and nothing else — both header maps and both bodies read, the
//! route and model headers written and the route cache cleared, the route header on the
//! response, six metric updates by id, the clock twice. It decides nothing: what (h) costs over
//! (b) is what any proxy-wasm filter doing this job through the ABI pays in Envoy, and what (c)
//! costs over (h) is model-router's own work.
//!
//! Words after `crossings` leave parts out, to measure them one at a time (`envoy-bench
//! --crossings "-metrics -clock"`): `-metrics`, `-clock`, `-reqheaders`, `-respheaders`
//! (the header-map reads), `-reqbody`, `-respbody` (the body reads), `-sets` (all header writes
//! but the route header), `-routecache`.

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::cell::Cell;
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

    extern "C" {
        fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> Status;
    }

    /// Reads a header map as the host hands it over (one crossing, and the host's call back into
    /// the VM's allocator) and lets it go: no parsing, so (h) has no Wasm work of its own.
    fn read_map(map: MapType) {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: the host writes a pointer it got from `proxy_on_memory_allocate` and its size.
        unsafe {
            if proxy_get_header_map_pairs(map, &mut data, &mut size) == Status::Ok && !data.is_null() {
                drop(Vec::from_raw_parts(data, size, size));
            }
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { setup: Rc::new(Setup::default()) }) });
    }}

    /// The six metric updates of (c) go to these five metrics (the in-flight gauge twice).
    const METRICS: [(MetricType, &str); 5] = [
        (MetricType::Counter, "floor_requests_total"),
        (MetricType::Gauge, "floor_in_flight_requests"),
        (MetricType::Histogram, "floor_request_duration_ms"),
        (MetricType::Counter, "type=.=input;.;floor_tokens_total"),
        (MetricType::Counter, "type=.=output;.;floor_tokens_total"),
    ];
    const REQUESTS: usize = 0;
    const IN_FLIGHT: usize = 1;
    const DURATION: usize = 2;
    const TOKENS_IN: usize = 3;
    const TOKENS_OUT: usize = 4;

    /// The parts of (h) that `crossings -word` leaves out, one bit each.
    const PARTS: [(&str, u32); 8] = [
        ("-metrics", METRIC_UPDATES),
        ("-clock", CLOCK),
        ("-reqheaders", REQ_HEADERS),
        ("-respheaders", RESP_HEADERS),
        ("-reqbody", REQ_BODY),
        ("-respbody", RESP_BODY),
        ("-sets", SETS),
        ("-routecache", ROUTE_CACHE),
    ];
    const METRIC_UPDATES: u32 = 1;
    const CLOCK: u32 = 2;
    const REQ_HEADERS: u32 = 4;
    const RESP_HEADERS: u32 = 8;
    const REQ_BODY: u32 = 16;
    const RESP_BODY: u32 = 32;
    const SETS: u32 = 64;
    const ROUTE_CACHE: u32 = 128;

    /// What the root context configured, shared with the HTTP contexts.
    #[derive(Default)]
    struct Setup {
        crossings: Cell<bool>,
        /// Parts left out, for measuring one at a time (`crossings -metrics -clock ...`).
        skip: Cell<u32>,
        /// Metric ids, defined once (as model-router caches them), in the order of `METRICS`.
        metrics: [Cell<u32>; METRICS.len()],
    }

    struct Root {
        setup: Rc<Setup>,
    }
    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let config = self.get_plugin_configuration().unwrap_or_default();
            let config = String::from_utf8_lossy(&config);
            let mut words = config.split_whitespace();
            let crossings = words.next() == Some("crossings");
            self.setup.crossings.set(crossings);
            let mut skip = 0;
            for w in words {
                let Some((_, part)) = PARTS.iter().find(|(word, _)| *word == w) else {
                    let known: Vec<&str> = PARTS.iter().map(|(word, _)| *word).collect();
                    let _ = hostcalls::log(
                        LogLevel::Error,
                        &format!(
                            "floor filter: unknown word {w:?} after `crossings` (known: {})",
                            known.join(" ")
                        ),
                    );
                    return false;
                };
                skip |= part;
            }
            self.setup.skip.set(skip);
            if crossings {
                // Names shaped like model-router's (labels in the name, extracted as tags).
                let labels = "model=.=llama-3-8b;.;destination=.=llama-v1;.;";
                for (id, (kind, name)) in self.setup.metrics.iter().zip(METRICS) {
                    id.set(hostcalls::define_metric(kind, &format!("{labels}{name}")).unwrap_or(0));
                }
            }
            true
        }
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            if self.setup.crossings.get() {
                return Some(Box::new(Crossings {
                    setup: self.setup.clone(),
                    start: 0,
                }));
            }
            Some(Box::new(Floor))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Floor;
    impl Context for Floor {}
    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            if end_of_stream {
                self.set_http_request_header("x-floor", Some("1"));
                return Action::Continue;
            }
            Action::Pause
        }
        fn on_http_request_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            self.set_http_request_header("x-floor", Some("1"));
            Action::Continue
        }
    }

    fn now() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }

    struct Crossings {
        setup: Rc<Setup>,
        start: u64,
    }
    impl Crossings {
        fn does(&self, part: u32) -> bool {
            self.setup.skip.get() & part == 0
        }
    }
    impl Context for Crossings {}
    impl HttpContext for Crossings {
        fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            if self.does(REQ_HEADERS) {
                read_map(MapType::HttpRequestHeaders);
            }
            if self.does(CLOCK) {
                self.start = now();
            }
            if end_of_stream {
                return Action::Continue;
            }
            Action::Pause
        }
        fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            if self.does(REQ_BODY) {
                let _ = self.get_http_request_body(0, size);
            }
            self.set_http_request_header("x-ai-route", Some("llama-v1"));
            if self.does(SETS) {
                self.set_http_request_header("x-ai-model", Some("llama-3-8b"));
            }
            if self.does(ROUTE_CACHE) {
                let _ = hostcalls::call_foreign_function("clear_route_cache", None);
            }
            if self.does(METRIC_UPDATES) {
                let _ = hostcalls::increment_metric(self.setup.metrics[IN_FLIGHT].get(), 1);
            }
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            if self.does(RESP_HEADERS) {
                read_map(MapType::HttpResponseHeaders);
            }
            if self.does(SETS) {
                self.set_http_response_header("x-ai-route", Some("llama-v1"));
            }
            Action::Continue
        }
        fn on_http_response_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
            if self.does(RESP_BODY) {
                let _ = self.get_http_response_body(0, size);
            }
            Action::Continue
        }
        fn on_log(&mut self) {
            let end = if self.does(CLOCK) { now() } else { 0 };
            let ms = end.saturating_sub(self.start) / 1_000_000;
            if !self.does(METRIC_UPDATES) {
                return;
            }
            let id = |i: usize| self.setup.metrics[i].get();
            let _ = hostcalls::increment_metric(id(REQUESTS), 1);
            let _ = hostcalls::increment_metric(id(IN_FLIGHT), -1);
            let _ = hostcalls::record_metric(id(DURATION), ms);
            let _ = hostcalls::increment_metric(id(TOKENS_IN), 512);
            let _ = hostcalls::increment_metric(id(TOKENS_OUT), 12);
        }
    }
}
