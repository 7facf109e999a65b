//! `wasmpack apply` and `delete` through the real client stack: the wasmpack binary reads a
//! kubeconfig, builds a `kube::Client` and talks to a local API endpoint over HTTPS (a CA from
//! the kubeconfig, a bearer token) or plain HTTP (`kubectl proxy`), which answers discovery,
//! server-side apply, get and delete and records every request.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::kube_api::{KubeApi, TOKEN};
use support::{stderr, stdout, wasmpack};

const IMAGE: &str =
    "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";

fn write_config(dir: &Path, body_routing: bool, with_embeddings: bool) -> String {
    let mut cfg = format!(
        "bodyRouting: {body_routing}\nmodels:\n- name: llama\n  destinations:\n  - {{name: llama-v1, weight: 90, host: llama.ai.svc.cluster.local, subset: v1, port: 8000}}\n  - {{name: llama-v2, weight: 10, host: llama.ai.svc.cluster.local, subset: v2, port: 8000}}\n"
    );
    if with_embeddings {
        cfg.push_str("- name: bge\n  destinations: [{name: bge, host: bge.search.svc.cluster.local, port: 8000}]\n");
    }
    let p = dir.join("cfg.yaml");
    std::fs::write(&p, cfg).unwrap();
    p.display().to_string()
}

fn run(args: &[&str], kubeconfig: &Path) -> std::process::Output {
    let kc = kubeconfig.display().to_string();
    tokio::task::block_in_place(|| wasmpack(args, "", &[("KUBECONFIG", kc.as_str())]))
}

