//! An in-memory host: the whole per-request protocol runs natively on it, in unit and property
//! tests, criterion benches and `wasmpack route`. It behaves as Envoy does where the filter can
//! tell: request bodies accumulate while paused, response chunks are handed over one at a time,
//! shared data has proxy-wasm's compare-and-swap rules, and it counts every host crossing.

use std::collections::{BTreeMap, HashMap};

use crate::exchange::{Buffer, GrpcCall, Host, LogLevel, Map};
use crate::header_map::HeaderMap;
use crate::policy::Store;
use crate::telemetry::MetricOp;

/// Shared data with proxy-wasm's semantics (proxy-wasm-cpp-host `SharedData::set`): CAS tokens
/// come from one counter; `cas` 0 writes unconditionally; an existing key is written only if
/// its token equals `cas`; a missing key is created whatever `cas` is.
#[derive(Debug, Clone, Default)]
pub struct SharedMem {
    data: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedMem {
    /// The keys stored, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.data.keys().cloned().collect();
        k.sort();
        k
    }

    fn next_cas(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.next_cas
    }
}

impl Store for SharedMem {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match self.data.get(key) {
            Some((v, c)) => (Some(v.clone()), *c),
            None => (None, 0),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), bool> {
        if let Some((_, current)) = self.data.get(key) {
            if cas != 0 && cas != *current {
                return Err(true);
            }
        }
        let token = self.next_cas();
        self.data.insert(key.to_string(), (value.to_vec(), token));
        Ok(())
    }
}

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct MemoryHost {
    pub now_ns: u64,
    pub request_headers: Vec<(String, String)>,
    /// The request body buffered so far.
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    /// The response chunk being passed.
    pub response_body: Vec<u8>,
    /// Properties by path joined with `.` (e.g. `connection.uri_san_peer_certificate`).
    pub properties: HashMap<String, Vec<u8>>,
    pub filter_state: BTreeMap<String, Vec<u8>>,
    pub reply: Option<LocalReply>,
    /// Counter and gauge values by stat name.
    pub metrics: BTreeMap<String, i64>,
    /// Histogram samples by stat name.
    pub histograms: BTreeMap<String, Vec<u64>>,
    pub shared: SharedMem,
    pub logs: Vec<(LogLevel, String)>,
    pub route_cache_cleared: u32,
    pub tick_ms: u32,
    /// Streams resumed by the safety net.
    pub resumed: Vec<u32>,
    /// Refuse body rewrites (as a host may).
    pub refuse_body_rewrite: bool,
    /// Host calls made, by call (each one is a crossing in a real proxy).
    pub crossings_by_call: BTreeMap<&'static str, u64>,
    /// Every header the filter set or removed, in order: (map, name, `Some(value)` or `None`).
    pub header_edits: Vec<(Map, String, Option<String>)>,
    /// gRPC calls started: (token, call).
    pub grpc_calls: Vec<(u32, SentCall)>,
    /// Refuse gRPC calls (as Envoy does for a cluster it does not know).
    pub refuse_grpc: bool,
    /// What `memory_bytes` answers.
    pub memory: u64,
    /// Host calls to refuse (`set_header`, `remove_header`, `set_filter_state`,
    /// `clear_route_cache`), as a proxy may.
    pub refuse: Vec<&'static str>,
}

/// A gRPC call the filter started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    pub service: Vec<u8>,
    pub service_name: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout_ms: u32,
    pub detached: bool,
}

impl MemoryHost {
    pub fn new() -> Self {
        MemoryHost::default()
    }

    fn cross(&mut self, call: &'static str) {
        *self.crossings_by_call.entry(call).or_default() += 1;
    }

    fn refused(&self, call: &str) -> bool {
        self.refuse.contains(&call)
    }

    /// Host calls made in all.
    pub fn crossings(&self) -> u64 {
        self.crossings_by_call.values().sum()
    }

    fn map(&mut self, map: Map) -> &mut Vec<(String, String)> {
        match map {
            Map::Request => &mut self.request_headers,
            Map::Response => &mut self.response_headers,
        }
    }

