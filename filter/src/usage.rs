//! Token counts from responses: whole JSON bodies (scanned as they pass, never buffered) and SSE
//! streams (OpenAI usage chunk, Anthropic message_start/message_delta, Responses API terminal
//! events). An absent or null count is unknown, not zero.

use memchr::memmem;

use crate::json::{self, Json};
use crate::json_scan::TopLevelScanner;
use crate::sse::{Event, SseParser};

/// Token counts by type. `input` is all input tokens (for Anthropic: input + cache reads + cache
/// writes); `cached_input` and `cache_creation_input` are parts of it; `reasoning` is part of `output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cached_input: Option<u64>,
    pub cache_creation_input: Option<u64>,
    pub reasoning: Option<u64>,
}

/// The `type` labels of token counts, in the order of `Usage::counts`.
pub const TOKEN_TYPES: [&str; 5] = ["input", "output", "cached_input", "cache_creation_input", "reasoning"];

impl Usage {
    /// The counts by `TOKEN_TYPES`.
    pub fn counts(&self) -> [Option<u64>; TOKEN_TYPES.len()] {
        [
            self.input,
            self.output,
            self.cached_input,
            self.cache_creation_input,
            self.reasoning,
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(Option::is_none)
    }
}

/// A token count as an upstream reported it: any JSON number; one beyond `u64` saturates and is
/// flagged (the upstream's arithmetic is never trusted to fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    value: u64,
    overflow: bool,
}

impl Count {
    /// Any JSON number of zero or more (`12`, `12.0`, `1.2e3`: its whole part).
    fn read(v: &Json) -> Option<Count> {
        match v {
            Json::Num(n) => json::whole_count(n).map(|(value, overflow)| Count { value, overflow }),
            _ => None,
        }
    }
}

/// The members `names` of an object, each at most once; `None` when `v` is no object or repeats
/// one of them (unknown members are ignored).
fn members<'a, const N: usize>(v: &'a Json, names: [&str; N]) -> Option<[Option<&'a Json>; N]> {
    let Json::Obj(m) = v else { return None };
    let mut out = [None; N];
    for (k, x) in m {
        if let Some(i) = names.iter().position(|n| n == k) {
            if out[i].replace(x).is_some() {
                return None;
            }
        }
    }
    Some(out)
}

/// An optional member: absent or `null` is `Some(None)`; a value `read` refuses is `None`.
fn opt<T>(v: Option<&Json>, read: impl Fn(&Json) -> Option<T>) -> Option<Option<T>> {
    match v {
        None | Some(Json::Null) => Some(None),
        Some(v) => read(v).map(Some),
    }
}

#[derive(Debug, Default)]
struct Details {
    cached_tokens: Option<Count>,
    reasoning_tokens: Option<Count>,
}

impl Details {
    fn read(v: &Json) -> Option<Details> {
        let [c, r] = members(v, ["cached_tokens", "reasoning_tokens"])?;
        Some(Details {
            cached_tokens: opt(c, Count::read)?,
            reasoning_tokens: opt(r, Count::read)?,
        })
    }
}

/// The union of OpenAI (chat, completions, embeddings, responses) and Anthropic usage objects.
#[derive(Debug, Default)]
struct RawUsage {
    prompt_tokens: Option<Count>,
    completion_tokens: Option<Count>,
    input_tokens: Option<Count>,
    output_tokens: Option<Count>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<Count>,
    cache_creation_input_tokens: Option<Count>,
}

impl RawUsage {
    /// A usage object; `None` when it is not one (a count that is no number of zero or more, a
    /// repeated field): the report is unreadable, never guessed at.
    fn read(v: &Json) -> Option<RawUsage> {
        let [pt, ct, it, ot, ptd, ctd, itd, otd, cr, cc] = members(
            v,
            [
                "prompt_tokens",
                "completion_tokens",
                "input_tokens",
                "output_tokens",
                "prompt_tokens_details",
                "completion_tokens_details",
                "input_tokens_details",
                "output_tokens_details",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ],
        )?;
        Some(RawUsage {
            prompt_tokens: opt(pt, Count::read)?,
            completion_tokens: opt(ct, Count::read)?,
            input_tokens: opt(it, Count::read)?,
            output_tokens: opt(ot, Count::read)?,
            prompt_tokens_details: opt(ptd, Details::read)?,
            completion_tokens_details: opt(ctd, Details::read)?,
            input_tokens_details: opt(itd, Details::read)?,
            output_tokens_details: opt(otd, Details::read)?,
            cache_read_input_tokens: opt(cr, Count::read)?,
            cache_creation_input_tokens: opt(cc, Count::read)?,
        })
    }
}