fn install_args<'a>(cmd: &'a str, cfg: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        cmd,
        "--config",
        cfg,
        "--image",
        IMAGE,
        "--offline",
        "--namespace",
        "ai",
        "--selector",
        "app=chat",
    ];
    a.extend_from_slice(extra);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_prune_and_delete_over_tls_with_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let api = KubeApi::tls(tmp.path()).await;
    let kc = api.kubeconfig(tmp.path(), TOKEN);
    let cfg = write_config(tmp.path(), false, true);

    // A dry run first: validated by the server, nothing stored, nothing pruned.
    let o = run(&install_args("apply", &cfg, &["--dry-run"]), &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: bodyRouting: is off"),
        "apply warns as manifests does: {}",
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(
        out.contains("WasmPlugin ai/model-router applied (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains("HorizontalPodAutoscaler search/model-router-bge applied (server dry run)"),
        "{out}"
    );
    assert!(api.objects().is_empty(), "{:?}", api.objects());
    for r in api.requests() {
        assert_eq!(r.authorization, format!("Bearer {TOKEN}"), "{} {}", r.method, r.path);
        if r.method == "PATCH" {
            assert!(r.query.contains("fieldManager=wasmpack"), "{}", r.query);
            assert!(r.query.contains("dryRun=All"), "{}", r.query);
            assert!(!r.query.contains("force=true"), "{}", r.query);
            assert_eq!(r.content_type, "application/apply-patch+yaml");
        }
    }
    let patched: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path.clone())
        .collect();
    assert!(patched.contains(&"/apis/extensions.istio.io/v1alpha1/namespaces/ai/wasmplugins/model-router".to_string()));
    // Resources go to the namespace of their host.
    assert!(
        patched
            .contains(&"/apis/networking.istio.io/v1/namespaces/search/destinationrules/model-router-bge".to_string()),
        "{patched:#?}"
    );

    // For real.
    let o = run(&install_args("apply", &cfg, &[]), &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ConfigMap ai/model-router-inventory recorded"),
        "{}",
        stdout(&o)
    );
    let wasm = api.object("WasmPlugin", "ai", "model-router").unwrap();
    assert_eq!(
        wasm["metadata"]["labels"]["wasmpack.model-router.io/installation"],
        "model-router"
    );
    assert!(api
        .object("HorizontalPodAutoscaler", "search", "model-router-bge")
        .is_some());

    // Turning body routing on replaces the WasmPlugin by the EnvoyFilter pair (never both), and a
    // model taken out leaves nothing behind.
    let cfg = write_config(tmp.path(), true, false);
    api.clear_requests();
    let o = run(&install_args("apply", &cfg, &[]), &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("WasmPlugin ai/model-router pruned (no longer rendered)"),
        "{out}"
    );
    assert!(
        out.contains("HorizontalPodAutoscaler search/model-router-bge pruned"),
        "{out}"
    );
    assert!(api.object("WasmPlugin", "ai", "model-router").is_none());
    assert!(api.object("EnvoyFilter", "ai", "model-router-extension").is_some());
    assert!(
        api.objects().iter().all(|o| !o.contains("search/")),
        "{:?}",
        api.objects()
    );

    // delete removes exactly what the inventory lists, and the inventory.
    let o = run(&install_args("delete", &cfg, &[]), &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(api.objects().is_empty(), "{:?}", api.objects());
    assert!(
        stdout(&o).contains("ConfigMap ai/model-router-inventory deleted"),
        "{}",
        stdout(&o)
    );
}

/// The objects the inventory ConfigMap lists, as `Kind ns/name`.
fn inventory(api: &KubeApi, name: &str) -> Vec<String> {
    let cm = api.object("ConfigMap", "ai", &format!("{name}-inventory")).unwrap();
    let objects: Vec<serde_json::Value> = serde_json::from_str(cm["data"]["objects"].as_str().unwrap()).unwrap();
    objects
        .iter()
        .map(|o| {
            format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap(),
                o["namespace"].as_str().unwrap_or(""),
                o["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// An apply that fails half-way (here: the API server refuses the HPAs, after the new filter
/// objects were created and before the old ones were pruned) leaves an inventory that lists the
/// old and the new objects: `delete`, from the inventory alone (no --config, no --image), then
/// removes every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_apply_leaves_no_orphans_and_delete_needs_only_the_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let api = KubeApi::plain().await;
    let kc = api.kubeconfig(tmp.path(), "");
    let cfg = write_config(tmp.path(), false, true);
    let o = run(&install_args("apply", &cfg, &[]), &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        api.object("ConfigMap", "ai", "model-router-inventory").unwrap()["data"]["mode"],
        "selector app=chat"
    );

    // Body routing on (the EnvoyFilter pair replaces the WasmPlugin), embeddings gone: the apply
    // fails at the first HPA.
    let cfg = write_config(tmp.path(), true, false);
    api.forbid("horizontalpodautoscalers");
    let o = run(&install_args("apply", &cfg, &[]), &kc);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        api.object("EnvoyFilter", "ai", "model-router-extension").is_some(),
        "created before the failure"
    );
    let listed = inventory(&api, "model-router");
    for object in [
        "EnvoyFilter ai/model-router-extension",
        "EnvoyFilter ai/model-router",
        "WasmPlugin ai/model-router",
        "HorizontalPodAutoscaler search/model-router-bge",
        "HorizontalPodAutoscaler ai/model-router-llama-v1",
    ] {
        assert!(
            listed.contains(&object.to_string()),
            "{object} not in the inventory: {listed:#?}"
        );
    }
    api.allow();

    // A mode the inventory does not record is refused, deleting nothing.
    let before = api.objects();
    let o = run(&["delete", "--namespace", "ai", "--gateway", "other"], &kc);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("was applied as `selector app=chat`, not `gateway other`"),
        "{}",
        stderr(&o)
    );
    assert_eq!(api.objects(), before);

    // No configuration, no image, no registry: namespace, name (default) and mode.
    let o = run(&["delete", "--namespace", "ai", "--selector", "app=chat"], &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(api.objects().is_empty(), "orphans: {:?}", api.objects());
    let o = run(&["delete", "--namespace", "ai"], &kc);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no installation `model-router` in namespace `ai`"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_like_kubectl_proxy_and_two_installations_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let api = KubeApi::plain().await;
    let kc = api.kubeconfig(tmp.path(), "");
    let cfg = write_config(tmp.path(), false, false);
    for name in ["team-a", "team-b"] {
        let o = run(&install_args("apply", &cfg, &["--name", name]), &kc);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(api.object("WasmPlugin", "ai", "team-a").is_some());
    assert!(api.object("WasmPlugin", "ai", "team-b").is_some());
    // Deleting one leaves the other whole.
    let before = api.objects().iter().filter(|o| o.contains("team-b")).count();
    let o = run(&install_args("delete", &cfg, &["--name", "team-a"]), &kc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        api.objects().iter().all(|o| !o.contains("team-a")),
        "{:?}",
        api.objects()
    );
    assert_eq!(api.objects().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_errors_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let api = KubeApi::tls(tmp.path()).await;
    let cfg = write_config(tmp.path(), false, false);

    let wrong = api.kubeconfig(tmp.path(), "wrong-token");
    let o = run(&install_args("apply", &cfg, &["--dry-run"]), &wrong);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));

    let kc = api.kubeconfig(tmp.path(), TOKEN);
    api.forbid("wasmplugins");
    let o = run(&install_args("apply", &cfg, &[]), &kc);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("applying WasmPlugin ai/model-router") && e.contains("forbidden"),
        "{e}"
    );

    api.without_group("extensions.istio.io");
    let o = run(&install_args("apply", &cfg, &[]), &kc);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Istio's CRDs are missing"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    // A kubeconfig that is not there: one line, no crash.
    let o = run(&install_args("apply", &cfg, &[]), &tmp.path().join("nope"));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("loading the kubeconfig"), "{e}");
    // The OS error once, the path quoted once.
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    assert!(!e.contains("'\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_secret_comes_from_the_docker_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let api = KubeApi::plain().await;
    let kc = api.kubeconfig(tmp.path(), "");
    let cfg = write_config(tmp.path(), false, false);
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths":{"registry.example.com":{"auth":"Y2ktYm90OnMzY3JldA=="},"other.example.com":{"auth":"eDp5"}}}"#,
    )
    .unwrap();
    let kcs = kc.display().to_string();
    let args = install_args("apply", &cfg, &["--pull-secret-from-docker-config"]);
    let ds = docker.display().to_string();
    let o = tokio::task::block_in_place(|| wasmpack(&args, "", &[("KUBECONFIG", &kcs), ("DOCKER_CONFIG", &ds)]));
    assert!(o.status.success(), "{}", stderr(&o));
    let secret = api.object("Secret", "ai", "model-router-pull-secret").unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let inner: serde_json::Value = serde_json::from_slice(
        &b64.decode(secret["data"][".dockerconfigjson"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let auths = inner["auths"].as_object().unwrap();
    assert_eq!(auths.len(), 1, "only the image's registry: {inner}");
    assert_eq!(inner["auths"]["registry.example.com"]["username"], "ci-bot");
    assert_eq!(inner["auths"]["registry.example.com"]["password"], "s3cret");
    assert_eq!(
        api.object("WasmPlugin", "ai", "model-router").unwrap()["spec"]["imagePullSecret"],
        "model-router-pull-secret"
    );
}

/// A cluster that does not answer: the error names the server and the kubeconfig context (which
/// cluster was meant is the first question), once, with the cause once.
#[test]
fn an_unreachable_cluster_is_named_with_its_context() {
    let tmp = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: prod-admin\n  context: {{cluster: prod, user: admin}}\ncurrent-context: prod-admin\nusers:\n- name: admin\n  user: {{token: t}}\n"
        ),
    )
    .unwrap();
    let cfg = write_config(tmp.path(), false, false);
    let kcs = kc.display().to_string();
    for args in [
        install_args("apply", &cfg, &["--dry-run"]),
        vec!["delete", "--namespace", "ai"],
    ] {
        let o = wasmpack(&args, "", &[("KUBECONFIG", kcs.as_str())]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains(&format!(
                "the Kubernetes API at https://127.0.0.1:{port}/ (context prod-admin)"
            )),
            "{e}"
        );
        assert!(e.contains("no answer:") && e.contains("Connection refused"), "{e}");
        assert_eq!(e.matches("client error (Connect)").count(), 1, "{e}");
        assert!(!e.contains("ServiceError"), "{e}");
    }
}
