//! Which requests are the filter's business: the inference endpoints of the APIs real clients
//! and servers use, whatever prefix or version segment a gateway or provider puts first, and
//! every request to a host that serves a configured model.
//!
//! Being in scope only means the filter looks: a request in scope that names no model and has no
//! body (a `GET /health`) still passes untouched. Being out of scope means the filter never
//! checks it, so the default errs towards looking: a path spelling a server still serves as
//! inference must never take a request past access control (see `path_model::lenient`).

use crate::path_model::{lenient, model_from_path, trim_slashes};

/// Which requests the filter acts on. Requests outside it pass untouched (the filter only strips
/// client-sent route and model headers from them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `:authority` patterns (port ignored): exact names or `*.suffix`; `None`: any host.
    pub hosts: Option<Vec<String>>,
    /// Path prefixes; `None`: the built-in inference endpoints (see `ENDPOINTS`) and every path
    /// of a configured model host.
    pub paths: Option<Vec<String>>,
    /// The configured destinations' hosts (lowercase, no trailing dot): with the default paths,
    /// every request to one of them is in scope, whatever its path.
    pub model_hosts: Vec<String>,
}

/// Inference endpoints, as path segments (lowercase), that are in scope after any prefix: their
/// shape is distinctive (`/api/paas/v4/chat/completions`, `/v1beta/openai/chat/completions`,
/// `/engines/{model}/chat/completions`, Ollama's `/api/chat` behind `/ollama`).
pub const ANYWHERE: &[&[&str]] = &[
    &["chat", "completions"],
    &["responses", "input_tokens"],
    &["responses", "compact"],
    &["messages", "count_tokens"],
    &["audio", "transcriptions"],
    &["audio", "translations"],
    &["audio", "speech"],
    &["images", "generations"],
    &["images", "edits"],
    &["images", "variations"],
    // Ollama's native API.
    &["api", "chat"],
    &["api", "generate"],
    &["api", "embed"],
    &["api", "embeddings"],
];

/// Inference endpoints named by one common word: in scope at the root (`/responses`,
/// DeepSeek; `/tokenize`, vLLM; `/generate`, TGI), after a version segment (`/v1/messages`,
/// `/v2/chat` Cohere, `/v1beta/…`, `/api/v3/…`) or after `/openai`. Elsewhere (`/api/rooms/7/messages`)
/// the word is an application's, not an inference API's.
pub const ROOTED: &[&str] = &[
    "completions",
    "embeddings",
    "responses",
    "messages",
    "moderations",
    "rerank",
    "score",
    "classify",
    "pooling",
    "tokenize",
    "detokenize",
    "chat",
    "generate",
    "generate_stream",
    "embed",
    "invocations",
    "models",
    // OpenAI's Realtime API (a WebSocket; its model is the `model` query parameter).
    "realtime",
];

/// `v1`, `v4`, `v1beta`, `v1alpha1`, `v2beta3`: an API version segment.
fn is_version(s: &[u8]) -> bool {
    let Some(rest) = s.strip_prefix(b"v") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    let tail = rest.get(digits..).unwrap_or_default();
    let tail = tail
        .strip_prefix(b"alpha")
        .or_else(|| tail.strip_prefix(b"beta"))
        .unwrap_or(tail);
    tail.iter().all(u8::is_ascii_digit)
}

/// Whether a lenient path (lowercase, decoded, dot segments resolved) ends in an inference
/// endpoint.
fn is_endpoint(path: &[u8]) -> bool {
    // Segments read from the end (no allocation: this runs for every request).
    let path = trim_slashes(path);
    let path = path.strip_prefix(b"/").unwrap_or(path);
    let ends = |e: &[&str]| {
        let mut segments = path.rsplit(|b| *b == b'/');
        e.iter()
            .rev()
            .all(|w| segments.next().is_some_and(|s| s == w.as_bytes()))
    };
    if ANYWHERE.iter().any(|e| ends(e)) {
        return true;
    }
    let mut segments = path.rsplit(|b| *b == b'/');
    let Some(last) = segments.next() else {
        return false;
    };
    if !ROOTED.iter().any(|w| last == w.as_bytes()) {
        return false;
    }
    match segments.next() {
        None => true,
        Some(s) => is_version(s) || s == b"openai",
    }
}

