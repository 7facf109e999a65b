//! Models named in the request path (KServe v2 / Triton, TF Serving / KServe v1, Azure OpenAI):
//! known from the headers alone, so no body needs to be held.

use std::borrow::Cow;

/// The model named by `path`, if it is one of the path shapes in the contract. The query string is
/// ignored and `%XX` escapes in the name are decoded.
pub fn model_from_path(path: &str) -> Option<Cow<'_, str>> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let name = kserve_v2(path).or_else(|| tf_serving(path)).or_else(|| azure(path))?;
    if name.is_empty() {
        return None;
    }
    Some(percent_decode(name))
}

/// `/v2/models/{name}[/versions/{v}]/(infer|generate|generate_stream)`
fn kserve_v2(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let name = parts.next()?;
    let tail: Vec<&str> = parts.collect();
    let verb = match tail.as_slice() {
        [verb] => verb,
        ["versions", v, verb] if !v.is_empty() => verb,
        _ => return None,
    };
    matches!(*verb, "infer" | "generate" | "generate_stream").then_some(name)
}

/// `/v1/models/{name}[/versions/{v}|/labels/{l}]:(predict|classify|regress|explain)`
fn tf_serving(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/models/")?;
    let (head, verb) = rest.rsplit_once(':')?;
    if !matches!(verb, "predict" | "classify" | "regress" | "explain") {
        return None;
    }
    let mut parts = head.split('/');
    let name = parts.next()?;
    match parts.collect::<Vec<_>>().as_slice() {
        [] => Some(name),
        ["versions" | "labels", v] if !v.is_empty() => Some(name),
        _ => None,
    }
}

/// `/openai/deployments/{name}/...`
fn azure(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (name, tail) = rest.split_once('/')?;
    (!tail.is_empty()).then_some(name)
}

pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/v2/models/resnet/infer", Some("resnet")),
            ("/v2/models/resnet/versions/3/infer", Some("resnet")),
            ("/v2/models/llama/generate", Some("llama")),
            ("/v2/models/llama/versions/1/generate_stream?x=1", Some("llama")),
            ("/v2/models/resnet/ready", None),
            ("/v2/models/resnet", None),
            ("/v2/models//infer", None),
            ("/v2/models/a/versions//infer", None),
            ("/v1/models/mnist:predict", Some("mnist")),
            ("/v1/models/mnist/versions/2:classify", Some("mnist")),
            ("/v1/models/mnist/labels/stable:regress", Some("mnist")),
            ("/v1/models/sk:explain", Some("sk")),
            ("/v1/models/mnist", None),
            ("/v1/models/mnist:frobnicate", None),
            ("/v1/models/a/b/c:predict", None),
            (
                "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-06-01",
                Some("gpt4o-prod"),
            ),
            ("/openai/deployments/gpt4o-prod", None),
            ("/openai/deployments/my%2Dmodel/embeddings", Some("my-model")),
            ("/v1/chat/completions", None),
            ("/", None),
            ("", None),
            ("/v2/models/bad%ZZname/infer", Some("bad%ZZname")),
            ("/v2/models/trail%2/infer", Some("trail%2")),
        ];
        for (path, want) in cases {
            assert_eq!(model_from_path(path).as_deref(), *want, "{path}");
        }
    }
}
