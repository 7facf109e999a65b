//! How often a request crosses into the proxy (each host call is one, and in Envoy each costs
//! about a microsecond): counted per call for the benchmark's requests, so a change that adds
//! crossings shows here, in numbers, before any benchmark runs.
use super::*;
use crate::memory_host::MemoryHost;

const CFG: &str = r#"{"models":[
  {"name":"llama-3-8b","aliases":["gpt-3.5-turbo"],"destinations":[{"name":"llama-v1","weight":90},{"name":"llama-v2","weight":10}]},
  {"name":"gpt-4o","destinations":[{"name":"openai"}]}]}"#;

fn run(stream: bool, extra: &str) -> MemoryHost {
    let json = CFG.replacen('{', &format!("{{{extra}"), 1);
    let vm = Vm::new(Config::from_json(json.as_bytes()).unwrap(), 7);
    let body = format!(
        r#"{{"model":"gpt-3.5-turbo","stream":{stream},"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let mut h = MemoryHost::new();
    h.now_ns = 1_000_000_000;
    h.request_headers = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "llm.example.com"),
        ("content-type", "application/json"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    h.request_headers
        .push(("content-length".into(), body.len().to_string()));
    h.request_body = body.into_bytes();
    let mut s = Stream::new(1);
    s.on_request_headers(&vm, &mut h, false);
    let n = h.request_body.len();
    s.on_request_body(&vm, &mut h, n, true);
    let (ct, chunks): (&str, Vec<Vec<u8>>) = if stream {
        let mut c: Vec<Vec<u8>> = (0..8)
            .map(|i| {
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}\n\n")
                    .into_bytes()
            })
            .collect();
        c.push(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":8}}\n\ndata: [DONE]\n\n"
                .to_vec(),
        );
        ("text/event-stream", c)
    } else {
        (
            "application/json",
            vec![br#"{"id":"x","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10}}"#.to_vec()],
        )
    };
    h.response_headers = vec![(":status".into(), "200".into()), ("content-type".into(), ct.into())];
    s.on_response_headers(&vm, &mut h, false);
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        let n = c.len();
        h.response_body = c;
        s.on_response_body(&vm, &mut h, n, i == last);
    }
    s.on_log(&vm, &mut h);
    h
}

#[test]
fn crossings_per_request() {
    // (c) and (d) of the benchmark: 17 (2 header maps, 2 body reads, 3 header writes, the
    // route cache, 6 metric updates, the clock twice, the hold timer) and 27 (one body read
    // per SSE chunk, TTFT: a metric and the clock).
    for (stream, most) in [(false, 17), (true, 27)] {
        let h = run(stream, "");
        eprintln!("stream={stream}: {} crossings {:?}", h.crossings(), h.crossings_by_call);
        assert!(h.crossings() <= most, "stream={stream}: {} > {most}", h.crossings());
        assert!(!h.crossings_by_call.contains_key("set_filter_state"), "off by default");
        // The clock: start, end, and (streams) the first bytes for TTFT; not per chunk.
        assert_eq!(h.crossings_by_call["now_ns"], 2 + u64::from(stream));
        let on = run(stream, r#""filterState":true,"#);
        assert_eq!(on.crossings_by_call["set_filter_state"], 4);
    }
}