/// Raw counts as last reported: later reports replace earlier ones field by field, since every
/// provider's stream reports cumulative numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    base_input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    cached: Option<u64>,
    reasoning: Option<u64>,
    /// Some reported number did not fit in 64 bits (it was saturated).
    overflow: bool,
}

impl Counts {
    fn merge(&mut self, u: &RawUsage) {
        let mut overflow = false;
        let mut take = |c: Option<Count>| {
            c.map(|c| {
                overflow |= c.overflow;
                c.value
            })
        };
        let details = |d: &Option<Details>| d.as_ref().and_then(|d| d.cached_tokens);
        let reasoning = |d: &Option<Details>| d.as_ref().and_then(|d| d.reasoning_tokens);
        if let Some(v) = take(u.prompt_tokens.or(u.input_tokens)) {
            self.base_input = Some(v);
        }
        if let Some(v) = take(u.completion_tokens.or(u.output_tokens)) {
            self.output = Some(v);
        }
        if let Some(v) = take(u.cache_read_input_tokens) {
            self.cache_read = Some(v);
        }
        if let Some(v) = take(u.cache_creation_input_tokens) {
            self.cache_creation = Some(v);
        }
        if let Some(v) = take(details(&u.prompt_tokens_details).or(details(&u.input_tokens_details))) {
            self.cached = Some(v);
        }
        if let Some(v) = take(reasoning(&u.completion_tokens_details).or(reasoning(&u.output_tokens_details))) {
            self.reasoning = Some(v);
        }
        self.overflow |= overflow;
    }

    fn usage(&self) -> Usage {
        // Anthropic's input_tokens excludes cache reads and writes; OpenAI's includes cached ones.
        let input = self.base_input.map(|b| {
            b.saturating_add(self.cache_read.unwrap_or(0))
                .saturating_add(self.cache_creation.unwrap_or(0))
        });
        Usage {
            input,
            output: self.output,
            cached_input: self.cached.or(self.cache_read),
            cache_creation_input: self.cache_creation,
            reasoning: self.reasoning,
        }
    }
}

/// The usages a stream event carries: its own `usage`, Anthropic `message_start`'s
/// `message.usage`, the Responses API's terminal `response.usage`.
#[derive(Debug, Default)]
struct StreamEvent {
    usage: Option<RawUsage>,
    message: Option<RawUsage>,
    response: Option<RawUsage>,
}

impl StreamEvent {
    fn read(v: &Json) -> Option<StreamEvent> {
        let wrapped = |v: &Json| {
            let [u] = members(v, ["usage"])?;
            opt(u, RawUsage::read)
        };
        let [u, m, r] = members(v, ["usage", "message", "response"])?;
        Some(StreamEvent {
            usage: opt(u, RawUsage::read)?,
            message: opt(m, wrapped)?.flatten(),
            response: opt(r, wrapped)?.flatten(),
        })
    }
}

/// Bytes of a `usage` object kept from a JSON body; real ones are a few hundred bytes.
const USAGE_CAPTURE: usize = 16 * 1024;

#[derive(Debug)]
enum Mode {
    Json(Box<TopLevelScanner>),
    Sse(SseParser),
    Ignore,
}

/// Reads token counts from one response body as it passes.
#[derive(Debug)]
pub struct ResponseUsage {
    mode: Mode,
    counts: Counts,
    /// Stream events that mention usage but failed to parse (counted, never fatal).
    pub bad_events: u64,
    /// A final usage report was read (a whole JSON body's, OpenAI's usage chunk, Anthropic's
    /// `message_delta`, the Responses API's terminal event), not just a stream's opening counts.
    complete: bool,
    /// SSE events dropped for size.
    dropped_events: u64,
}

/// Why some of a response's usage could not be read (`model_router_usage_errors_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageErrors {
    /// Events or bodies that mention usage but could not be parsed.
    pub unreadable: u64,
    /// SSE events larger than `sse::MAX_EVENT_BYTES`, dropped unread.
    pub event_too_large: u64,
    /// A reported number beyond 64 bits (saturated).
    pub overflow: bool,
}

impl ResponseUsage {
    /// Chooses how to read the body from its content type.
    pub fn for_content_type(content_type: Option<&str>) -> Self {
        let ct = crate::header_map::mime_type(content_type);
        let mode = if ct == "text/event-stream" {
            Mode::Sse(SseParser::new())
        } else if ct == "application/json" || ct.ends_with("+json") {
            Mode::Json(Box::new(TopLevelScanner::new(&["usage"], USAGE_CAPTURE).done_after(1)))
        } else {
            Mode::Ignore
        };
        ResponseUsage {
            mode,
            counts: Counts::default(),
            bad_events: 0,
            complete: false,
            dropped_events: 0,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.mode, Mode::Sse(_))
    }