    /// The value of a header (first one).
    pub fn header(&self, map: Map, name: &str) -> Option<&str> {
        let pairs = match map {
            Map::Request => &self.request_headers,
            Map::Response => &self.response_headers,
        };
        pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A counter's or gauge's value by metric name and labels.
    pub fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> i64 {
        self.metrics
            .get(&crate::telemetry::stat_name(metric, labels))
            .copied()
            .unwrap_or(0)
    }
}

impl Store for MemoryHost {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        self.shared.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), bool> {
        self.cross("shared_set");
        self.shared.set(key, value, cas)
    }
}

impl Host for MemoryHost {
    fn now_ns(&mut self) -> u64 {
        self.cross("now_ns");
        self.now_ns
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        self.cross("log");
        self.logs.push((level, message.to_string()));
    }

    fn headers(&mut self, map: Map) -> HeaderMap {
        self.cross("headers");
        HeaderMap::from_pairs(self.map(map))
    }

    fn set_header(&mut self, map: Map, name: &str, value: &str) -> bool {
        self.cross("set_header");
        if self.refused("set_header") {
            return false;
        }
        self.header_edits.push((map, name.to_string(), Some(value.to_string())));
        let pairs = self.map(map);
        pairs.retain(|(k, _)| k != name);
        pairs.push((name.to_string(), value.to_string()));
        true
    }

    fn remove_header(&mut self, map: Map, name: &str) -> bool {
        self.cross("remove_header");
        if self.refused("remove_header") {
            return false;
        }
        self.header_edits.push((map, name.to_string(), None));
        self.map(map).retain(|(k, _)| k != name);
        true
    }

    fn body(&mut self, which: Buffer, start: usize, len: usize) -> Vec<u8> {
        self.cross("body");
        let b = match which {
            Buffer::Request => &self.request_body,
            Buffer::Response => &self.response_body,
        };
        let end = start.saturating_add(len).min(b.len());
        b.get(start.min(end)..end).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn replace_body(&mut self, which: Buffer, bytes: &[u8]) -> bool {
        self.cross("replace_body");
        if self.refuse_body_rewrite {
            return false;
        }
        match which {
            Buffer::Request => self.request_body = bytes.to_vec(),
            Buffer::Response => self.response_body = bytes.to_vec(),
        }
        true
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.cross("property");
        self.properties.get(&path.join(".")).cloned()
    }

    fn set_filter_state(&mut self, key: &str, value: &[u8]) -> bool {
        self.cross("set_filter_state");
        if self.refused("set_filter_state") {
            return false;
        }
        self.filter_state.insert(key.to_string(), value.to_vec());
        true
    }

    fn send_reply(&mut self, status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.cross("send_reply");
        self.reply = Some(LocalReply {
            status,
            details: details.to_string(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.to_vec(),
        });
        true
    }

    fn clear_route_cache(&mut self) -> bool {
        self.cross("clear_route_cache");
        if self.refused("clear_route_cache") {
            return false;
        }
        self.route_cache_cleared += 1;
        true
    }

    fn metric(&mut self, op: &MetricOp) {
        self.cross("metric");
        match op {
            MetricOp::Add { name, delta, .. } => *self.metrics.entry(name.to_string()).or_insert(0) += delta,
            MetricOp::Record { name, value } => self.histograms.entry(name.to_string()).or_default().push(*value),
            MetricOp::Set { name, value } => {
                self.metrics
                    .insert(name.to_string(), i64::try_from(*value).unwrap_or(i64::MAX));
            }
        }
    }

    fn set_tick_ms(&mut self, ms: u32) {
        self.cross("set_tick_ms");
        self.tick_ms = ms;
    }

    fn resume(&mut self, context_id: u32) -> bool {
        self.cross("resume");
        self.resumed.push(context_id);
        true
    }

    fn reply_to(
        &mut self,
        _context_id: u32,
        status: u32,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> bool {
        self.send_reply(status, details, headers, body)
    }
    fn memory_bytes(&mut self) -> u64 {
        self.memory
    }
    fn grpc_call(&mut self, call: &GrpcCall<'_>) -> Option<u32> {
        self.cross("grpc_call");
        if self.refuse_grpc {
            return None;
        }
        let token = u32::try_from(self.grpc_calls.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.grpc_calls.push((
            token,
            SentCall {
                service: call.service.to_vec(),
                service_name: call.service_name.to_string(),
                method: call.method.to_string(),
                message: call.message.to_vec(),
                timeout_ms: call.timeout_ms,
                detached: call.detached,
            },
        ));
        Some(token)
    }
}
