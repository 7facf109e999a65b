//! The proxy-wasm host calls the filter makes, returning errors instead of panicking.
//!
//! The SDK's own wrappers (`proxy_wasm::hostcalls`) `panic!` on any status they do not expect,
//! which would trap the VM (for example setting a request header once the headers have gone
//! upstream). These wrappers report every status to the caller. Statuses are plain `u32` so that
//! an unexpected value from the host is never an invalid enum.

#![allow(clashing_extern_declarations)]

use std::ptr::{null, null_mut};

use crate::header_map::{self, HeaderMap};

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const BUF_REQUEST_BODY: u32 = 0;
pub const BUF_RESPONSE_BODY: u32 = 1;
pub const BUF_GRPC_RECEIVE: u32 = 5;
pub const BUF_PLUGIN_CONFIGURATION: u32 = 7;
pub const STREAM_REQUEST: u32 = 0;
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
pub const LOG_CRITICAL: u32 = 5;
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(kind: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_size: usize, v: *const u8, v_size: usize) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_size: usize, v: *const u8, v_size: usize) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_set_effective_context(id: u32) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        args: *const u8,
        args_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, v: *const u8, v_size: usize, cas: u32) -> u32;
    fn proxy_grpc_call(
        service: *const u8,
        service_size: usize,
        service_name: *const u8,
        service_name_size: usize,
        method: *const u8,
        method_size: usize,
        metadata: *const u8,
        metadata_size: usize,
        message: *const u8,
        message_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

pub type HostResult<T> = Result<T, u32>;

fn status(s: u32) -> HostResult<()> {
    if s == OK {
        Ok(())
    } else {
        Err(s)
    }
}

/// Takes ownership of memory the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data`/`size` must come from a host call that just returned Ok.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    Some(Vec::from_raw_parts(data, size, size))
}

pub fn log(level: u32, message: &str) {
    unsafe {
        proxy_log(level, message.as_ptr(), message.len());
    }
}

/// Host time in nanoseconds since the epoch, 0 if the host will not say.
pub fn now_nanos() -> u64 {
    let mut t = 0u64;
    unsafe {
        proxy_get_current_time_nanoseconds(&mut t);
    }
    t
}

pub fn set_tick_period_ms(ms: u32) -> HostResult<()> {
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

pub fn buffer(kind: u32, start: usize, max: usize) -> HostResult<Option<Vec<u8>>> {
    let mut data = null_mut();
    let mut size = 0usize;
    unsafe {
        match proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) {
            OK => Ok(take(data, size)),
            NOT_FOUND => Ok(None),
            s => Err(s),
        }
    }
}

pub fn set_buffer(kind: u32, start: usize, size: usize, value: &[u8]) -> HostResult<()> {
    status(unsafe { proxy_set_buffer_bytes(kind, start, size, value.as_ptr(), value.len()) })
}

/// All headers of a map in one host call (one crossing instead of one per header).
pub fn headers(map: u32) -> HeaderMap {
    let mut data = null_mut();
    let mut size = 0usize;
    let raw = unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            OK => take(data, size),
            _ => None,
        }
    };
    HeaderMap::parse(raw.unwrap_or_default())
}

pub fn set_header(map: u32, name: &str, value: &str) -> HostResult<()> {
    status(unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub fn remove_header(map: u32, name: &str) -> HostResult<()> {
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

fn property_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let p = property_path(path);
    let mut data = null_mut();
    let mut size = 0usize;
    unsafe {
        match proxy_get_property(p.as_ptr(), p.len(), &mut data, &mut size) {
            OK => take(data, size),
            _ => None,
        }
    }
}

pub fn set_property(path: &[&str], value: &[u8]) -> HostResult<()> {
    let p = property_path(path);
    status(unsafe { proxy_set_property(p.as_ptr(), p.len(), value.as_ptr(), value.len()) })
}

pub fn send_local_response(code: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
    let h = header_map::encode(headers);
    status(unsafe {
        proxy_send_local_response(
            code,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    })
}

pub fn resume_request() -> HostResult<()> {
    status(unsafe { proxy_continue_stream(STREAM_REQUEST) })
}

pub fn set_effective_context(id: u32) -> HostResult<()> {
    status(unsafe { proxy_set_effective_context(id) })
}

pub fn call_foreign(name: &str, args: &[u8]) -> HostResult<Option<Vec<u8>>> {
    let mut data = null_mut();
    let mut size = 0usize;
    let args_ptr = if args.is_empty() { null() } else { args.as_ptr() };
    unsafe {
        match proxy_call_foreign_function(name.as_ptr(), name.len(), args_ptr, args.len(), &mut data, &mut size) {
            OK => Ok(take(data, size)),
            s => Err(s),
        }
    }
}

pub fn define_metric(kind: u32, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> HostResult<()> {
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    status(unsafe { proxy_record_metric(id, value) })
}

/// Shared data (shared by every VM with the same vm_id in one Envoy): value and CAS token.
pub fn shared_data(key: &str) -> HostResult<(Option<Vec<u8>>, u32)> {
    let mut data = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    unsafe {
        match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            OK => Ok((take(data, size), cas)),
            NOT_FOUND => Ok((None, 0)),
            s => Err(s),
        }
    }
}

/// Sets shared data if its CAS token is still `cas` (0: unconditionally); `Err(CAS_MISMATCH)` otherwise.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> HostResult<()> {
    status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Starts a unary gRPC call; its token.
pub fn grpc_call(service: &[u8], service_name: &str, method: &str, message: &[u8], timeout_ms: u32) -> HostResult<u32> {
    let metadata = header_map::encode::<&str, &str>(&[]);
    let mut token = 0u32;
    status(unsafe {
        proxy_grpc_call(
            service.as_ptr(),
            service.len(),
            service_name.as_ptr(),
            service_name.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}
