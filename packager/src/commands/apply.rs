//! `wasmpack apply` / `wasmpack delete`: server-side apply (field manager `wasmpack`) of the
//! rendered resources, and an inventory of what was applied for the installation, so that the
//! next apply prunes what the render no longer contains and delete removes exactly it.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::cli::{ApplyArgs, ClusterArgs, DeleteArgs};
use crate::commands::manifests::{prepare, warn};
use crate::registry::{docker_login, parse_reference};
use crate::render::{is_dns_label, Options, Target, INSTALLATION_LABEL, MANAGED_BY};
use crate::settings::RenderSettings;

pub const FIELD_MANAGER: &str = "wasmpack";

/// The one crypto provider of every TLS client `wasmpack` makes (kube, the registry client,
/// reqwest): ring. oci-client and reqwest are built without their bundled aws-lc-rs
/// (`rustls-tls-no-provider`), so rustls has no default: install it, once, before any client is
/// made (`cargo tree -i aws-lc-rs` is empty).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client of the kubeconfig's cluster, and where it is for messages: `the Kubernetes API at
/// https://… (context NAME)`.
pub async fn client(cluster: &ClusterArgs, namespace: &str) -> Result<(Client, String)> {
    install_crypto_provider();
    let options = kube::config::KubeConfigOptions {
        context: cluster.context.clone(),
        ..Default::default()
    };
    // kube's message already holds the OS error (its source repeats it) and quotes the path twice.
    let mut config = kube::Config::from_kubeconfig(&options).await.map_err(|e| {
        let msg = e.to_string().replace("'\"", "'").replace("\"'", "'");
        anyhow!("loading the kubeconfig (KUBECONFIG, ~/.kube/config, --context): {msg}")
    })?;
    let context = match &cluster.context {
        Some(c) => Some(c.clone()),
        None => kube::config::Kubeconfig::read().ok().and_then(|k| k.current_context),
    };
    let at = match context {
        Some(c) => format!("the Kubernetes API at {} (context {c})", config.cluster_url),
        None => format!("the Kubernetes API at {}", config.cluster_url),
    };
    config.default_namespace = namespace.to_string();
    let client = Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, at))
}

/// One object of an installation: what the inventory records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ObjectRef {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    fn of(doc: &Value) -> ObjectRef {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        ObjectRef {
            api_version: s(&doc["apiVersion"]),
            kind: s(&doc["kind"]),
            namespace: s(&doc["metadata"]["namespace"]),
            name: s(&doc["metadata"]["name"]),
        }
    }

    fn show(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Which installation: its namespace (where the inventory lives) and name.
#[derive(Debug, Clone)]
pub struct Installation {
    pub namespace: String,
    pub name: String,
}

impl Installation {
    fn of(o: &Options) -> Installation {
        Installation {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        }
    }

    /// The inventory: a ConfigMap listing every object an apply of the installation may have made.
    pub fn inventory_name(&self) -> String {
        format!("{}-inventory", self.name)
    }
}

/// The mode an installation was rendered for, as the inventory records it (`gateway NAME`, ...).
pub fn mode_of(target: &Target) -> String {
    match target {
        Target::Selector(sel) => {
            let labels: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("selector {}", labels.join(","))
        }
        Target::Gateway { name, .. } => format!("gateway {name}"),
        Target::Waypoint { name, .. } => format!("waypoint {name}"),
        Target::EnvoyGateway { name, .. } => format!("envoy-gateway {name}"),
    }
}

fn inventory_doc(i: &Installation, mode: &str, objects: &[ObjectRef]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": i.inventory_name(), "namespace": i.namespace,
                     "labels": {MANAGED_BY.0: MANAGED_BY.1, INSTALLATION_LABEL: i.name}},
        "data": {"objects": serde_json::to_string_pretty(objects).unwrap_or_default(), "mode": mode}})
}

