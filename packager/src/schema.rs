//! `wasmpack schema`: the JSON Schema of the plugin configuration, from the filter's own types.

/// The schema, pretty-printed (what `docs/configuration.schema.json` holds).
pub fn schema_json() -> String {
    serde_json::to_string_pretty(&model_router::config::json_schema()).unwrap_or_default()
}
