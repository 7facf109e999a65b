//! The proxy-wasm ABI 0.2.1 exports the host calls, dispatched to the glue's root and HTTP
//! contexts.
//!
//! This replaces the SDK's generic dispatcher: that one is ~40 KB of the module (it serves
//! TCP, gRPC and HTTP-call contexts this filter never has), boxes every context behind trait
//! objects, and `panic!`s on a context id it does not know. Here an unknown id is ignored and the
//! request goes on. A context is taken out of its map while its callback runs, so a host call
//! that re-enters the module (resuming a stream from the tick) never meets a borrowed map.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::exchange::Action;
use crate::glue::{Http, Root};
use crate::host;

thread_local! {
    static ROOTS: RefCell<HashMap<u32, Root>> = RefCell::new(HashMap::new());
    /// Boxed: a context is moved out of the map and back for every callback (see `with_stream`),
    /// and a box moves as a pointer. (std's hash here: with `FastMap` Envoy's RSS was 13 MiB
    /// higher under load, for reasons not found; linear memory was the same.)
    static STREAMS: RefCell<HashMap<u32, Box<Http>>> = RefCell::new(HashMap::new());
}

/// Runs `f` on the HTTP context `id` (taken out of the map meanwhile); `None` if unknown.
fn with_stream<R>(id: u32, f: impl FnOnce(&mut Http) -> R) -> Option<R> {
    let mut ctx = STREAMS.with(|s| s.borrow_mut().remove(&id))?;
    let r = f(&mut ctx);
    STREAMS.with(|s| s.borrow_mut().insert(id, ctx));
    Some(r)
}

fn with_root<R>(id: u32, f: impl FnOnce(&mut Root) -> R) -> Option<R> {
    let mut ctx = ROOTS.with(|s| s.borrow_mut().remove(&id))?;
    let r = f(&mut ctx);
    ROOTS.with(|s| s.borrow_mut().insert(id, ctx));
    Some(r)
}

fn action(a: Option<Action>) -> u32 {
    a.unwrap_or(Action::Continue) as u32
}

extern "C" {
    fn __wasm_call_ctors();
}

/// Reactor initialisation (the host calls it once after instantiation).
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the module's static constructors, run once, as a WASI reactor must.
    unsafe { __wasm_call_ctors() };
    // A panic must never happen (clippy denies the ways to write one); if it does, say where.
    std::panic::set_hook(Box::new(|info| {
        host::log(host::LOG_CRITICAL, &format!("model-router: {info}"))
    }));
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host fills with data it returns (headers, bodies, properties).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        ROOTS.with(|r| r.borrow_mut().insert(context_id, Root::new(context_id)));
        return;
    }
    let shared = ROOTS.with(|r| r.borrow().get(&root_context_id).and_then(|root| root.shared()));
    STREAMS.with(|s| {
        s.borrow_mut()
            .insert(context_id, Box::new(Http::new(context_id, shared)))
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, size: usize) -> u32 {
    u32::from(with_root(root_id, |r| r.on_configure(size)).unwrap_or(false))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    // The tick may resume held streams, whose callbacks re-enter the module: run it with no
    // map borrowed.
    let Some(shared) = ROOTS.with(|r| r.borrow().get(&root_id).and_then(|root| root.shared())) else {
        return;
    };
    for (id, calls) in Root::on_tick(&shared) {
        // A request whose rate limit answer never came: it decides in its own context.
        if host::set_effective_context(id).is_ok() {
            with_stream(id, |h| h.on_callout_expired(&calls));
        }
    }
}

/// A gRPC answer: for the request that made the call, or for the root (a `Report`). Envoy
/// delivers every answer to the root context, whichever context made the call: the request is
/// found by the call's token, and made the effective context so it can reply or resume.
fn grpc_result(context_id: u32, token: u32, result: Result<&[u8], u32>) {
    let Some(shared) = ROOTS.with(|r| r.borrow().get(&context_id).and_then(|root| root.shared())) else {
        return;
    };
    match Root::caller_of(&shared, token) {
        Some(stream) => {
            if host::set_effective_context(stream).is_ok() {
                with_stream(stream, |h| h.on_grpc(token, result));
            }
        }
        None => Root::on_grpc(&shared, result),
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, response_size: usize) {
    let message = host::buffer(host::BUF_GRPC_RECEIVE, 0, response_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    grpc_result(context_id, token, Ok(&message));
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status_code: u32) {
    // A unary call that succeeded was answered in `proxy_on_grpc_receive`; a close is a failure
    // (status 0 here would mean an answer without a message: not one the service sends).
    grpc_result(context_id, token, Err(if status_code == 0 { 2 } else { status_code }));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, num_headers: usize, end_of_stream: u32) -> u32 {
    action(with_stream(id, |h| {
        let _ = num_headers;
        h.on_request_headers(end_of_stream != 0)
    }))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(id: u32, body_size: usize, end_of_stream: u32) -> u32 {
    action(with_stream(id, |h| h.on_request_body(body_size, end_of_stream != 0)))
}

/// Trailers end the body: the filter decides here what it would have at the body's end.
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(id: u32, num_trailers: usize) -> u32 {
    let _ = num_trailers;
    action(with_stream(id, |h| h.on_request_trailers()))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, num_headers: usize, end_of_stream: u32) -> u32 {
    action(with_stream(id, |h| {
        let _ = num_headers;
        h.on_response_headers(end_of_stream != 0)
    }))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(id: u32, body_size: usize, end_of_stream: u32) -> u32 {
    action(with_stream(id, |h| h.on_response_body(body_size, end_of_stream != 0)))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(id: u32, num_trailers: usize) -> u32 {
    let _ = num_trailers;
    action(with_stream(id, |h| h.on_response_trailers()))
}

#[no_mangle]
pub extern "C" fn proxy_on_log(id: u32) {
    with_stream(id, |h| h.on_log());
}

/// Every context is done at once (nothing to flush); the host then deletes it.
#[no_mangle]
pub extern "C" fn proxy_on_done(_id: u32) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    if STREAMS.with(|s| s.borrow_mut().remove(&id)).is_none() {
        ROOTS.with(|r| r.borrow_mut().remove(&id));
    }
}