    /// TGI reports counts in headers (`x-prompt-tokens`, `x-generated-tokens`).
    pub fn from_headers(&mut self, prompt: Option<u64>, generated: Option<u64>) {
        if prompt.is_some() {
            self.counts.base_input = prompt;
        }
        if generated.is_some() {
            self.counts.output = generated;
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Json(s) => {
                if s.feed(chunk).is_err() {
                    self.mode = Mode::Ignore;
                }
            }
            Mode::Sse(p) => {
                let counts = &mut self.counts;
                let bad = &mut self.bad_events;
                let complete = &mut self.complete;
                p.feed(chunk, &mut |e| on_event(counts, bad, complete, &e));
                self.dropped_events = p.dropped;
            }
            Mode::Ignore => {}
        }
    }

    /// A final usage report was read (see `complete`).
    pub fn complete(&self) -> bool {
        self.complete
    }

    pub fn errors(&self) -> UsageErrors {
        UsageErrors {
            unreadable: self.bad_events,
            event_too_large: self.dropped_events,
            overflow: self.counts.overflow,
        }
    }

    /// The body ended: returns what was reported.
    pub fn finish(&mut self) -> Usage {
        match &mut self.mode {
            Mode::Json(s) => {
                match s.get(0) {
                    Some(f) if f.raw == b"null" => {}
                    Some(f) => match json::parse(&f.raw).ok().and_then(|v| RawUsage::read(&v)) {
                        Some(u) if !f.truncated => {
                            self.counts.merge(&u);
                            self.complete = true;
                        }
                        _ => self.bad_events += 1,
                    },
                    None => {}
                }
                self.mode = Mode::Ignore;
            }
            Mode::Sse(p) => {
                p.finish();
                self.dropped_events = p.dropped;
            }
            Mode::Ignore => {}
        }
        self.usage()
    }

    /// What has been reported so far.
    pub fn usage(&self) -> Usage {
        self.counts.usage()
    }
}

/// True when some `"usage"` key in `data` has a value other than `null`. OpenAI chunks carry
/// `"usage":null` on every token, so this check spares almost every event a JSON parse.
fn mentions_usage(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(i) = memmem::find(rest, b"\"usage\"") {
        rest = &rest[i + 7..];
        let after = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
            .unwrap_or(rest.len());
        if !rest[after..].starts_with(b"null") {
            return true;
        }
    }
    false
}

