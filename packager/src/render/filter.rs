//! The filter itself, pinned to the image's manifest digest, in the resource each proxy takes:
//! a WasmPlugin or TrafficExtension (Istio, plain Wasm), an EnvoyFilter pair (Istio, bodyRouting:
//! the filter as its own ECDS extension config), or an EnvoyExtensionPolicy and, for bodyRouting,
//! an EnvoyPatchPolicy (Envoy Gateway).

use model_router::config::Config;
use serde_json::{json, Value};

use super::buffer_limit::{listener_buffer_limit, ENVOY_GATEWAY_BUFFER_LIMIT};
use super::options::{FilterApi, Options, Part, Target};
use super::{gateway_ref, Doc, FILTER_NAME, WASM_TYPE_URL};

/// The filter's resources for the install's proxies; `ports`: the models' ports (`model_ports`).
pub(super) fn docs(config_json: &Value, config: &Config, o: &Options, ports: &[u16]) -> Vec<Doc> {
    let url = format!("oci://{}@{}", o.repository, o.digest);
    match &o.target {
        Target::EnvoyGateway { name, listener, .. } => {
            let mut docs = vec![envoy_extension_policy(config, config_json, o, name)];
            if config.body_routing {
                docs.push(envoy_patch_policy(config, o, name, listener));
            }
            docs
        }
        Target::Selector(_) | Target::Gateway { .. } if config.body_routing => {
            envoy_filters(config_json, o, &url, ports)
        }
        _ => vec![wasm_plugin(config_json, o, &url, ports)],
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn wasm_plugin(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Doc {
    let spec = wasm_plugin_spec(config_json, o, url, ports);
    if o.extension_api == FilterApi::TrafficExtension {
        return traffic_extension(spec, o);
    }
    Doc {
        file: "wasmplugin".into(),
        comment: format!(
            "The filter, pinned to the image manifest digest {}. Without bodyRouting a plain WasmPlugin\n\
             is enough: path models are routed; body models are admitted, counted and rewritten, unrouted.",
            o.digest
        ),
        value: json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": o.meta(&o.object_name(""), &o.namespace), "spec": spec}),
    }
}

/// The WasmPlugin's spec: the module, its configuration, and where it runs (in a sidecar, on
/// outbound calls to the models' ports).
fn wasm_plugin_spec(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Value {
    let mut spec = json!({
        "url": url,
        "sha256": hex(&o.digest),
        "imagePullPolicy": "IfNotPresent",
        "phase": o.phase,
        "failStrategy": if o.fail_open { "FAIL_OPEN" } else { "FAIL_CLOSE" },
        "pluginConfig": config_json,
    });
    match &o.target {
        Target::Selector(sel) => {
            spec["selector"] = json!({"matchLabels": sel});
            // Routing happens on the caller's side, where the VirtualService is applied.
            spec["match"] = if ports.is_empty() {
                json!([{"mode": "CLIENT"}])
            } else {
                let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
                json!([{"mode": "CLIENT", "ports": ports}])
            };
        }
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } | Target::EnvoyGateway { name, .. } => {
            spec["targetRefs"] = json!([gateway_ref(name)]);
        }
    }
    if let Some(p) = o.priority {
        spec["priority"] = json!(p);
    }
    if let Some(s) = &o.pull_secret {
        spec["imagePullSecret"] = json!(s);
    }
    spec
}

/// The filter as an Istio `TrafficExtension` (extensions.istio.io/v1alpha1, Istio 1.30+): the
/// same module, config and attachment as the WasmPlugin, in the API Istio converts WasmPlugins to.
fn traffic_extension(wasm_plugin_spec: Value, o: &Options) -> Doc {
    let w = &wasm_plugin_spec;
    let mut wasm = json!({"url": w["url"], "sha256": w["sha256"], "imagePullPolicy": w["imagePullPolicy"],
        "failStrategy": w["failStrategy"], "pluginConfig": w["pluginConfig"], "type": "HTTP"});
    if let Some(secret) = w.get("imagePullSecret") {
        wasm["imagePullSecret"] = secret.clone();
    }
    // TrafficExtension's phase enum spells the default `UNSPECIFIED`.
    let phase = match w["phase"].as_str() {
        Some("UNSPECIFIED_PHASE") | None => "UNSPECIFIED",
        Some(p) => p,
    };
    let mut spec = json!({"phase": phase, "wasm": wasm});
    for key in ["selector", "targetRefs", "match", "priority"] {
        if let Some(v) = w.get(key) {
            spec[key] = v.clone();
        }
    }
    Doc {
        file: "trafficextension".into(),
        comment: format!(
            "The filter as a TrafficExtension (Istio 1.30+), pinned to the image manifest digest {}.",
            o.digest
        ),
        value: json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
            "metadata": o.meta(&o.object_name(""), &o.namespace), "spec": spec}),
    }
}

/// The Wasm filter config for ECDS (also what `envoy --mode validate` checks, with a local module).
pub fn extension_config(config_json: &Value, o: &Options, url: &str) -> Value {
    json!({
        "name": format!("{}.{}", o.namespace, o.name),
        "typed_config": {
            "@type": WASM_TYPE_URL,
            "config": {
                "name": FILTER_NAME,
                // Lets the filter hold request headers until the body names the model.
                "allow_on_headers_stop_iteration": true,
                "fail_open": o.fail_open,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config_json.to_string()},
                "vm_config": {
                    "vm_id": o.name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"remote": {"http_uri": {"uri": url, "timeout": "30s"}, "sha256": hex(&o.digest)}}
                }
            }
        }
    })
}

