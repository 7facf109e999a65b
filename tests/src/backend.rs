//! A fake inference server speaking the OpenAI, Anthropic and KServe wire formats (JSON and SSE).
//! It records every request it receives and the exact bytes and token counts it answers with, so
//! tests can compare what the filter reports against the truth.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Token counts the backend reported in one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Usage the response carried (None when it carried none).
    pub reported: Option<Reported>,
    /// Exact response body bytes (for streams: everything sent).
    pub sent: Vec<u8>,
}

impl Exchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A running fake backend. Stops when dropped (its task is aborted).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
    /// `set_failing`: `u32::MAX` answers normally, 0 closes every connection, `HANG` holds
    /// every answer until the mode changes, else a status.
    failing: Arc<std::sync::atomic::AtomicU32>,
    /// Wakes held answers when the mode changes.
    changed: Arc<tokio::sync::Notify>,
    /// The connections' tasks (`stop` ends them with the listener).
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// `Backend::failing`: answers wait (a backend that accepted the request and never answers).
const HANG: u32 = 1;

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("binding a backend port: {e}"),
        };
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let (n, l) = (name.to_string(), log.clone());
        let failing = Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
        let changed = Arc::new(tokio::sync::Notify::new());
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (f, c, conns) = (failing.clone(), changed.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, l, f, c) = (n.clone(), l.clone(), f.clone(), c.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let now = f.load(std::sync::atomic::Ordering::SeqCst);
                        let (n, l, f, c) = (n.clone(), l.clone(), f.clone(), c.clone());
                        if now != u32::MAX {
                            // Counted like any request it received.
                            if let Ok(mut log) = l.lock() {
                                log.push(Exchange {
                                    method: req.method().to_string(),
                                    path: req.uri().path().to_string(),
                                    headers: Vec::new(),
                                    body: Bytes::new(),
                                    reported: None,
                                    sent: Vec::new(),
                                });
                            }
                        }
                        async move {
                            let mut now = now;
                            while now == HANG {
                                let woken = c.notified();
                                now = f.load(std::sync::atomic::Ordering::SeqCst);
                                if now == HANG {
                                    woken.await;
                                    now = f.load(std::sync::atomic::Ordering::SeqCst);
                                }
                            }
                            match now {
                                u32::MAX => handle(n, l, req).await.map_err(|e| match e {}),
                                // An upstream reset: hyper closes the connection on a service error.
                                0 => Err(std::io::Error::other("test reset")),
                                s => {
                                    let b = json!({"error": {"message": "failing on command", "type": "server_error"}});
                                    Ok(Response::builder()
                                        .status(u16::try_from(s).unwrap_or(500))
                                        .header("content-type", "application/json")
                                        .body(
                                            Full::new(Bytes::from(b.to_string()))
                                                .map_err(|never| match never {})
                                                .boxed(),
                                        )
                                        .unwrap())
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                if let Ok(mut conns) = conns.lock() {
                    conns.retain(|h| !h.is_finished());
                    conns.push(conn.abort_handle());
                }
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            log,
            task,
            failing,
            changed,
            connections,
        }
    }

    /// From now on: `Some(status)` answers every request with it, `Some(0)` resets every
    /// request (closes its connection without an answer), `None` answers normally. Answers
    /// held by `hang` go on in the new mode.
    pub fn set_failing(&self, how: Option<u16>) {
        let v = how.map_or(u32::MAX, u32::from);
        self.failing.store(v, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// From now on every request is received (and recorded) but not answered, until the next
    /// `set_failing`: a backend that hangs before its first byte.
    pub fn hang(&self) {
        self.failing.store(HANG, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the listener and every connection: from now on connecting to it is refused.
    pub fn stop(&self) {
        self.task.abort();
        if let Ok(mut conns) = self.connections.lock() {
            for c in conns.drain(..) {
                c.abort();
            }
        }
    }

    /// Connecting to the backend's port is refused (`stop` took effect).
    pub fn refuses_connections(&self) -> bool {
        std::net::TcpStream::connect(self.addr).is_err()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }
}

/// Body errors abort the connection (an upstream reset, for `x-test-reset-after`).
type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn usage_of(body: &[u8], max_tokens: u64) -> Reported {
    // Deterministic, and different per request so sums are meaningful.
    Reported {
        input: 10 + (body.len() as u64 % 17),
        output: max_tokens,
        cached_input: 2,
        reasoning: 1,
    }
}

async fn handle(
    name: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let delay_ms: u64 = header(&headers, "x-test-chunk-delay-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let status: Option<u16> = header(&headers, "x-test-status").and_then(|v| v.parse().ok());
    let reset_after: Option<usize> = header(&headers, "x-test-reset-after").and_then(|v| v.parse().ok());
    // A long stream (this many chat deltas, a hundred per chunk) whose last two chunks (usage,
    // `[DONE]`) come only after a pause: time for a client to leave before its usage.
    let deltas: Option<u64> = header(&headers, "x-test-deltas").and_then(|v| v.parse().ok());
    let hold_last_ms: u64 = header(&headers, "x-test-hold-last-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Like real providers: gzip JSON answers when the client accepts it (or always, to test a
    // backend that ignores what was asked).
    let gzip = header(&headers, "x-test-gzip") == Some("always")
        || header(&headers, "accept-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("gzip"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req_json["model"].as_str().unwrap_or("unknown").to_string();
    let stream = req_json["stream"] == json!(true);
    let include_usage = req_json["stream_options"]["include_usage"] == json!(true);
    let max_tokens = req_json["max_tokens"].as_u64().unwrap_or(3).clamp(1, 50);
    let u = usage_of(&body, max_tokens);

    let mut exchange = Exchange {
        method,
        path: path.clone(),
        headers,
        body: body.clone(),
        reported: None,
        sent: Vec::new(),
    };
    let p = path.split('?').next().unwrap_or("");
    let provider = if status.is_none() {
        crate::providers::answer(&path, &req_json, &u)
    } else {
        None
    };
    let (status_code, content_type, events_or_body) = if let Some((ct, answer, r)) = provider {
        exchange.reported = Some(r);
        match answer {
            crate::providers::Answer::Body(b) => (200, ct, Err(b)),
            crate::providers::Answer::Stream(ev) => (200, ct, Ok(ev)),
        }
    } else if let Some(s) = status {
        let b = json!({"error": {"message": "test error", "type": "server_error", "code": null}}).to_string();
        (s, "application/json", Err(b.into_bytes()))
    } else if p.ends_with("/chat/completions") || p.ends_with("/completions") {
        if stream {
            let mut ev = Vec::new();
            if let Some(n) = deltas {
                let c = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": null}], "usage": Value::Null});
                let one = format!("data: {c}\n\n");
                for start in (0..n).step_by(100) {
                    ev.push(one.repeat((n - start).min(100) as usize));
                }
            }
            for i in 0..max_tokens {
                let c = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}],
                    "usage": Value::Null});
                ev.push(format!("data: {c}\n\n"));
            }
            if include_usage {
                exchange.reported = Some(u.clone());
                let c = json!({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": {"prompt_tokens": u.input, "completion_tokens": u.output, "total_tokens": u.input + u.output,
                              "prompt_tokens_details": {"cached_tokens": u.cached_input},
                              "completion_tokens_details": {"reasoning_tokens": u.reasoning}}});
                ev.push(format!("data: {c}\n\n"));
            }
            ev.push("data: [DONE]\n\n".to_string());
            (
                200,
                "text/event-stream",
                Ok(ev.into_iter().map(String::into_bytes).collect()),
            )
        } else {
            exchange.reported = Some(u.clone());
            let b = json!({"id": "c1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": u.input, "completion_tokens": u.output, "total_tokens": u.input + u.output,
                          "prompt_tokens_details": {"cached_tokens": u.cached_input},
                          "completion_tokens_details": {"reasoning_tokens": u.reasoning}}});
            (200, "application/json", Err(b.to_string().into_bytes()))
        }
    } else if p.ends_with("/embeddings") {
        let r = Reported {
            output: 0,
            cached_input: 0,
            reasoning: 0,
            ..u
        };
        exchange.reported = Some(r.clone());
        let b = json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
            "usage": {"prompt_tokens": r.input, "total_tokens": r.input}});
        (200, "application/json", Err(b.to_string().into_bytes()))
    } else if p.ends_with("/v1/messages") {
        let r = Reported { reasoning: 0, ..u };
        exchange.reported = Some(r.clone());
        if stream {
            let mut ev = vec![
                sse(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
                    "model": model, "content": [], "usage": {"input_tokens": r.input, "cache_read_input_tokens": r.cached_input, "output_tokens": 1}}}),
                ),
                sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                ": keep-alive comment\n\n".to_string(),
                sse("ping", json!({"type": "ping"})),
            ];
            for i in 0..r.output {
                ev.push(sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("w{i}")}})));
            }
            ev.push(sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            // Cumulative: the first delta reports less than the last.
            ev.push(sse(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": null}, "usage": {"output_tokens": 1}}),
            ));
            ev.push(sse("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": r.output}})));
            ev.push(sse("message_stop", json!({"type": "message_stop"})));
            (
                200,
                "text/event-stream",
                Ok(ev.into_iter().map(String::into_bytes).collect()),
            )
        } else {
            let b = json!({"id": "m1", "type": "message", "role": "assistant", "model": model, "content": [{"type": "text", "text": "hi"}],
                "usage": {"input_tokens": r.input, "output_tokens": r.output, "cache_read_input_tokens": r.cached_input}});
            (200, "application/json", Err(b.to_string().into_bytes()))
        }
    } else if p.ends_with("/v1/responses") {
        exchange.reported = Some(u.clone());
        let usage = json!({"input_tokens": u.input, "input_tokens_details": {"cached_tokens": u.cached_input},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning}, "total_tokens": u.input + u.output});
        if stream {
            let mut ev = vec![sse(
                "response.created",
                json!({"type": "response.created", "sequence_number": 0, "response": {"status": "in_progress", "usage": null}}),
            )];
            for i in 0..u.output {
                ev.push(sse(
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "sequence_number": i + 1, "delta": format!("d{i}")}),
                ));
            }
            ev.push(sse("response.completed", json!({"type": "response.completed", "sequence_number": 99, "response": {"status": "completed", "usage": usage}})));
            (
                200,
                "text/event-stream",
                Ok(ev.into_iter().map(String::into_bytes).collect()),
            )
        } else {
            let b = json!({"id": "r1", "object": "response", "status": "completed", "model": model, "output": [], "usage": usage});
            (200, "application/json", Err(b.to_string().into_bytes()))
        }
    } else if p.ends_with("/audio/transcriptions") {
        // As OpenAI's gpt-4o-transcribe answers: tokens, with audio and text input parts.
        let r = Reported {
            cached_input: 0,
            reasoning: 0,
            ..u
        };
        exchange.reported = Some(r.clone());
        let b = json!({"text": "hello", "usage": {"type": "tokens", "input_tokens": r.input, "output_tokens": r.output,
            "total_tokens": r.input + r.output, "input_token_details": {"audio_tokens": r.input, "text_tokens": 0}}});
        (200, "application/json", Err(b.to_string().into_bytes()))
    } else if p.starts_with("/v2/models/") {
        let name = p.trim_start_matches("/v2/models/").split('/').next().unwrap_or("");
        (
            200,
            "application/json",
            Err(json!({"model_name": name, "outputs": []}).to_string().into_bytes()),
        )
    } else {
        (
            200,
            "application/json",
            Err(json!({"ok": true, "backend": name}).to_string().into_bytes()),
        )
    };

    let resp = Response::builder()
        .status(status_code)
        .header("content-type", content_type)
        .header("x-backend", name.as_str());
    match events_or_body {
        Err(full) => {
            exchange.sent = full.clone();
            push(&log, exchange);
            let (resp, bytes) = if gzip {
                (resp.header("content-encoding", "gzip"), gzipped(&full))
            } else {
                (resp, full)
            };
            Ok(resp
                .body(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed())
                .unwrap_or_else(|_| Response::new(empty())))
        }
        Ok(events) => {
            exchange.sent = events.concat();
            push(&log, exchange);
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let n = events.len();
                for (i, e) in events.into_iter().enumerate() {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    if hold_last_ms > 0 && i + 2 == n {
                        tokio::time::sleep(Duration::from_millis(hold_last_ms)).await;
                    }
                    if reset_after == Some(i) {
                        let _ = tx.send(Err(std::io::Error::other("test: upstream reset"))).await;
                        return;
                    }
                    if tx.send(Ok(Frame::data(Bytes::from(e)))).await.is_err() {
                        return; // the client went away
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            Ok(resp
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap_or_else(|_| Response::new(empty())))
        }
    }
}

fn gzipped(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(b);
    e.finish().unwrap_or_default()
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

fn sse(event: &str, data: Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn push(log: &Mutex<Vec<Exchange>>, e: Exchange) {
    if let Ok(mut l) = log.lock() {
        l.push(e);
    }
}