/// What the inventory lists, and the mode it records (empty for inventories older than that).
async fn read_inventory(client: &Client, i: &Installation) -> Result<Option<(Vec<ObjectRef>, String)>> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &i.namespace);
    let cm = api
        .get_opt(&i.inventory_name())
        .await
        .map_err(explain)
        .with_context(|| format!("reading the inventory ConfigMap {}/{}", i.namespace, i.inventory_name()))?;
    let Some(cm) = cm else { return Ok(None) };
    let data = cm.data.unwrap_or_default();
    let text = data.get("objects").cloned().unwrap_or_default();
    let objects = serde_json::from_str(&text).with_context(|| {
        format!(
            "the inventory ConfigMap {}/{} is not wasmpack's (its `objects` is not a list)",
            i.namespace,
            i.inventory_name()
        )
    })?;
    Ok(Some((objects, data.get("mode").cloned().unwrap_or_default())))
}

pub async fn run_apply(args: &ApplyArgs) -> Result<()> {
    let pull_secret = args
        .pull_secret_from_docker_config
        .then(|| format!("{}-pull-secret", args.render.name));
    let settings = RenderSettings::resolve(&args.render, pull_secret.clone())?;
    let (opts, docs) = prepare(&settings).await?;
    warn(&settings, &opts);
    let mut values: Vec<Value> = Vec::new();
    if let Some(name) = &pull_secret {
        let registry = parse_reference(&settings.image)?.resolve_registry().to_string();
        values.push(pull_secret_doc(&registry, name, &opts)?);
    }
    values.extend(docs.into_iter().map(|d| d.value));
    let (client, at) = client(&args.cluster, &opts.namespace).await?;
    let lines = apply(&client, &opts, &values, args.cluster.dry_run, args.force_conflicts)
        .await
        .context(at)?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// The mode `delete` was given, as the inventory records it (`None`: not given).
fn delete_mode(args: &DeleteArgs) -> Result<Option<String>> {
    let mut modes = Vec::new();
    if !args.selector.is_empty() {
        modes.push(mode_of(&Target::Selector(args.selector.iter().cloned().collect())));
    }
    let named = [
        ("gateway", &args.gateway),
        ("waypoint", &args.waypoint),
        ("envoy-gateway", &args.envoy_gateway),
    ];
    for (kind, name) in named {
        if let Some(n) = name {
            modes.push(format!("{kind} {n}"));
        }
    }
    if modes.len() > 1 {
        bail!("give at most one of --selector, --gateway, --waypoint or --envoy-gateway");
    }
    Ok(modes.pop())
}

pub async fn run_delete(args: &DeleteArgs) -> Result<()> {
    if !is_dns_label(&args.namespace) {
        bail!("--namespace {}: not a Kubernetes namespace name", args.namespace);
    }
    if !is_dns_label(&args.name) {
        bail!("--name {}: not an installation name (a DNS label)", args.name);
    }
    let wanted = delete_mode(args)?;
    let i = Installation {
        namespace: args.namespace.clone(),
        name: args.name.clone(),
    };
    let (client, at) = client(&args.cluster, &i.namespace).await?;
    let Some((objects, mode)) = read_inventory(&client, &i).await.context(at.clone())? else {
        bail!(
            "no installation `{}` in namespace `{}`: its inventory ConfigMap {}/{} does not exist (`wasmpack apply` \
             records it; check --namespace and --name). Objects installed without it carry the label {}={} \
             (kubectl delete -A -l {}={} on each kind)",
            i.name,
            i.namespace,
            i.namespace,
            i.inventory_name(),
            INSTALLATION_LABEL,
            i.name,
            INSTALLATION_LABEL,
            i.name
        );
    };
    if let Some(w) = wanted {
        if !mode.is_empty() && mode != w {
            bail!(
                "installation `{}` in `{}` was applied as `{mode}`, not `{w}`: nothing deleted (drop the mode flag \
                 to delete it anyway)",
                i.name,
                i.namespace
            );
        }
    }
    for line in delete(&client, &i, &objects, args.cluster.dry_run).await.context(at)? {
        println!("{line}");
    }
    Ok(())
}

/// A `kubernetes.io/dockerconfigjson` Secret holding only the image registry's credentials, read
/// as `push` reads them (the docker config's `auths`, `credsStore` and `credHelpers`).
pub fn pull_secret_doc(registry: &str, name: &str, o: &Options) -> Result<Value> {
    let (user, password) = docker_login(registry)?.ok_or_else(|| {
        anyhow!("no credentials for {registry} in the docker config (DOCKER_CONFIG or ~/.docker/config.json): run `docker login {registry}`")
    })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = b64.encode(format!("{user}:{password}"));
    let only = json!({"auths": {registry: {"username": user, "password": password, "auth": auth}}}).to_string();
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": o.namespace,
                     "labels": {MANAGED_BY.0: MANAGED_BY.1, INSTALLATION_LABEL: o.name}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64.encode(only.as_bytes())},
    }))
}

