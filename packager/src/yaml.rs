//! The YAML wasmpack writes (manifests, the Envoy bootstrap of `wasmpack run`, Limitador's and
//! envoyproxy/ratelimit's files, kustomize patches), with serde-saphyr. Strings that a YAML 1.1
//! reader (Kubernetes') would take for a number, boolean or null are quoted; a string with line
//! breaks is a literal block (`|`); a long line stays one line (no folding).

/// `value` as one YAML document.
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}
