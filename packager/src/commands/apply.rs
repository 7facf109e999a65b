//! `wasmpack apply` / `wasmpack delete`: server-side apply (field manager `wasmpack`) of the
//! rendered resources, after checking that the cluster serves every kind (Istio's CRDs).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::cli::{ApplyArgs, ClusterArgs, DeleteArgs};
use crate::commands::manifests::prepare;
use crate::registry::parse_reference;

pub const FIELD_MANAGER: &str = "wasmpack";
pub const PULL_SECRET_NAME: &str = "model-router-pull-secret";

async fn client(cluster: &ClusterArgs, namespace: &str) -> Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: cluster.context.clone(),
        ..Default::default()
    };
    let mut config = kube::Config::from_kubeconfig(&options)
        .await
        .context("loading the kubeconfig (KUBECONFIG, ~/.kube/config, --context)")?;
    config.default_namespace = namespace.to_string();
    Client::try_from(config).context("creating the Kubernetes client")
}

pub async fn run_apply(args: &ApplyArgs) -> Result<()> {
    let pull_secret = args
        .pull_secret_from_docker_config
        .then(|| PULL_SECRET_NAME.to_string());
    let (_, opts, docs) = prepare(&args.render, pull_secret).await?;
    let mut values: Vec<Value> = Vec::new();
    if args.pull_secret_from_docker_config {
        let registry = parse_reference(&args.render.image)?.resolve_registry().to_string();
        values.push(pull_secret_doc(&registry, &opts.namespace)?);
    }
    values.extend(docs.into_iter().map(|d| d.value));
    let client = client(&args.cluster, &opts.namespace).await?;
    let done = apply(&client, &values, args.cluster.dry_run, args.force_conflicts).await?;
    for line in done {
        println!("{line}");
    }
    Ok(())
}

pub async fn run_delete(args: &DeleteArgs) -> Result<()> {
    let (_, opts, docs) = prepare(&args.render, None).await?;
    let values: Vec<Value> = docs.into_iter().map(|d| d.value).collect();
    let client = client(&args.cluster, &opts.namespace).await?;
    for line in delete(&client, &values, args.cluster.dry_run).await? {
        println!("{line}");
    }
    Ok(())
}

/// A `kubernetes.io/dockerconfigjson` Secret holding only the image registry's entry of the
/// docker config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
pub fn pull_secret_doc(registry: &str, namespace: &str) -> Result<Value> {
    let dir = std::env::var("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".docker")))
        .map_err(|_| anyhow!("no DOCKER_CONFIG or HOME to find the docker config in"))?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let entry = cfg["auths"]
        .get(registry)
        .filter(|e| e["auth"].is_string())
        .ok_or_else(|| {
            anyhow!(
                "{} has no `auths` entry with `auth` for {registry} (run docker login)",
                path.display()
            )
        })?;
    let only = json!({"auths": {registry: entry}}).to_string();
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": PULL_SECRET_NAME, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "wasmpack"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64(only.as_bytes())},
    }))
}

