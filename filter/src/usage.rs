//! Token counts from responses: whole JSON bodies (scanned as they pass, never buffered) and
//! streams: SSE (OpenAI usage chunk, Anthropic message_start/message_delta, Responses API
//! terminal events, Gemini `alt=sse`, Cohere v2 `message-end`), NDJSON (Ollama), JSON arrays in
//! pieces (Gemini), AWS event-stream frames (Bedrock `converse-stream`). An absent or null count
//! is unknown, not zero.

use crate::eventstream::EventStreamParser;
use crate::json::{self, Json};
use crate::json_scan::TopLevelScanner;
use crate::json_seq::{Elements, Lines};
use crate::sse::SseParser;

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

/// The most member names `members` looks for at once.
const MAX_MEMBERS: usize = 24;
const _: () = assert!(NAMES.len() <= MAX_MEMBERS && WRAPPERS.len() <= MAX_MEMBERS);

/// The members `names` of an object, each at most once, by the index of their name; `None` when
/// `v` is no object or repeats one of them (unknown members are ignored). A fixed array: this
/// runs for every answer, so it allocates nothing.
fn members<'a>(v: &'a Json, names: &[&str]) -> Option<[Option<&'a Json>; MAX_MEMBERS]> {
    let Json::Obj(m) = v else { return None };
    let mut out = [None; MAX_MEMBERS];
    for (k, x) in m {
        if let Some(slot) = names.iter().position(|n| n == k).and_then(|i| out.get_mut(i)) {
            if slot.replace(x).is_some() {
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

/// Slots of a usage report. Input is `IN` plus cache reads and writes (Anthropic's and
/// Bedrock's input excludes them; OpenAI's `cached_tokens` and Gemini's cached count are parts
/// of it); output is `OUT` plus Gemini's thoughts (which its candidates count leaves out).
const IN: usize = 0;
const OUT: usize = 1;
const READ: usize = 2;
const WRITE: usize = 3;
const CACHED: usize = 4;
const REASONING: usize = 5;
const THOUGHTS: usize = 6;
const SLOTS: usize = 7;

/// The members a usage object is read from: every provider's count fields (the first one present
/// of a slot wins: OpenAI and Anthropic in snake case, Bedrock Converse in camel case, Gemini's
/// `usageMetadata`, Ollama), then OpenAI's details, then Cohere's `tokens` and `billed_units`
/// (counts used where the object itself has none; `tokens` first).
const NAMES: [&str; 22] = [
    "prompt_tokens",
    "input_tokens",
    "inputTokens",
    "promptTokenCount",
    "prompt_eval_count",
    "completion_tokens",
    "output_tokens",
    "outputTokens",
    "candidatesTokenCount",
    "eval_count",
    "cache_read_input_tokens",
    "cacheReadInputTokens",
    "cache_creation_input_tokens",
    "cacheWriteInputTokens",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
    "prompt_tokens_details",
    "input_tokens_details",
    "completion_tokens_details",
    "output_tokens_details",
    "tokens",
    "billed_units",
];
/// The slot of each count field of `NAMES`, then of each details object's count.
const SLOT: [u8; 20] = [
    IN as u8,
    IN as u8,
    IN as u8,
    IN as u8,
    IN as u8,
    OUT as u8,
    OUT as u8,
    OUT as u8,
    OUT as u8,
    OUT as u8,
    READ as u8,
    READ as u8,
    WRITE as u8,
    WRITE as u8,
    CACHED as u8,
    THOUGHTS as u8,
    CACHED as u8,
    CACHED as u8,
    REASONING as u8,
    REASONING as u8,
];
const COUNTS: usize = 16;
/// The count inside each details object.
const DETAIL: [&str; 4] = ["cached_tokens", "cached_tokens", "reasoning_tokens", "reasoning_tokens"];

/// A usage object, read: a count per slot.
#[derive(Debug, Default, Clone, Copy)]
struct RawUsage([Option<Count>; SLOTS]);

impl RawUsage {
    /// A usage object; `None` when it is not one (a count that is no number of zero or more, a
    /// repeated field): the report is unreadable, never guessed at.
    fn read(v: &Json) -> Option<RawUsage> {
        Self::read_at(v, true)
    }

    fn read_at(v: &Json, outer: bool) -> Option<RawUsage> {
        let found = members(v, &NAMES)?;
        let mut u = RawUsage::default();
        for (i, x) in found.iter().take(NAMES.len()).enumerate() {
            let count = match (i, x) {
                (_, None | Some(Json::Null)) => None,
                (..COUNTS, Some(x)) => Some(Count::read(x)?),
                (20.., Some(x)) => {
                    if outer {
                        let inner = RawUsage::read_at(x, false)?;
                        for (mine, theirs) in u.0.iter_mut().zip(inner.0) {
                            *mine = mine.or(theirs);
                        }
                    }
                    None
                }
                (_, Some(d)) => opt(
                    members(d, std::slice::from_ref(DETAIL.get(i - COUNTS)?))?[0],
                    Count::read,
                )?,
            };
            if let (Some(c), Some(slot)) = (count, SLOT.get(i).and_then(|&s| u.0.get_mut(usize::from(s)))) {
                slot.get_or_insert(c);
            }
        }
        Some(u)
    }
}

/// Raw counts as last reported: later reports replace earlier ones slot by slot, since every
/// provider's stream reports cumulative numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    slots: [Option<u64>; SLOTS],
    /// Some reported number did not fit in 64 bits (it was saturated).
    overflow: bool,
}

impl Counts {
    fn merge(&mut self, u: &RawUsage) {
        for (mine, c) in self.slots.iter_mut().zip(u.0) {
            if let Some(c) = c {
                self.overflow |= c.overflow;
                *mine = Some(c.value);
            }
        }
    }

    fn usage(&self) -> Usage {
        let s = &self.slots;
        let plus = |a: Option<u64>, b: Option<u64>| b.map_or(a, |b| Some(a.unwrap_or(0).saturating_add(b)));
        Usage {
            input: s[IN].map(|b| {
                b.saturating_add(s[READ].unwrap_or(0))
                    .saturating_add(s[WRITE].unwrap_or(0))
            }),
            output: plus(s[OUT], s[THOUGHTS]),
            cached_input: s[CACHED].or(s[READ]),
            cache_creation_input: s[WRITE],
            reasoning: s[REASONING].or(s[THOUGHTS]),
        }
    }
}

/// Where a message (a stream event, or a whole body's wanted keys) carries counts: its own
/// `usage` (OpenAI, Bedrock's `metadata` event), Gemini's `usageMetadata`, Cohere's
/// `delta.usage` (v2 `message-end`) and `meta` (v1, embed), the Responses API's terminal
/// `response.usage`; all final. Anthropic `message_start`'s `message.usage` opens a stream.
/// Ollama puts its counts in the message itself.
const WRAPPERS: [&str; 6] = ["usage", "usageMetadata", "meta", "delta", "response", "message"];
const OPENING: usize = 5;
/// Messages that name one of these may carry counts (the rest are not parsed).
const NEEDLES: [&[u8]; 4] = [b"usageMetadata\"", b"eval_count\"", b"prompt_eval_count\"", b"meta\""];

/// Bytes of the wanted keys of a JSON body kept; real ones are a few hundred bytes.
const USAGE_CAPTURE: usize = 16 * 1024;

/// The reports of one message, `(report, final)`: at most one per wrapper and Ollama's (a
/// fixed array: no allocation per message).
type Reports = [Option<(RawUsage, bool)>; WRAPPERS.len() + 1];

/// The counts of one message: `(report, final)`s.
fn read_message(v: &Json) -> Option<Reports> {
    let found = members(v, &WRAPPERS)?;
    let mut out: Reports = [None; WRAPPERS.len() + 1];
    let mut n = 0;
    let mut push = |r: (RawUsage, bool)| {
        if let Some(slot) = out.get_mut(n) {
            *slot = Some(r);
            n += 1;
        }
    };
    for (i, x) in found.into_iter().take(WRAPPERS.len()).enumerate() {
        let Some(x) = x else { continue };
        let u = if i < 3 {
            opt(Some(x), RawUsage::read)?
        } else if matches!(x, Json::Obj(_)) {
            // `{"delta":{…}}`, `{"response":{…}}`: the usage inside, if any.
            opt(members(x, &["usage"])?[0], RawUsage::read)?
        } else {
            None // the Responses API's text `delta`
        };
        if let Some(u) = u {
            push((u, i != OPENING));
        }
    }
    if let Json::Obj(m) = v {
        if m.iter().any(|(k, _)| k == "eval_count" || k == "prompt_eval_count") {
            push((RawUsage::read(v)?, true));
        }
    }
    Some(out)
}

#[derive(Debug)]
enum Mode {
    /// A JSON body: an object's usage keys are scanned as it passes (never buffered); a body that
    /// is an array (Gemini's stream without `alt=sse`) is read element by element.
    /// (The scanner, whether the body's first value has begun.)
    Json(Box<TopLevelScanner>, bool),
    Array(Elements),
    Sse(SseParser),
    Lines(Lines),
    Frames(EventStreamParser),
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
    /// Stream messages dropped for size.
    dropped_events: u64,
    /// Stream messages read (events, lines, array elements, event-stream frames).
    messages: u64,
}

/// Why some of a response's usage could not be read (`model_router_usage_errors_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageErrors {
    /// Events or bodies that mention usage but could not be parsed, or an event stream broken
    /// by a frame that failed its CRC.
    pub unreadable: u64,
    /// SSE events larger than `sse::MAX_EVENT_BYTES`, dropped unread.
    pub event_too_large: u64,
    /// A reported number beyond 64 bits (saturated).
    pub overflow: bool,
}

/// The JSON body keys that carry counts (see `WRAPPERS`; Ollama's are its own).
const BODY_KEYS: &[&str] = &["usage", "usageMetadata", "meta", "prompt_eval_count", "eval_count"];

impl ResponseUsage {
    /// Chooses how to read the body from its content type.
    pub fn for_content_type(content_type: Option<&str>) -> Self {
        let ct = crate::header_map::mime_type(content_type);
        let mode = match ct.as_ref() {
            "text/event-stream" => Mode::Sse(SseParser::new()),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Mode::Lines(Lines::default()),
            "application/vnd.amazon.eventstream" => Mode::Frames(EventStreamParser::new()),
            ct if ct == "application/json" || ct.ends_with("+json") => {
                Mode::Json(Box::new(TopLevelScanner::new(BODY_KEYS, USAGE_CAPTURE)), false)
            }
            _ => Mode::Ignore,
        };
        ResponseUsage {
            mode,
            counts: Counts::default(),
            bad_events: 0,
            complete: false,
            dropped_events: 0,
            messages: 0,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(
            self.mode,
            Mode::Sse(_) | Mode::Lines(_) | Mode::Frames(_) | Mode::Array(_)
        )
    }

    /// Counts in headers: TGI's (`x-prompt-tokens`, `x-generated-tokens`), Bedrock's
    /// (`x-amzn-bedrock-input-token-count`, `…-output-token-count`).
    pub fn from_headers(&mut self, prompt: Option<u64>, generated: Option<u64>) {
        if prompt.is_some() {
            self.counts.slots[IN] = prompt;
        }
        if generated.is_some() {
            self.counts.slots[OUT] = generated;
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let counts = &mut self.counts;
        let bad = &mut self.bad_events;
        let complete = &mut self.complete;
        let messages = &mut self.messages;
        let mut on = |m: &[u8]| {
            *messages += 1;
            on_message(counts, bad, complete, m)
        };
        match &mut self.mode {
            Mode::Json(s, begun) => {
                let first = chunk.iter().find(|b| !b.is_ascii_whitespace());
                if !*begun && first == Some(&b'[') {
                    let mut e = Elements::default();
                    e.feed(chunk, &mut on);
                    self.mode = Mode::Array(e);
                    return;
                }
                *begun |= first.is_some();
                // After an error the scanner reads no more; what it found before is kept (a
                // body cut short or spoilt after its usage still reports it).
                let _ = s.feed(chunk);
            }
            Mode::Array(e) => {
                e.feed(chunk, &mut on);
                self.dropped_events = e.dropped;
            }
            Mode::Sse(p) => {
                p.feed(chunk, &mut |e| on(e.data.as_bytes()));
                self.dropped_events = p.dropped;
            }
            Mode::Lines(l) => {
                l.feed(chunk, &mut on);
                self.dropped_events = l.dropped;
            }
            Mode::Frames(f) => {
                f.feed(chunk, &mut on);
                self.dropped_events = f.dropped;
                if f.broken {
                    *bad += 1;
                    self.mode = Mode::Ignore;
                }
            }
            Mode::Ignore => {}
        }
    }

    /// A final usage report was read (see `complete`).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Stream messages read so far: a lower bound of the tokens a stream delivered (every
    /// streamed delta carries at least one).
    pub fn messages(&self) -> u64 {
        self.messages
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
            Mode::Json(s, _) => {
                // The wanted keys, read as one message; a value cut short is unreadable.
                let mut m = Vec::new();
                let mut whole = true;
                for f in s.found() {
                    whole &= !f.truncated;
                    let Some(key) = BODY_KEYS.get(f.key) else { continue };
                    m.push((key.to_string(), json::parse(&f.raw).unwrap_or(Json::Arr(Vec::new()))));
                }
                if !m.is_empty() {
                    match read_message(&Json::Obj(m)).filter(|_| whole) {
                        Some(reports) => apply(&mut self.counts, &mut self.complete, reports),
                        None => self.bad_events += 1,
                    }
                }
            }
            Mode::Array(e) => e.finish(),
            Mode::Sse(p) => p.finish(),
            Mode::Lines(l) => {
                let (counts, bad, complete) = (&mut self.counts, &mut self.bad_events, &mut self.complete);
                let messages = &mut self.messages;
                l.finish(&mut |m| {
                    *messages += 1;
                    on_message(counts, bad, complete, m)
                });
            }
            Mode::Frames(f) => {
                f.finish();
            }
            Mode::Ignore => {}
        }
        self.mode = Mode::Ignore;
        self.usage()
    }

    /// What has been reported so far.
    pub fn usage(&self) -> Usage {
        self.counts.usage()
    }
}

fn apply(counts: &mut Counts, complete: &mut bool, reports: Reports) {
    for (u, last) in reports.into_iter().flatten() {
        counts.merge(&u);
        *complete |= last;
    }
}

/// True when `data` may carry counts: it has a key of `WRAPPERS` or Ollama's, and a `"usage"`
/// key's value is not `null`. OpenAI chunks carry `"usage":null` on every token, so this check
/// spares almost every event a JSON parse. (One pass over the quotes: no substring searcher.)
fn mentions_usage(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(i) = memchr::memchr(b'"', rest) {
        rest = rest.get(i + 1..).unwrap_or_default();
        if let Some(r) = rest.strip_prefix(b"usage\"") {
            let after = r
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
                .unwrap_or(r.len());
            if !r.get(after..).unwrap_or_default().starts_with(b"null") {
                return true;
            }
        } else if NEEDLES.iter().any(|n| rest.starts_with(n)) {
            return true;
        }
    }
    false
}

fn on_message(counts: &mut Counts, bad: &mut u64, complete: &mut bool, data: &[u8]) {
    if !mentions_usage(data) {
        return;
    }
    match json::parse(data).ok().as_ref().and_then(read_message) {
        Some(reports) => apply(counts, complete, reports),
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

    fn each_cut(ct: &str, body: &[u8]) -> Usage {
        let mut first = None;
        for cut in 0..=body.len() {
            let mut r = ResponseUsage::for_content_type(Some(ct));
            r.feed(&body[..cut]);
            r.feed(&body[cut..]);
            let got = r.finish();
            assert!(r.complete(), "cut {cut}");
            assert_eq!(*first.get_or_insert(got), got, "cut {cut}");
        }
        let mut r = ResponseUsage::for_content_type(Some(ct));
        for b in body.chunks(1) {
            r.feed(b);
        }
        assert_eq!(Some(r.finish()), first);
        first.unwrap_or_default()
    }

    const GEMINI_CHUNKS: [&str; 3] = [
        r#"{"candidates":[{"content":{"parts":[{"text":"The \"usage\" ]}"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-2.5-flash"}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":" sky"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":6,"totalTokenCount":14},"modelVersion":"gemini-2.5-flash"}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"."}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":12,"totalTokenCount":25,"cachedContentTokenCount":2,"thoughtsTokenCount":5},"modelVersion":"gemini-2.5-flash"}"#,
    ];

    #[test]
    fn providers_json_bodies() {
        let gemini = u(8, 17, Some(2), None, Some(5));
        for (body, want) in [
            (GEMINI_CHUNKS[2].to_string(), gemini),
            // Bedrock Converse: camel case, cache counts outside the input.
            (
                r#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":30,"outputTokens":9,"totalTokens":45,"cacheReadInputTokens":4,"cacheWriteInputTokens":2},"metrics":{"latencyMs":300}}"#.into(),
                u(36, 9, Some(4), Some(2), None),
            ),
            // Cohere v2 chat: tokens before billed units.
            (
                r#"{"id":"c","finish_reason":"COMPLETE","message":{"role":"assistant","content":[{"type":"text","text":"hi"}]},"usage":{"billed_units":{"input_tokens":5,"output_tokens":3},"tokens":{"input_tokens":71,"output_tokens":3}}}"#.into(),
                u(71, 3, None, None, None),
            ),
            (
                r#"{"usage":{"billed_units":{"input_tokens":5,"output_tokens":3}}}"#.into(),
                u(5, 3, None, None, None),
            ),
            // Cohere embed (v2 and v1): the billed units in `meta`.
            (
                r#"{"id":"e","embeddings":{"float":[[0.1]]},"texts":["hi"],"meta":{"api_version":{"version":"2"},"billed_units":{"input_tokens":4}}}"#.into(),
                Usage { input: Some(4), ..Default::default() },
            ),
            // Ollama's native API.
            (
                r#"{"model":"llama3.2","message":{"role":"assistant","content":"hi"},"done":true,"total_duration":5,"prompt_eval_count":26,"eval_count":290}"#.into(),
                u(26, 290, None, None, None),
            ),
            (
                r#"{"model":"all-minilm","embeddings":[[0.1]],"prompt_eval_count":8}"#.into(),
                Usage { input: Some(8), ..Default::default() },
            ),
            // Gemini's stream without `alt=sse`: one JSON array in pieces, cumulative counts.
            (format!("[{},\r\n{}\r\n,\r\n{}]", GEMINI_CHUNKS[0], GEMINI_CHUNKS[1], GEMINI_CHUNKS[2]), gemini),
        ] {
            assert_eq!(each_cut("application/json; charset=UTF-8", body.as_bytes()), want, "{body}");
        }
        // Repeated or broken counts are unreadable, never guessed at.
        for body in [
            r#"{"usage":{"inputTokens":1,"inputTokens":2}}"#,
            r#"{"usageMetadata":{"promptTokenCount":"8"}}"#,
            r#"{"prompt_eval_count":1,"prompt_eval_count":2}"#,
            r#"{"usage":{"tokens":{"input_tokens":-1}}}"#,
        ] {
            let mut r = ResponseUsage::for_content_type(Some("application/json"));
            r.feed(body.as_bytes());
            assert_eq!(r.finish(), Usage::default(), "{body}");
            assert_eq!(r.errors().unreadable, 1, "{body}");
        }
    }

    #[test]
    fn providers_streams_split_at_every_byte() {
        let gemini_sse: String = GEMINI_CHUNKS.iter().map(|c| format!("data: {c}\r\n\r\n")).collect();
        assert_eq!(
            each_cut("text/event-stream", gemini_sse.as_bytes()),
            u(8, 17, Some(2), None, Some(5))
        );
        let cohere = "event: message-start\ndata: {\"type\":\"message-start\",\"id\":\"x\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n\
event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"hi\"}}}}\n\n\
event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":2},\"tokens\":{\"input_tokens\":65,\"output_tokens\":2}}}}\n\n";
        assert_eq!(
            each_cut("text/event-stream", cohere.as_bytes()),
            u(65, 2, None, None, None)
        );
        let ollama = "{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"The \\\"usage\"},\"done\":false}\n\
{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,\"eval_count\":290}\n";
        assert_eq!(
            each_cut("application/x-ndjson", ollama.as_bytes()),
            u(26, 290, None, None, None)
        );
        let converse = bedrock_stream();
        assert_eq!(
            each_cut("application/vnd.amazon.eventstream", &converse),
            u(25, 7, Some(3), None, None)
        );
    }

    fn bedrock_stream() -> Vec<u8> {
        use crate::eventstream::tests::message;
        let ev = |kind: &str, p: &str| {
            message(
                &[
                    (":event-type", kind),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                p.as_bytes(),
            )
        };
        [
            ev("messageStart", r#"{"role":"assistant"}"#),
            ev("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#),
            ev("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":" there"}}"#),
            ev("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            ev("messageStop", r#"{"stopReason":"end_turn"}"#),
            ev(
                "metadata",
                r#"{"usage":{"inputTokens":22,"outputTokens":7,"totalTokens":32,"cacheReadInputTokens":3},"metrics":{"latencyMs":120}}"#,
            ),
        ]
        .concat()
    }

    #[test]
    fn a_broken_frame_stops_counting() {
        let good = bedrock_stream();
        let at = good.len() - 20; // inside the metadata event's payload
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let mut r = ResponseUsage::for_content_type(Some("application/vnd.amazon.eventstream"));
        r.feed(&bad);
        assert_eq!(r.finish(), Usage::default());
        assert!(!r.complete());
        assert_eq!(r.errors().unreadable, 1);
        assert_eq!(r.messages(), 5, "the frames before the broken one were read");
    }

    #[test]
    fn stream_messages_are_counted() {
        let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
        let cut = &OPENAI_STREAM[..OPENAI_STREAM.find("data: {\"choices\":[],").unwrap_or(0)];
        r.feed(cut.as_bytes());
        r.feed(cut.as_bytes());
        assert_eq!((r.messages(), r.complete()), (2, false));
        let mut j = ResponseUsage::for_content_type(Some("application/json"));
        j.feed(br#"{"usage":{"prompt_tokens":1}}"#);
        j.finish();
        assert_eq!(j.messages(), 0, "a whole body is no stream");
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
