//! Answers of the APIs that name their model in the path or stream without SSE, in the shapes
//! the providers document (recorded-shape bodies): Gemini (JSON, `alt=sse`, a JSON array sent in
//! pieces), Amazon Bedrock (Converse JSON, `converse-stream` in AWS event-stream framing with
//! correct CRCs, `invoke`), Cohere v2 (JSON, SSE) and Ollama (JSON, NDJSON).

use serde_json::{json, Value};

use crate::backend::Reported;

/// A whole body, or the pieces of a stream (each sent as one chunk).
pub enum Answer {
    Body(Vec<u8>),
    Stream(Vec<Vec<u8>>),
}

/// The provider answer for `path` (query included), if it is one of theirs.
pub fn answer(path: &str, req: &Value, u: &Reported) -> Option<(&'static str, Answer, Reported)> {
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    let p = percent_decode(p);
    let reported = Reported {
        input: u.input,
        output: u.output,
        cached_input: 0,
        reasoning: 0,
    };
    let (i, o) = (u.input, u.output);
    if p.contains(":generateContent") || p.contains(":streamGenerateContent") {
        let chunk = |k: u64, last: bool| {
            let mut usage = json!({"promptTokenCount": i, "totalTokenCount": i + k});
            if k > 0 {
                usage["candidatesTokenCount"] = k.into();
            }
            let mut cand = json!({"content": {"parts": [{"text": format!("w{k} ")}], "role": "model"}, "index": 0});
            if last {
                cand["finishReason"] = "STOP".into();
            }
            json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": "gemini-2.0-flash"}).to_string()
        };
        if p.contains(":generateContent") {
            return Some(("application/json", Answer::Body(chunk(o, true).into_bytes()), reported));
        }
        let chunks: Vec<String> = (1..=o).map(|k| chunk(k, k == o)).collect();
        if query.contains("alt=sse") {
            let ev = chunks
                .iter()
                .map(|c| format!("data: {c}\r\n\r\n").into_bytes())
                .collect();
            return Some(("text/event-stream", Answer::Stream(ev), reported));
        }
        // As Google sends it: `[{…}` then `,\r\n{…}` per piece, then `]`.
        let mut ev: Vec<Vec<u8>> = chunks
            .iter()
            .enumerate()
            .map(|(n, c)| format!("{}{c}", if n == 0 { "[" } else { ",\r\n" }).into_bytes())
            .collect();
        ev.push(b"]".to_vec());
        return Some(("application/json", Answer::Stream(ev), reported));
    }
    if let Some(rest) = p.strip_prefix("/model/") {
        let op = rest.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
        let usage = json!({"inputTokens": i, "outputTokens": o, "totalTokens": i + o});
        return match op.as_str() {
            "converse" => {
                let b = json!({"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                    "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 120}});
                Some(("application/json", Answer::Body(b.to_string().into_bytes()), reported))
            }
            "converse-stream" => {
                let mut ev = vec![event("messageStart", json!({"role": "assistant"}))];
                for k in 0..o {
                    ev.push(event(
                        "contentBlockDelta",
                        json!({"contentBlockIndex": 0, "delta": {"text": format!("w{k}")}}),
                    ));
                }
                ev.push(event("contentBlockStop", json!({"contentBlockIndex": 0})));
                ev.push(event("messageStop", json!({"stopReason": "end_turn"})));
                ev.push(event(
                    "metadata",
                    json!({"usage": usage, "metrics": {"latencyMs": 120}}),
                ));
                Some(("application/vnd.amazon.eventstream", Answer::Stream(ev), reported))
            }
            "invoke" => {
                let b = json!({"id": "msg", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}],
                    "usage": {"input_tokens": i, "output_tokens": o}});
                Some(("application/json", Answer::Body(b.to_string().into_bytes()), reported))
            }
            _ => None,
        };
    }
    let stream = req["stream"] == json!(true);
    if p == "/v2/chat" {
        let usage = json!({"billed_units": {"input_tokens": i / 2, "output_tokens": o}, "tokens": {"input_tokens": i, "output_tokens": o}});
        if !stream {
            let b = json!({"id": "c", "finish_reason": "COMPLETE", "message": {"role": "assistant",
                "content": [{"type": "text", "text": "hi"}]}, "usage": usage});
            return Some(("application/json", Answer::Body(b.to_string().into_bytes()), reported));
        }
        let sse = |t: &str, d: Value| format!("event: {t}\ndata: {d}\n\n").into_bytes();
        let mut ev = vec![sse(
            "message-start",
            json!({"type": "message-start", "id": "c", "delta": {"message": {"role": "assistant"}}}),
        )];
        for k in 0..o {
            ev.push(sse(
                "content-delta",
                json!({"type": "content-delta", "index": 0,
                "delta": {"message": {"content": {"text": format!("w{k}")}}}}),
            ));
        }
        ev.push(sse(
            "message-end",
            json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": usage}}),
        ));
        return Some(("text/event-stream", Answer::Stream(ev), reported));
    }
    if p == "/api/chat" {
        let model = req["model"].as_str().unwrap_or("");
        let last = json!({"model": model, "message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": "stop", "total_duration": 5, "prompt_eval_count": i, "eval_count": o});
        // Ollama streams unless told not to.
        if req["stream"] == json!(false) {
            return Some((
                "application/json",
                Answer::Body(last.to_string().into_bytes()),
                reported,
            ));
        }
        let mut ev: Vec<Vec<u8>> = (0..o)
            .map(|k| {
                format!(
                    "{}\n",
                    json!({"model": model, "message": {"role": "assistant", "content": format!("w{k}")}, "done": false})
                )
                .into_bytes()
            })
            .collect();
        ev.push(format!("{last}\n").into_bytes());
        return Some(("application/x-ndjson", Answer::Stream(ev), reported));
    }
    None
}

/// One AWS event-stream message: `:event-type` and the other string headers Bedrock sends, the
/// JSON payload, both CRC32s.
pub fn event(kind: &str, payload: Value) -> Vec<u8> {
    let payload = payload.to_string();
    let mut h = Vec::new();
    for (k, v) in [
        (":event-type", kind),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ] {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = (16 + h.len() + payload.len()) as u32;
    let mut m = Vec::new();
    m.extend_from_slice(&total.to_be_bytes());
    m.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let c = crc32fast::hash(&m);
    m.extend_from_slice(&c.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload.as_bytes());
    let c = crc32fast::hash(&m);
    m.extend_from_slice(&c.to_be_bytes());
    m
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