/// A path with a version segment followed by `models/`: about a model (`/v1/models/{id}`).
fn is_model_resource(path: &[u8]) -> bool {
    let mut prev: Option<&[u8]> = None;
    let mut segments = path.split(|b| *b == b'/').peekable();
    while let Some(s) = segments.next() {
        if s == b"models" && prev.is_some_and(is_version) && segments.peek().is_some_and(|n| !n.is_empty()) {
            return true;
        }
        prev = Some(s);
    }
    false
}

impl Scope {
    /// Whether a request for `authority` and `path` is the filter's business.
    pub fn contains(&self, authority: &str, path: &str) -> bool {
        self.host_allowed(authority) && (self.path_in_scope(path) || self.is_model_host(authority))
    }

    /// Like `contains`, for gRPC calls: only by path (the KServe v2 gRPC protocol is not read,
    /// so a model host's gRPC port is not taken into scope by its host; docs/access-control.md).
    pub fn contains_by_path(&self, authority: &str, path: &str) -> bool {
        self.host_allowed(authority) && self.path_in_scope(path)
    }

    fn host_allowed(&self, authority: &str) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let host = strip_port(authority).to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        hosts.iter().any(|p| match p.strip_prefix('*') {
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
            None => host == p,
        })
    }

    fn path_in_scope(&self, path: &str) -> bool {
        // The path as the most lenient server reads it (`/v1/chat%2Fcompletions` is uvicorn's
        // `/v1/chat/completions`), and as it is.
        let path_only = path.split(['?', '#']).next().unwrap_or("");
        let lenient = lenient(path_only);
        match &self.paths {
            Some(prefixes) => prefixes.iter().any(|p| {
                path_only.starts_with(p.as_str())
                    || lenient
                        .get(..p.len())
                        .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
            }),
            None => is_endpoint(&lenient) || is_model_resource(&lenient) || model_from_path(path).is_some(),
        }
    }

    /// The authority names a configured model host: its full name, or (for a Kubernetes Service,
    /// `NAME.NS.svc…`) a shorter form a client in the mesh may use (`NAME`, `NAME.NS`). Only with
    /// the default paths: configured paths are exactly what the user chose.
    fn is_model_host(&self, authority: &str) -> bool {
        if self.paths.is_some() || self.model_hosts.is_empty() {
            return false;
        }
        let host = strip_port(authority).to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        if host.is_empty() {
            return false;
        }
        self.model_hosts.iter().any(|h| {
            h == host
                || (h.contains(".svc.") || h.ends_with(".svc"))
                    && h.strip_prefix(host).is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// `host`, `host:port`, `[v6]:port` → the host part.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for (s, yes) in [
            ("v1", true),
            ("v4", true),
            ("v1beta", true),
            ("v1alpha1", true),
            ("v2beta3", true),
            ("v", false),
            ("vx", false),
            ("v1x", false),
            ("version", false),
            ("1", false),
        ] {
            assert_eq!(is_version(s.as_bytes()), yes, "{s}");
        }
    }

    #[test]
    fn default_paths() {
        let d = Scope::default();
        for (path, inside) in [
            // OpenAI and every OpenAI-compatible server, with or without `/v1`.
            ("/v1/chat/completions", true),
            ("/chat/completions", true),
            ("/completions", true),
            ("/embeddings", true),
            ("/v1/responses", true),
            ("/responses", true),
            ("/v1/responses/input_tokens", true),
            ("/responses/input_tokens", true),
            ("/openai/v1/chat/completions", true),
            ("/openai/embeddings", true),
            // LiteLLM, DeepSeek, Z.ai, Gemini's OpenAI-compatible API.
            ("/engines/gpt-4o/chat/completions", true),
            ("/api/paas/v4/chat/completions", true),
            ("/v1beta/openai/chat/completions", true),
            ("/v1beta/openai/embeddings", true),
            // Anthropic.
            ("/v1/messages", true),
            ("/v1/messages/count_tokens", true),
            ("/messages", true),
            // Cohere v1 and v2.
            ("/v2/chat", true),
            ("/v2/embed", true),
            ("/v2/rerank", true),
            ("/v1/chat", true),
            ("/v1/generate", true),
            // Ollama's native API, also behind a prefix.
            ("/api/chat", true),
            ("/api/generate", true),
            ("/api/embed", true),
            ("/api/embeddings", true),
            ("/ollama/api/chat", true),
            // vLLM / SGLang / TGI extras at the root.
            ("/tokenize", true),
            ("/detokenize", true),
            ("/pooling", true),
            ("/score", true),
            ("/v1/score", true),
            ("/classify", true),
            ("/rerank", true),
            ("/generate", true),
            ("/generate_stream", true),
            ("/invocations", true),
            // Audio and images.
            ("/v1/audio/transcriptions", true),
            ("/audio/speech", true),
            ("/v1/images/generations", true),
            ("/images/edits", true),
            // Listing and model resources.
            ("/v1/models", true),
            ("/models", true),
            ("/v1/models/gpt-4o", true),
            ("/v1beta/models/gemini-pro", true),
            // Gemini, Vertex AI and Amazon Bedrock name the model in the path, in any spelling.
            ("/v1beta/models/gemini-pro:generateContent", true),
            ("/v1beta/models/gemini-pro%3AstreamGenerateContent?alt=sse", true),
            (
                "/v1/projects/p/locations/l/publishers/google/models/g:generateContent",
                true,
            ),
            ("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse", true),
            ("/model/a.b-v1%253A0/CONVERSE-STREAM/", true),
            ("/model/a.b/invoke-with-response-stream?x", true),
            ("/model/a.b%2Fcount-tokens", true),
            // Applications' own endpoints.
            ("/api/orders", false),
            ("/api/rooms/7/messages", false),
            ("/support/chat", false),
            ("/v1/products", false),
            ("/api/model/7/invoke", false),
            ("/v1/chat/completions/extra", false),
            ("/v1/models/", true),
            ("/", false),
            ("", false),
        ] {
            assert_eq!(d.contains("shop.example.com", path), inside, "{path}");
        }
    }

    #[test]
    fn model_hosts_are_in_scope_on_every_path() {
        let s = Scope {
            model_hosts: vec!["vllm.ai.svc.cluster.local".into(), "api.openai.com".into()],
            ..Scope::default()
        };
        for (authority, inside) in [
            ("vllm.ai.svc.cluster.local", true),
            ("vllm.ai.svc.cluster.local:8000", true),
            ("VLLM.AI.SVC.CLUSTER.LOCAL.", true),
            ("vllm", true),
            ("vllm:8000", true),
            ("vllm.ai", true),
            ("vllm.ai.svc", true),
            ("api.openai.com", true),
            // A short name only for a Service: `api` is any service's name.
            ("api", false),
            ("vll", false),
            ("vllm.other", false),
            ("other.ai.svc.cluster.local", false),
            ("", false),
        ] {
            assert_eq!(s.contains(authority, "/admin/anything"), inside, "{authority}");
        }
        assert!(!s.contains_by_path("vllm", "/inference.GRPCInferenceService/ModelInfer"));
        let configured = Scope {
            paths: Some(vec!["/v1/".into()]),
            ..s
        };
        assert!(!configured.contains("vllm", "/admin"), "configured paths are exact");
    }
}