/// Standard base64 with padding (Secret data, docker config `auth`).
pub fn base64(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                T[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The API resource (plural, scope) of every kind in `docs`, from the cluster's discovery.
async fn discover(client: &Client, docs: &[Value]) -> Result<BTreeMap<(String, String), ApiResource>> {
    let mut out = BTreeMap::new();
    let mut lists: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for d in docs {
        let api_version = d["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = d["kind"].as_str().unwrap_or("").to_string();
        lists.entry(api_version).or_default().push((kind, String::new()));
    }
    for (api_version, kinds) in lists {
        let list = if api_version.contains('/') {
            client.list_api_group_resources(&api_version).await
        } else {
            client.list_core_api_resources(&api_version).await
        };
        let list = match list {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if api_version.contains("istio.io") {
                    bail!("Istio's CRDs are missing: the cluster does not serve {api_version}; install Istio (1.27 or later) first");
                }
                bail!("the cluster does not serve {api_version}");
            }
            Err(e) => return Err(explain(e)).context(format!("discovering {api_version}")),
        };
        for (kind, _) in kinds {
            let r = list
                .resources
                .iter()
                .find(|r| r.kind == kind && !r.name.contains('/'))
                .ok_or_else(|| {
                    anyhow!("the cluster serves {api_version} but not {kind}: is the matching CRD installed?")
                })?;
            let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
            let gvk = GroupVersionKind::gvk(group, version, &kind);
            out.insert(
                (api_version.clone(), kind),
                ApiResource::from_gvk_with_plural(&gvk, &r.name),
            );
        }
    }
    Ok(out)
}

fn api_for(
    client: &Client,
    resources: &BTreeMap<(String, String), ApiResource>,
    doc: &Value,
) -> Result<(Api<DynamicObject>, String)> {
    let key = (
        doc["apiVersion"].as_str().unwrap_or("").to_string(),
        doc["kind"].as_str().unwrap_or("").to_string(),
    );
    let ar = resources
        .get(&key)
        .ok_or_else(|| anyhow!("no API resource for {key:?}"))?;
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("a {} without metadata.name", key.1))?;
    Ok((Api::namespaced_with(client.clone(), ns, ar), name.to_string()))
}

/// Server-side applies every document in order. Returns one line per resource.
pub async fn apply(client: &Client, docs: &[Value], dry_run: bool, force: bool) -> Result<Vec<String>> {
    let resources = discover(client, docs).await?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = dry_run;
    params.force = force;
    let mut out = Vec::new();
    for doc in docs {
        let (api, name) = api_for(client, &resources, doc)?;
        let kind = doc["kind"].as_str().unwrap_or("");
        api.patch(&name, &params, &Patch::Apply(doc))
            .await
            .map_err(explain)
            .with_context(|| format!("applying {kind}/{name}"))?;
        out.push(format!(
            "{kind}/{name} applied{}",
            if dry_run { " (server dry run)" } else { "" }
        ));
    }
    Ok(out)
}

/// Deletes every document, last first; absent ones are fine.
pub async fn delete(client: &Client, docs: &[Value], dry_run: bool) -> Result<Vec<String>> {
    let resources = discover(client, docs).await?;
    let params = DeleteParams {
        dry_run,
        ..Default::default()
    };
    let mut out = Vec::new();
    for doc in docs.iter().rev() {
        let (api, name) = api_for(client, &resources, doc)?;
        let kind = doc["kind"].as_str().unwrap_or("");
        match api.delete(&name, &params).await {
            Ok(_) => out.push(format!(
                "{kind}/{name} deleted{}",
                if dry_run { " (server dry run)" } else { "" }
            )),
            Err(kube::Error::Api(s)) if s.code == 404 => out.push(format!("{kind}/{name} already absent")),
            Err(e) => return Err(explain(e)).with_context(|| format!("deleting {kind}/{name}")),
        }
    }
    Ok(out)
}

fn explain(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "forbidden: {} (RBAC: the account needs patch/delete on this kind)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 409 => anyhow!(
            "conflict: {} (another field manager owns these fields; re-run with --force-conflicts to take them over)",
            s.message
        ),
        kube::Error::Api(s) => anyhow!("the API server answered {} {}: {}", s.code, s.reason, s.message),
        other => anyhow!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Client, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, "default"), handle)
    }

    fn reply(status: u16, body: Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    fn status(code: u16, reason: &str, message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
    }

    fn docs() -> Vec<Value> {
        vec![
            json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                   "metadata": {"name": "model-router", "namespace": "ai"}, "spec": {"url": "oci://r/x@sha256:ab"}}),
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "llama-v1", "namespace": "ai"}, "spec": {"maxReplicas": 3}}),
        ]
    }

    fn resource_list(group_version: &str, kind: &str, plural: &str) -> Value {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
               "resources": [{"name": plural, "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get", "patch", "delete"]},
                             {"name": format!("{plural}/status"), "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get"]}]})
    }

    async fn body_json(req: Request<Body>) -> Value {
        use http_body_util::BodyExt;
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn expect_discovery(handle: &mut Handle) {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "GET");
        assert_eq!(req.uri().path(), "/apis/autoscaling/v2");
        send.send_response(reply(
            200,
            resource_list("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        ));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/apis/extensions.istio.io/v1alpha1");
        send.send_response(reply(
            200,
            resource_list("extensions.istio.io/v1alpha1", "WasmPlugin", "wasmplugins"),
        ));
    }

    #[tokio::test]
    async fn server_side_apply_exchanges() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            expect_discovery(&mut handle).await;
            for (path, kind) in [
                (
                    "/apis/extensions.istio.io/v1alpha1/namespaces/ai/wasmplugins/model-router",
                    "WasmPlugin",
                ),
                (
                    "/apis/autoscaling/v2/namespaces/ai/horizontalpodautoscalers/llama-v1",
                    "HorizontalPodAutoscaler",
                ),
            ] {
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), "PATCH");
                assert_eq!(req.uri().path(), path);
                let q = req.uri().query().unwrap_or("");
                assert!(q.contains("fieldManager=wasmpack"), "{q}");
                assert!(q.contains("dryRun=All"), "{q}");
                assert!(!q.contains("force=true"), "{q}");
                assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
                let body = body_json(req).await;
                assert_eq!(body["kind"], kind);
                assert_eq!(body["metadata"]["namespace"], "ai");
                send.send_response(reply(200, body));
            }
        });
        let out = apply(&client, &docs(), true, false).await.unwrap();
        assert_eq!(
            out,
            [
                "WasmPlugin/model-router applied (server dry run)",
                "HorizontalPodAutoscaler/llama-v1 applied (server dry run)"
            ]
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn force_conflicts_sets_force() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            expect_discovery(&mut handle).await;
            let (req, send) = handle.next_request().await.unwrap();
            let q = req.uri().query().unwrap_or("").to_string();
            assert!(q.contains("force=true") && !q.contains("dryRun"), "{q}");
            send.send_response(reply(
                409,
                status(
                    409,
                    "Conflict",
                    "Apply failed with 1 conflict: conflict with \"kubectl\"",
                ),
            ));
        });
        let e = apply(&client, &docs(), false, true).await.unwrap_err();
        assert!(format!("{e:#}").contains("conflict: Apply failed"), "{e:#}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_istio_crds_are_named() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(reply(
                200,
                resource_list("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
            ));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.uri().path(), "/apis/extensions.istio.io/v1alpha1");
            send.send_response(reply(
                404,
                status(404, "NotFound", "the server could not find the requested resource"),
            ));
        });
        let e = apply(&client, &docs(), false, false).await.unwrap_err();
        assert!(e.to_string().contains("Istio's CRDs are missing"), "{e:#}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn forbidden_is_explained() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            expect_discovery(&mut handle).await;
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(reply(
                403,
                status(
                    403,
                    "Forbidden",
                    "wasmplugins.extensions.istio.io \"model-router\" is forbidden",
                ),
            ));
        });
        let e = apply(&client, &docs(), false, false).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("applying WasmPlugin/model-router") && msg.contains("forbidden"),
            "{msg}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn delete_goes_last_first_and_tolerates_absent() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            expect_discovery(&mut handle).await;
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "DELETE");
            assert_eq!(
                req.uri().path(),
                "/apis/autoscaling/v2/namespaces/ai/horizontalpodautoscalers/llama-v1"
            );
            send.send_response(reply(404, status(404, "NotFound", "not found")));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(
                req.uri().path(),
                "/apis/extensions.istio.io/v1alpha1/namespaces/ai/wasmplugins/model-router"
            );
            send.send_response(reply(200, status(200, "", "")));
        });
        let out = delete(&client, &docs(), false).await.unwrap();
        assert_eq!(
            out,
            [
                "HorizontalPodAutoscaler/llama-v1 already absent",
                "WasmPlugin/model-router deleted"
            ]
        );
        server.await.unwrap();
    }

    #[test]
    fn pull_secret_holds_only_the_registry_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"reg.example:5000":{"auth":"dTpw"},"other.example":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        // SAFETY: tests in this module do not read DOCKER_CONFIG concurrently.
        unsafe { std::env::set_var("DOCKER_CONFIG", dir.path()) };
        let s = pull_secret_doc("reg.example:5000", "ai").unwrap();
        assert_eq!(s["type"], "kubernetes.io/dockerconfigjson");
        assert_eq!(
            s["data"][".dockerconfigjson"],
            base64(br#"{"auths":{"reg.example:5000":{"auth":"dTpw"}}}"#)
        );
        assert!(pull_secret_doc("missing.example", "ai").is_err());
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }
}