/// An EnvoyFilter's match context for this install, and the spec's `workloadSelector` or
/// `targetRefs`.
pub(super) fn envoy_filter_scope(target: &Target) -> (&'static str, Value) {
    match target {
        Target::Selector(sel) => ("SIDECAR_OUTBOUND", json!({"workloadSelector": {"labels": sel}})),
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } | Target::EnvoyGateway { name, .. } => {
            ("GATEWAY", json!({"targetRefs": [gateway_ref(name)]}))
        }
    }
}

/// An EnvoyFilter's patches: in a sidecar, one per outbound listener of the models' ports (when
/// all are known), else one for every listener of the context.
pub(super) fn per_listener(context: &str, ports: &[u16], patch: impl Fn(Option<u16>) -> Value) -> Value {
    if context == "SIDECAR_OUTBOUND" && !ports.is_empty() {
        Value::Array(ports.iter().map(|p| patch(Some(*p))).collect())
    } else {
        json!([patch(None)])
    }
}

/// bodyRouting on Istio: the filter as its own extension config (ECDS), and an EnvoyFilter that
/// inserts it before the router.
fn envoy_filters(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Vec<Doc> {
    let ext = extension_config(config_json, o, url);
    let (context, scope) = envoy_filter_scope(&o.target);
    let filter_spec = http_filter_spec(scope.clone(), context, ports, &ext["name"], o.priority);
    let mut ext_spec = scope;
    ext_spec["configPatches"] = json!([{"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "ADD", "value": ext}}]);
    vec![
        Doc {
            file: "envoyfilter-extension".into(),
            comment: "bodyRouting needs allow_on_headers_stop_iteration, which a WasmPlugin cannot set, and an\n\
                      EnvoyFilter cannot MERGE into the config Istio generates for one. So the filter is added as\n\
                      its own extension config (ECDS); istio-agent fetches the oci:// module and checks its sha256."
                .into(),
            value: json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                "metadata": o.meta(&o.object_name("extension"), &o.namespace), "spec": ext_spec}),
        },
        Doc {
            file: "envoyfilter-http-filter".into(),
            comment: "Inserts the filter before the router, pointing at the extension config above.".into(),
            value: json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                "metadata": o.meta(&o.object_name(""), &o.namespace), "spec": filter_spec}),
        },
    ]
}

/// The spec of the EnvoyFilter that inserts the HTTP filter `name` before the router of each
/// listener it runs on, its config discovered over ADS.
fn http_filter_spec(mut spec: Value, context: &str, ports: &[u16], name: &Value, priority: Option<i32>) -> Value {
    let patch = |port: Option<u16>| {
        let mut listener = json!({"filterChain": {"filter": {
            "name": "envoy.filters.network.http_connection_manager",
            "subFilter": {"name": "envoy.filters.http.router"}}}});
        if let Some(p) = port {
            listener["portNumber"] = json!(p);
        }
        json!({
            "applyTo": "HTTP_FILTER",
            "match": {"context": context, "listener": listener},
            "patch": {"operation": "INSERT_BEFORE", "value": {
                "name": name,
                "config_discovery": {
                    "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                    "type_urls": [WASM_TYPE_URL]
                }
            }}
        })
    };
    spec["configPatches"] = per_listener(context, ports, patch);
    if let Some(p) = priority {
        spec["priority"] = json!(p);
    }
    spec
}