/// The API resource and scope (namespaced or not) of each kind, from the cluster's discovery.
/// Kinds the cluster does not serve are errors when `required`, else left out.
async fn discover(
    client: &Client,
    kinds: &[(String, String)],
    required: &[(String, String)],
) -> Result<BTreeMap<(String, String), (ApiResource, bool)>> {
    let mut out = BTreeMap::new();
    let mut by_version: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (v, k) in kinds {
        let e = by_version.entry(v.as_str()).or_default();
        if !e.contains(&k.as_str()) {
            e.push(k);
        }
    }
    for (api_version, ks) in by_version {
        let list = if api_version.contains('/') {
            client.list_api_group_resources(api_version).await
        } else {
            client.list_core_api_resources(api_version).await
        };
        let list = match list {
            Ok(l) => Some(l),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(explain(e)).context(format!("discovering {api_version}")),
        };
        for kind in ks {
            let found = list
                .as_ref()
                .and_then(|l| l.resources.iter().find(|r| r.kind == kind && !r.name.contains('/')));
            let Some(r) = found else {
                if !required.iter().any(|(v, k)| v == api_version && k == kind) {
                    continue;
                }
                if api_version.contains("istio.io") {
                    bail!("Istio's CRDs are missing: the cluster does not serve {kind} ({api_version}); install Istio (1.27 or later) first");
                }
                if api_version.starts_with("gateway.networking.k8s.io") {
                    bail!("the Gateway API CRDs are missing: the cluster does not serve {kind} ({api_version}); install them (Istio's docs: 'Gateway API')");
                }
                bail!("the cluster does not serve {kind} ({api_version}): is the matching CRD installed?");
            };
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind);
            out.insert(
                (api_version.to_string(), kind.to_string()),
                (ApiResource::from_gvk_with_plural(&gvk, &r.name), r.namespaced),
            );
        }
    }
    Ok(out)
}

fn api_for(
    client: &Client,
    resources: &BTreeMap<(String, String), (ApiResource, bool)>,
    o: &ObjectRef,
) -> Result<Api<DynamicObject>> {
    let (ar, namespaced) = resources
        .get(&(o.api_version.clone(), o.kind.clone()))
        .ok_or_else(|| anyhow!("no API resource for {} {}", o.api_version, o.kind))?;
    Ok(if *namespaced {
        Api::namespaced_with(client.clone(), &o.namespace, ar)
    } else {
        Api::all_with(client.clone(), ar)
    })
}

fn kinds_of(objects: &[ObjectRef]) -> Vec<(String, String)> {
    objects
        .iter()
        .map(|o| (o.api_version.clone(), o.kind.clone()))
        .collect()
}

/// Records the inventory (server-side apply of its ConfigMap).
async fn record(client: &Client, doc: &Value, params: &PatchParams) -> Result<()> {
    let r = ObjectRef::of(doc);
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &r.namespace,
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ConfigMap"), "configmaps"),
    );
    api.patch(&r.name, params, &Patch::Apply(doc))
        .await
        .map_err(explain)
        .with_context(|| format!("recording the inventory {}", r.show()))?;
    Ok(())
}