fn on_event(counts: &mut Counts, bad: &mut u64, complete: &mut bool, e: &Event) {
    if !mentions_usage(e.data.as_bytes()) {
        return;
    }
    match json::parse(e.data.as_bytes()).ok().and_then(|v| StreamEvent::read(&v)) {
        Some(ev) => {
            // Anthropic's `message_start` counts are the opening ones; the rest are final (or,
            // with vLLM's continuous usage, cumulative so far).
            if let Some(u) = ev.message {
                counts.merge(&u);
            }
            for u in [ev.usage, ev.response].into_iter().flatten() {
                counts.merge(&u);
                *complete = true;
            }
        }
        None => *bad += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ct: &str, body: &[u8], chunk: usize) -> Usage {
        let mut r = ResponseUsage::for_content_type(Some(ct));
        for c in body.chunks(chunk.max(1)) {
            r.feed(c);
        }
        r.finish()
    }

    fn u(input: u64, output: u64, cached: Option<u64>, creation: Option<u64>, reasoning: Option<u64>) -> Usage {
        Usage {
            input: Some(input),
            output: Some(output),
            cached_input: cached,
            cache_creation_input: creation,
            reasoning,
        }
    }

    #[test]
    fn json_bodies_of_every_api() {
        let cases: &[(&str, Usage)] = &[
            (
                r#"{"id":"x","choices":[{"message":{"content":"{\"usage\":1}"}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":4}}}"#,
                u(19, 10, Some(3), None, Some(4)),
            ),
            (
                r#"{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
                Usage {
                    input: Some(8),
                    ..Default::default()
                },
            ),
            (
                r#"{"status":"completed","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":123}}"#,
                u(36, 87, Some(0), None, Some(5)),
            ),
            (
                r#"{"type":"message","usage":{"input_tokens":25,"output_tokens":15,"cache_creation_input_tokens":7,"cache_read_input_tokens":100}}"#,
                u(132, 15, Some(100), Some(7), None),
            ),
            (
                r#"{"usage":{"prompt_tokens":5,"completion_tokens":null}}"#,
                Usage {
                    input: Some(5),
                    ..Default::default()
                },
            ),
            (r#"{"usage":null}"#, Usage::default()),
            (r#"{"model_name":"m","outputs":[]}"#, Usage::default()),
            (r#"{"usage":{"prompt_tokens":"many"}}"#, Usage::default()),
            (
                r#"{"usage":{"prompt_tokens":5}"#,
                Usage {
                    input: Some(5),
                    ..Default::default()
                },
            ),
            (r#"not json"#, Usage::default()),
        ];
        for (body, want) in cases {
            for chunk in [1, 3, 1000] {
                assert_eq!(
                    read("application/json; charset=utf-8", body.as_bytes(), chunk),
                    *want,
                    "{body} by {chunk}"
                );
            }
        }
    }

    const OPENAI_STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC_STREAM: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n\
event: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"usage\\\"\"}}\r\n\r\n\
event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\r\n\r\n\
event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n\
event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

    const RESPONSES_STREAM: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"output_tokens_details\":{\"reasoning_tokens\":1}}}}\n\n";

    #[test]
    fn streams_of_every_api_split_at_every_byte() {
        let cases: &[(&str, Usage)] = &[
            (OPENAI_STREAM, u(11, 3, Some(2), None, None)),
            (ANTHROPIC_STREAM, u(30, 15, Some(5), None, None)),
            (RESPONSES_STREAM, u(9, 4, None, None, Some(1))),
            ("data: {\"choices\":[]}\n\ndata: [DONE]\n\n", Usage::default()),
        ];
        for (stream, want) in cases {
            let b = stream.as_bytes();
            for cut in 0..=b.len() {
                let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
                r.feed(&b[..cut]);
                r.feed(&b[cut..]);
                assert_eq!(r.finish(), *want, "cut {cut} of {stream}");
            }
        }
    }

    #[test]
    fn broken_streams_keep_what_was_seen() {
        // Interrupted before the usage chunk: nothing known.
        let cut = &OPENAI_STREAM[..OPENAI_STREAM.find("data: {\"choices\":[],").unwrap_or(0) + 20];
        assert_eq!(read("text/event-stream", cut.as_bytes(), 7), Usage::default());
        // Malformed events are counted and skipped.
        let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
        r.feed(b"data: {\"usage\": oops\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        assert_eq!(r.finish(), u(1, 2, None, None, None));
        assert_eq!(r.bad_events, 1);
        assert!(r.complete());
    }

    #[test]
    fn huge_and_negative_numbers_saturate_or_are_unreadable() {
        let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
        r.feed(b"data: {\"usage\":{\"prompt_tokens\":99999999999999999999999,\"completion_tokens\":2},\"x\":1}\n\n");
        let got = r.finish();
        assert_eq!(got.input, Some(u64::MAX));
        assert!(r.errors().overflow);
        // Saturating sums: Anthropic's input adds cache counts.
        let mut a = ResponseUsage::for_content_type(Some("application/json"));
        a.feed(
            format!(
                r#"{{"usage":{{"input_tokens":{},"cache_read_input_tokens":{}}}}}"#,
                u64::MAX,
                u64::MAX
            )
            .as_bytes(),
        );
        assert_eq!(a.finish().input, Some(u64::MAX));
        let mut n = ResponseUsage::for_content_type(Some("application/json"));
        n.feed(br#"{"usage":{"prompt_tokens":-3}}"#);
        assert_eq!(n.finish(), Usage::default());
        assert_eq!(n.errors().unreadable, 1);
        assert!(!n.complete());
    }

    #[test]
    fn only_final_reports_complete_a_stream() {
        let start = ANTHROPIC_STREAM.find("event: ping").unwrap_or(0);
        let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
        r.feed(&ANTHROPIC_STREAM.as_bytes()[..start]);
        assert_eq!(r.usage().input, Some(30));
        assert!(!r.complete(), "message_start alone is not final");
        r.feed(&ANTHROPIC_STREAM.as_bytes()[start..]);
        assert!(r.complete());
    }

    #[test]
    fn null_usage_is_skipped_without_parsing() {
        assert!(!mentions_usage(br#"{"choices":[],"usage":null}"#));
        assert!(!mentions_usage(br#"{"usage" : null,"x":{"usage":null}}"#));
        assert!(mentions_usage(
            br#"{"usage":null,"message":{"usage":{"input_tokens":1}}}"#
        ));
        assert!(mentions_usage(br#"{"usage": {"prompt_tokens":1}}"#));
        assert!(!mentions_usage(br#"{"text":"no mention"}"#));
        // A string that merely contains the word is parsed (and harmlessly yields nothing).
        assert!(mentions_usage(br#"{"delta":""usage" is a word"}"#));
    }

    #[test]
    fn other_content_types_are_ignored() {
        assert_eq!(
            read("text/plain", br#"{"usage":{"prompt_tokens":1}}"#, 5),
            Usage::default()
        );
        let mut r = ResponseUsage::for_content_type(None);
        r.from_headers(Some(12), Some(30));
        assert_eq!(
            r.finish(),
            Usage {
                input: Some(12),
                output: Some(30),
                ..Default::default()
            }
        );
    }
}