/// The filter for Envoy Gateway: an `EnvoyExtensionPolicy` on the Gateway, the module from the
/// OCI image pinned by its manifest digest, the configuration inline.
fn envoy_extension_policy(config: &Config, config_json: &Value, o: &Options, gateway: &str) -> Doc {
    let image = json!({"url": format!("{}@{}", o.repository, o.digest), "sha256": hex(&o.digest)});
    let mut wasm = json!({"name": FILTER_NAME, "rootID": FILTER_NAME, "failOpen": o.fail_open,
        "code": {"type": "Image", "image": image}, "config": config_json});
    if let Some(secret) = &o.pull_secret {
        wasm["code"]["image"]["pullSecretRef"] = json!({"name": secret});
    }
    Doc {
        file: "envoyextensionpolicy".into(),
        comment: format!(
            "The filter on Envoy Gateway `{gateway}`, pinned to the image manifest digest {}. Envoy Gateway\n\
             enables it per route (internal/xds/translator/wasm.go): it runs on requests that matched a\n\
             route of this gateway, so the HTTPRoute below ends with a catch-all rule.{}",
            o.digest,
            if config.body_routing {
                " The EnvoyPatchPolicy\nbelow lets it hold request headers until the body names the model (bodyRouting)."
            } else {
                " bodyRouting is off:\nmodels in the JSON body are not routed (they get the catch-all's answer)."
            }
        ),
        value: json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
            "metadata": o.meta(&o.object_name(""), &o.namespace),
            "spec": {"targetRefs": [gateway_ref(gateway)], "wasm": [wasm]}}),
    }
}

/// The name Envoy Gateway gives the Wasm HTTP filter of entry `index` of an EnvoyExtensionPolicy
/// (internal/gatewayapi/envoyextensionpolicy.go `irConfigNameForWasm`, internal/xds/translator
/// wasm.go `wasmFilterName`): `envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<name>/wasm/<index>`.
pub fn envoy_gateway_wasm_filter_name(namespace: &str, policy: &str, index: usize) -> String {
    format!("envoy.filters.http.wasm/envoyextensionpolicy/{namespace}/{policy}/wasm/{index}")
}

/// Envoy Gateway's xDS listener name of a Gateway listener (internal/xds/translator/listener.go
/// `xdsListenerName`, the default scheme): `<namespace>/<gateway>/<listener section name>`.
pub fn envoy_gateway_listener_name(namespace: &str, gateway: &str, section: &str) -> String {
    format!("{namespace}/{gateway}/{section}")
}

/// bodyRouting on Envoy Gateway: a JSON patch of the generated listener (Envoy Gateway has no
/// field for it) that lets the filter hold request headers, and raises the listener's buffer
/// limit to maxBodyBytes. Envoy Gateway applies EnvoyPatchPolicies only with
/// `extensionApis.enableEnvoyPatchPolicy: true` in its EnvoyGateway configuration.
fn envoy_patch_policy(config: &Config, o: &Options, gateway: &str, listener: &str) -> Doc {
    let filter = envoy_gateway_wasm_filter_name(&o.namespace, &o.object_name(""), 0);
    let raise = o.wants(Part::BufferLimit) && config.max_body_bytes > ENVOY_GATEWAY_BUFFER_LIMIT;
    let limit = listener_buffer_limit(config.max_body_bytes);
    let patches = listener_patches(listener, &filter, raise.then_some(limit));
    Doc {
        file: "envoypatchpolicy-body-routing".into(),
        comment: format!(
            "bodyRouting on Envoy Gateway `{gateway}`: patches the xDS listener `{listener}` (--listener)\n\
             so that the filter `{filter}`\n\
             may hold request headers until the body names the model (allow_on_headers_stop_iteration){}.\n\
             Envoy Gateway applies it only with `extensionApis: {{enableEnvoyPatchPolicy: true}}` in its\n\
             EnvoyGateway configuration (the envoy-gateway-config ConfigMap); check that its status says\n\
             Programmed: kubectl get envoypatchpolicy {} -n {} -o yaml",
            if raise {
                format!(",\nand raises its buffer limit from Envoy Gateway's 32 KiB to maxBodyBytes ({limit})")
            } else {
                String::new()
            },
            o.object_name("body-routing"),
            o.namespace
        ),
        value: json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyPatchPolicy",
            "metadata": o.meta(&o.object_name("body-routing"), &o.namespace),
            "spec": {"targetRef": gateway_ref(gateway), "type": "JSONPatch", "jsonPatches": patches}}),
    }
}

/// The JSON patches of the xDS listener: `allow_on_headers_stop_iteration` for the filter, and
/// the buffer limit when it is raised.
fn listener_patches(listener: &str, filter: &str, buffer_limit: Option<u64>) -> Vec<Value> {
    const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let mut patches = vec![json!({
        "type": LISTENER_TYPE,
        "name": listener,
        "operation": {
            "op": "add",
            "jsonPath": format!("..http_filters[?(@.name=='{filter}')].typed_config.config"),
            "path": "/allow_on_headers_stop_iteration",
            "value": true
        }
    })];
    if let Some(limit) = buffer_limit {
        patches.push(json!({
            "type": LISTENER_TYPE,
            "name": listener,
            "operation": {"op": "add", "path": "/per_connection_buffer_limit_bytes", "value": limit}
        }));
    }
    patches
}