/// Server-side applies every document in order, prunes what the previous apply of the
/// installation made and this render no longer has, and records the new inventory. One line
/// per object. Before anything is applied, the inventory lists the old and the new objects
/// together: whatever step fails, it names every object this installation may have made, so
/// `delete` (or the next apply's prune) finds them all.
pub async fn apply(client: &Client, o: &Options, docs: &[Value], dry_run: bool, force: bool) -> Result<Vec<String>> {
    let i = Installation::of(o);
    let mode = mode_of(&o.target);
    let previous = read_inventory(client, &i).await?.map(|(p, _)| p).unwrap_or_default();
    let current: Vec<ObjectRef> = docs.iter().map(ObjectRef::of).collect();
    let mut kinds = kinds_of(&current);
    kinds.extend(kinds_of(&previous));
    let resources = discover(client, &kinds, &kinds_of(&current)).await?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = dry_run;
    params.force = force;
    let note = if dry_run { " (server dry run)" } else { "" };
    let mut out = Vec::new();
    let mut union = previous.clone();
    union.extend(current.iter().filter(|c| !previous.contains(c)).cloned());
    if union != previous {
        record(client, &inventory_doc(&i, &mode, &union), &params).await?;
    }
    for (doc, r) in docs.iter().zip(&current) {
        let api = api_for(client, &resources, r)?;
        api.patch(&r.name, &params, &Patch::Apply(doc))
            .await
            .map_err(explain)
            .with_context(|| format!("applying {}", r.show()))?;
        out.push(format!("{} applied{note}", r.show()));
    }
    let gone: Vec<ObjectRef> = previous.into_iter().filter(|p| !current.contains(p)).collect();
    out.extend(remove(client, &resources, &gone, dry_run, "pruned (no longer rendered)").await?);
    let inventory = inventory_doc(&i, &mode, &current);
    record(client, &inventory, &params).await?;
    out.push(format!(
        "{} recorded ({} objects){note}",
        ObjectRef::of(&inventory).show(),
        current.len()
    ));
    Ok(out)
}

/// Deletes the installation's objects (last first) and its inventory; absent ones are fine.
pub async fn delete(client: &Client, i: &Installation, objects: &[ObjectRef], dry_run: bool) -> Result<Vec<String>> {
    let mut all = objects.to_vec();
    all.push(ObjectRef::of(&inventory_doc(i, "", &[])));
    let resources = discover(client, &kinds_of(&all), &[]).await?;
    remove(client, &resources, &all, dry_run, "deleted").await
}

async fn remove(
    client: &Client,
    resources: &BTreeMap<(String, String), (ApiResource, bool)>,
    objects: &[ObjectRef],
    dry_run: bool,
    what: &str,
) -> Result<Vec<String>> {
    let params = DeleteParams {
        dry_run,
        ..Default::default()
    };
    let mut out = Vec::new();
    for r in objects.iter().rev() {
        if !resources.contains_key(&(r.api_version.clone(), r.kind.clone())) {
            out.push(format!("{} skipped: the cluster no longer serves {}", r.show(), r.kind));
            continue;
        }
        let api = api_for(client, resources, r)?;
        match api.delete(&r.name, &params).await {
            Ok(_) if dry_run => out.push(format!("{} would be {what} (server dry run)", r.show())),
            Ok(_) => out.push(format!("{} {what}", r.show())),
            Err(kube::Error::Api(s)) if s.code == 404 => out.push(format!("{} already absent", r.show())),
            Err(e) => return Err(explain(e)).with_context(|| format!("deleting {}", r.show())),
        }
    }
    Ok(out)
}

fn explain(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 401 => anyhow!(
            "unauthorized: {} (the kubeconfig's credentials were refused)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "forbidden: {} (RBAC: the account needs get/patch/delete on this kind)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 409 => anyhow!(
            "conflict: {} (another field manager owns these fields; re-run with --force-conflicts to take them over)",
            s.message
        ),
        kube::Error::Api(s) => anyhow!("the API server answered {} {}: {}", s.code, s.reason, s.message),
        other => transport(&other),
    }
}

/// A request that got no answer: one line, each cause once (hyper's chain repeats
/// `client error (Connect)`, and kube wraps it all in `ServiceError`).
fn transport(e: &kube::Error) -> anyhow::Error {
    let chain = crate::registry::error_chain(e);
    let mut parts: Vec<&str> = Vec::new();
    for p in chain.split(": ") {
        if p != "ServiceError" && parts.last() != Some(&p) {
            parts.push(p);
        }
    }
    anyhow!("no answer: {}", parts.join(": "))
}
