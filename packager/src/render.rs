//! Renders the installation of the filter and the resources that go with it, as data. No I/O:
//! the image digest is resolved by the caller. `plan` checks everything that spans resources
//! (names, namespaces, what a mode can express) first; `render` cannot fail after it.

use std::collections::BTreeMap;

use model_router::config::Config;
use model_router::telemetry::{DURATION_BUCKETS_MS, IN_FLIGHT, LABEL_KEYS, TTFT_BUCKETS_MS};
use serde_json::{json, Value};

pub const FILTER_NAME: &str = "model-router";
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The label that ties every object to its installation (the inventory's selector).
pub const INSTALLATION_LABEL: &str = "wasmpack.model-router.io/installation";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "wasmpack");

/// Where the filter runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Sidecars of the pods with these labels (the callers of the models): outbound traffic.
    Selector(BTreeMap<String, String>),
    /// A Gateway API gateway (deployed by Istio) of this name, serving these host names.
    Gateway { name: String, hostnames: Vec<String> },
    /// An Istio ambient waypoint (a Gateway of class istio-waypoint in the install namespace);
    /// clients call `service:port`, which is enrolled to it.
    Waypoint { name: String, service: String, port: u16 },
    /// An Envoy Gateway Gateway of this name, serving these host names; `listener` is the xDS
    /// listener the EnvoyPatchPolicy of body routing patches (`<ns>/<gateway>/<section>`, or
    /// `tcp-<port>` with Envoy Gateway's XDSNameSchemeV2).
    EnvoyGateway {
        name: String,
        hostnames: Vec<String>,
        listener: String,
    },
}

impl Target {
    /// Routing is a Gateway API HTTPRoute to Services (not a VirtualService to subsets).
    fn routes_to_services(&self) -> bool {
        !matches!(self, Target::Selector(_))
    }
}

/// Istio's resource for a plain Wasm filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterApi {
    WasmPlugin,
    /// `TrafficExtension` (extensions.istio.io/v1alpha1, Istio 1.30+).
    TrafficExtension,
}

/// Kinds of resource `--only` / `--skip` choose among.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The WasmPlugin, or the EnvoyFilter pair with body routing.
    Filter,
    DestinationRule,
    VirtualService,
    HttpRoute,
    Hpa,
    AdapterRules,
    NetworkPolicy,
    AuthorizationPolicy,
    /// Limitador's limits for `mode: global` limits (and a ServiceEntry for a service outside the mesh).
    RateLimits,
    /// ServiceEntry + TLS-originating DestinationRule of each external provider.
    External,
    /// The proxies' listener buffer limit raised to `maxBodyBytes` where the default is lower.
    BufferLimit,
}

/// Egress and ingress the model pods get besides what the installation needs.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Pod selectors (in the model's namespace) the model pods may reach.
    pub dependencies: Vec<BTreeMap<String, String>>,
    pub egress_cidrs: Vec<String>,
    pub egress_namespaces: Vec<String>,
    /// Ports (numbers or names) the model pods may reach anywhere.
    pub egress_ports: Vec<Value>,
    /// Namespaces whose pods may call the model pods too.
    pub ingress_namespaces: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Installation name: prefixes every object, labels the inventory.
    pub name: String,
    /// Namespace of the filter, the gateway route and the adapter rules; model resources go to
    /// the namespace of their host.
    pub namespace: String,
    pub target: Target,
    /// WasmPlugin or TrafficExtension (plain Wasm installs on Istio).
    pub extension_api: FilterApi,
    /// `registry/repository` of the image.
    pub repository: String,
    /// `sha256:<hex>` of the image manifest.
    pub digest: String,
    pub fail_open: bool,
    pub phase: String,
    pub priority: Option<i32>,
    pub pull_secret: Option<String>,
    /// Destination name -> Deployment name (default: the destination name).
    pub workloads: BTreeMap<String, String>,
    pub max_in_flight: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Principals (`cluster.local/ns/NS/sa/SA`) allowed to call the model pods (default: the
    /// gateway, or the namespace of the callers).
    pub principals: Vec<String>,
    pub network: Network,
    /// Host -> labels selecting its pods (default `app: <service>`).
    pub pod_selectors: BTreeMap<String, BTreeMap<String, String>>,
    /// Host -> the pod label key of its subsets (default `version`).
    pub subset_labels: BTreeMap<String, String>,
    /// Parts to render (empty: all).
    pub only: Vec<Part>,
    pub skip: Vec<Part>,
}

/// One rendered resource: a file stem, a comment explaining it, and the object.
#[derive(Debug, Clone)]
pub struct Doc {
    pub file: String,
    pub comment: String,
    pub value: Value,
}

/// A problem found before rendering: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A configuration field path (`models[0].destinations[1].host`) or a flag (`--gateway`).
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

fn problem(at: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        at: at.into(),
        message: message.into(),
    }
}

/// A model-serving Service named by the destinations' `host`.
#[derive(Debug, Clone)]
pub struct Host {
    pub host: String,
    /// The Service's name (first label of the host).
    pub service: String,
    /// Its namespace: the second label of `svc.ns[.svc.cluster.local]`, else the install namespace.
    pub namespace: String,
    pub port: Option<u16>,
    /// (destination, subset) in config order.
    pub routes: Vec<(String, Option<String>)>,
    /// An external provider (`api.openai.com`): a ServiceEntry, TLS originated by the proxy.
    pub external: bool,
}

/// The plain-HTTP port the mesh calls an external provider on; the proxy originates TLS to the
/// provider's port (Istio's egress TLS origination: ServiceEntry port 80 → targetPort 443).
pub const EXTERNAL_HTTP_PORT: u16 = 80;

/// A public DNS name outside the cluster (`api.openai.com`): three or more labels, not a
/// `*.svc` / `*.svc.cluster.local` Service host.
fn external_host(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 3
        && labels.iter().all(|l| is_dns_label(l))
        && !labels.contains(&"svc")
        && !host.ends_with(".cluster.local")
}

/// One destination, once (a destination name used by several models is one workload).
#[derive(Debug, Clone)]
struct Dest {
    name: String,
    models: Vec<String>,
    host: Option<usize>,
}

/// What will be rendered, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub hosts: Vec<Host>,
    dests: Vec<Dest>,
    /// (destination, InferencePool) for destinations served by an inference pool.
    pools: Vec<(String, String)>,
    /// The rate limit service of global limits: its host, port, and the namespace of its
    /// Service (`None`: outside the cluster, reached through a ServiceEntry).
    rate_limit: Option<(String, u16, Option<String>)>,
}

/// RFC 1123 label: lowercase letters, digits and `-`, starting and ending alphanumeric, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS label made from any name (`OpenAI.Prod` → `openai-prod`,
/// `meta-llama/Llama-3.1-8B` → `meta-llama-llama-3-1-8b`); `None` if nothing is left.
pub fn dns_label(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    let mut out: String = out.chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

/// Service and namespace of a host: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
fn service_of(host: &str, default_ns: &str) -> Result<(String, String), String> {
    if external_host(host) {
        return Err(format!(
            "`{host}` is outside the cluster, not a Kubernetes Service host"
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| !is_dns_label(l)) {
        return Err(format!(
            "`{host}` is not a Kubernetes Service host (lowercase DNS labels: svc, svc.ns or svc.ns.svc.cluster.local)"
        ));
    }
    let ns = match labels.as_slice() {
        [_] => default_ns.to_string(),
        [_, ns] | [_, ns, "svc"] | [_, ns, "svc", _, _] => ns.to_string(),
        _ => {
            return Err(format!(
                "`{host}` is not a Kubernetes Service host (svc, svc.ns, svc.ns.svc or svc.ns.svc.cluster.local); \
                 an external provider is a public name such as api.openai.com"
            ))
        }
    };
    Ok((labels[0].to_string(), ns))
}

impl Options {
    pub fn wants(&self, p: Part) -> bool {
        (self.only.is_empty() || self.only.contains(&p)) && !self.skip.contains(&p)
    }

    /// `<installation>-<suffix>`, or the installation name itself.
    pub fn object_name(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            self.name.clone()
        } else {
            format!("{}-{suffix}", self.name)
        }
    }

    fn workload(&self, dest: &str) -> String {
        self.workloads
            .get(dest)
            .cloned()
            .or_else(|| dns_label(dest))
            .unwrap_or_else(|| dest.to_string())
    }

    fn meta(&self, name: &str, ns: &str) -> Value {
        json!({"name": name, "namespace": ns, "labels": {
            MANAGED_BY.0: MANAGED_BY.1,
            "app.kubernetes.io/part-of": FILTER_NAME,
            INSTALLATION_LABEL: self.name,
        }})
    }

    fn pods_of(&self, h: &Host) -> BTreeMap<String, String> {
        self.pod_selectors
            .get(&h.host)
            .cloned()
            .unwrap_or_else(|| BTreeMap::from([("app".to_string(), h.service.clone())]))
    }
}

/// Checks what the configuration and the options mean together; every problem at once.
pub fn plan(config: &Config, o: &Options) -> Result<Plan, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut hosts: Vec<Host> = Vec::new();
    let mut dests: Vec<Dest> = Vec::new();
    let mut pools: Vec<(String, String)> = Vec::new();
    let gateway = o.target.routes_to_services();
    let pools_ok = matches!(o.target, Target::Gateway { .. } | Target::EnvoyGateway { .. });
    for (i, m) in config.models.iter().enumerate() {
        for (j, d) in m.destinations.iter().enumerate() {
            let at = format!("models[{i}].destinations[{j}]");
            if let Some(pool) = &d.inference_pool {
                if !pools_ok {
                    problems.push(problem(
                        format!("{at}.inferencePool"),
                        "an InferencePool is a Gateway API backend: it needs a --gateway or --envoy-gateway install",
                    ));
                } else if d.host.is_some() || d.subset.is_some() {
                    problems.push(problem(
                        format!("{at}.inferencePool"),
                        "a destination is served by a Service (`host`) or by an InferencePool, not both",
                    ));
                } else if !is_dns_label(pool) {
                    problems.push(problem(
                        format!("{at}.inferencePool"),
                        format!("`{pool}` is not an object name"),
                    ));
                } else if !pools.iter().any(|(n, _)| n == &d.name) {
                    pools.push((d.name.clone(), pool.clone()));
                }
            }
            let located = d.host.as_ref().map(|host| {
                if external_host(host) {
                    dns_label(host)
                        .map(|svc| (svc, o.namespace.clone(), true))
                        .ok_or_else(|| format!("`{host}`: no object name can be made from it"))
                } else {
                    service_of(host, &o.namespace).map(|(svc, ns)| (svc, ns, false))
                }
            });
            if let (Some(Ok((_, _, true))), Some(host)) = (&located, &d.host) {
                if d.subset.is_some() {
                    problems.push(problem(
                        format!("{at}.subset"),
                        format!("`{host}` is an external provider: it has no subsets"),
                    ));
                }
                if matches!(o.target, Target::EnvoyGateway { .. }) {
                    problems.push(problem(
                        format!("{at}.host"),
                        format!(
                            "`{host}` is an external provider: on Envoy Gateway it needs a Backend resource, which \
                             wasmpack does not render"
                        ),
                    ));
                }
            }
            let host = match (&d.host, located) {
                (None, _) | (_, None) => None,
                (Some(host), Some(located)) => match located {
                    Err(e) => {
                        problems.push(problem(format!("{at}.host"), e));
                        None
                    }
                    Ok((service, namespace, external)) => {
                        let idx = match hosts.iter().position(|h| &h.host == host) {
                            Some(k) => k,
                            None => {
                                hosts.push(Host {
                                    host: host.clone(),
                                    service,
                                    namespace,
                                    port: None,
                                    routes: Vec::new(),
                                    external,
                                });
                                hosts.len() - 1
                            }
                        };
                        let h = &mut hosts[idx];
                        match (h.port, d.port) {
                            (Some(a), Some(b)) if a != b => problems.push(problem(
                                format!("{at}.port"),
                                format!("{b}, but another destination of `{host}` says {a}: one Service, one port"),
                            )),
                            (None, p) => h.port = p,
                            _ => {}
                        }
                        Some(idx)
                    }
                },
            };
            if gateway && d.subset.is_some() {
                problems.push(problem(
                    format!("{at}.subset"),
                    "a gateway or waypoint routes with a Gateway API HTTPRoute, which sends to Services, not \
                     DestinationRule subsets: give each destination its own Service (host) instead",
                ));
            }
            let is_external = host.and_then(|k| hosts.get(k)).is_some_and(|h| h.external);
            if gateway && d.host.is_some() && d.port.is_none() && !is_external {
                problems.push(problem(
                    format!("{at}.port"),
                    "an HTTPRoute (gateway, waypoint) needs the Service port of each destination",
                ));
            }
            match dests.iter_mut().find(|x| x.name == d.name) {
                Some(x) => {
                    // One destination name is one workload: the models it serves must agree.
                    let same = x.host == host
                        && config
                            .models
                            .iter()
                            .flat_map(|m| &m.destinations)
                            .filter(|y| y.name == d.name)
                            .all(|y| y.subset == d.subset && y.host == d.host);
                    if !same {
                        problems.push(problem(
                            format!("{at}.name"),
                            format!(
                                "destination `{}` is also used by model `{}` with another host or subset; \
                                 one destination name is one workload (rename one of them)",
                                d.name,
                                x.models.join("`, `")
                            ),
                        ));
                    }
                    x.models.push(m.name.clone());
                }
                None => dests.push(Dest {
                    name: d.name.clone(),
                    models: vec![m.name.clone()],
                    host,
                }),
            }
            if let Some(k) = host {
                let h = &mut hosts[k];
                if !h.routes.iter().any(|(n, _)| n == &d.name) {
                    h.routes.push((d.name.clone(), d.subset.clone()));
                }
            }
        }
    }
    if gateway {
        let mut by_service: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for h in &hosts {
            for (d, _) in &h.routes {
                by_service.entry(h.host.as_str()).or_default().push(d);
            }
        }
        for (host, ds) in by_service {
            if ds.len() > 1 {
                problems.push(problem(
                    "models",
                    format!(
                        "destinations `{}` all go to Service `{host}`: at a gateway each destination needs its own \
                         Service, or the route cannot tell them apart",
                        ds.join("`, `")
                    ),
                ));
            }
        }
    }
    // Names every object will get.
    for d in &dests {
        let w = o.workload(&d.name);
        if !is_dns_label(&w) {
            problems.push(problem(
                "--workload",
                format!("`{w}` (the Deployment of destination `{}`) is not a DNS label", d.name),
            ));
        }
        if d.host.is_some() && o.wants(Part::Hpa) && !is_dns_label(&o.object_name(&w)) {
            problems.push(problem(
                "--name",
                format!(
                    "`{}` is longer than 63 characters: use a shorter --name or --workload",
                    o.object_name(&w)
                ),
            ));
        }
    }
    for h in &hosts {
        for suffix in ["", "-model", "-callers"] {
            let n = o.object_name(&format!("{}{suffix}", h.service));
            if !is_dns_label(&n) {
                problems.push(problem(
                    "--name",
                    format!("`{n}` would be longer than 63 characters: use a shorter --name"),
                ));
            }
        }
    }
    for w in o.workloads.keys() {
        if !dests.iter().any(|d| &d.name == w) {
            problems.push(problem("--workload", format!("no destination is called `{w}`")));
        }
    }
    for host in o.pod_selectors.keys().chain(o.subset_labels.keys()) {
        if !hosts.iter().any(|h| &h.host == host) {
            problems.push(problem(
                "--pod-selector/--subset-label",
                format!("no destination has host `{host}`"),
            ));
        }
    }
    if let Target::Waypoint { service, .. } = &o.target {
        match service_of(service, &o.namespace) {
            Err(e) => problems.push(problem("--service", e)),
            Ok((svc, ns)) => {
                if let Some(p) = catch_all_problem(config, &hosts, service, &svc, &ns) {
                    problems.push(p);
                }
                for h in hosts.iter().filter(|h| h.namespace != ns && !h.external) {
                    problems.push(problem(
                        "--service",
                        format!(
                            "`{}` is in namespace `{}`, not `{ns}` where the mesh route of `{service}` lives: a \
                             waypoint route sends to Services of its own namespace (else a ReferenceGrant is needed)",
                            h.host, h.namespace
                        ),
                    ));
                }
            }
        }
    }
    let mut rate_limit = None;
    if let Some(r) = &config.rate_limit_service {
        match crate::limitador::istio_cluster(&r.cluster) {
            Some((host, port)) => {
                let ns = service_of(&host, &o.namespace).ok().map(|(_, ns)| ns);
                rate_limit = Some((host, port, ns));
            }
            None => {
                let hint = match r.cluster.rsplit_once(':') {
                    Some((h, p)) if p.parse::<u16>().is_ok() => format!(" (for `{h}` port {p}: `outbound|{p}||{h}`)"),
                    _ => String::new(),
                };
                problems.push(problem(
                    "rateLimitService.cluster",
                    format!(
                        "`{}` is not a cluster Istio creates: Istio names the cluster of a host and port \
                         `outbound|PORT||HOST`{hint}",
                        r.cluster
                    ),
                ));
            }
        }
    }
    problems.dedup();
    if problems.is_empty() {
        Ok(Plan {
            hosts,
            dests,
            pools,
            rate_limit,
        })
    } else {
        Err(problems)
    }
}

/// Where a mode cannot route by the body (a waypoint), requests whose model is in the body take
/// the route's catch-all, the Service clients call. When that Service is one model's backend, the
/// requests of every other model would land on it (a chat model's on an embeddings server, a
/// canary at 0 %): refused, naming the models whose requests would go astray.
fn catch_all_problem(config: &Config, hosts: &[Host], service: &str, svc: &str, ns: &str) -> Option<Problem> {
    if config.body_routing {
        return None;
    }
    let is_it = |h: &Host| !h.external && h.service == svc && h.namespace == ns;
    if !hosts.iter().any(is_it) {
        return None;
    }
    let served_there = |d: &model_router::config::Destination| {
        hosts
            .iter()
            .find(|h| d.host.as_ref() == Some(&h.host))
            .is_some_and(is_it)
    };
    let astray: Vec<&str> = config
        .models
        .iter()
        .filter(|m| !m.destinations.is_empty() && !m.destinations.iter().all(served_there))
        .map(|m| m.name.as_str())
        .collect();
    if astray.is_empty() {
        return None;
    }
    Some(problem(
        "--service",
        format!(
            "`{service}` is the Service of model destinations itself, and a waypoint cannot route by the body: \
             requests naming model{} `{}` in the JSON body would all go to it. Give --service a Service that \
             fronts the models (not one model's own), or install on a --gateway or --envoy-gateway, which \
             route by the body",
            if astray.len() == 1 { "" } else { "s" },
            astray.join("`, `")
        ),
    ))
}

/// The models whose requests, named in the JSON body, are not routed by this install (bodyRouting
/// off): they take the route's catch-all (`wasmpack manifests` warns, naming them).
pub fn body_models_unrouted(config: &Config) -> Vec<String> {
    if config.body_routing {
        return Vec::new();
    }
    config
        .models
        .iter()
        .filter(|m| !m.destinations.is_empty())
        .map(|m| m.name.clone())
        .collect()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Every document, in apply order. `plan` must have accepted the configuration and options.
pub fn render(config_json: &Value, config: &Config, o: &Options, plan: &Plan) -> Vec<Doc> {
    let mut docs = Vec::new();
    let url = format!("oci://{}@{}", o.repository, o.digest);
    let ports = model_ports(config);
    if o.wants(Part::Filter) {
        match &o.target {
            Target::EnvoyGateway { name, listener, .. } => {
                docs.push(envoy_extension_policy(config, config_json, o, name));
                if config.body_routing {
                    docs.push(envoy_patch_policy(config, o, name, listener));
                }
            }
            Target::Selector(_) | Target::Gateway { .. } if config.body_routing => {
                docs.extend(envoy_filters(config_json, o, &url, &ports));
            }
            _ => docs.push(wasm_plugin(config_json, o, &url, &ports)),
        }
    }
    if o.wants(Part::BufferLimit) {
        docs.extend(buffer_limit(config, o, &ports));
    }
    let hs = &plan.hosts;
    match &o.target {
        Target::Selector(_) => {
            if o.wants(Part::DestinationRule) {
                let failover = config.failover.as_ref();
                docs.extend(
                    hs.iter()
                        .filter(|h| !h.external)
                        .map(|h| destination_rule(h, o, failover)),
                );
            }
            if o.wants(Part::VirtualService) {
                docs.extend(hs.iter().map(|h| virtual_service(config, h, hs, o)));
            }
        }
        Target::Waypoint { service, port, name } => {
            if o.wants(Part::HttpRoute) {
                docs.push(mesh_route(config, hs, o, name, service, *port));
            }
        }
        Target::Gateway { name, hostnames, .. } | Target::EnvoyGateway { name, hostnames, .. } => {
            if o.wants(Part::HttpRoute) {
                // One route per namespace of backends, next to them (Gateway API's cross-namespace
                // attachment: no ReferenceGrant needed); inference pools in the install namespace.
                let mut by_ns: BTreeMap<&str, Vec<(&str, Value)>> = BTreeMap::new();
                for h in hs {
                    for (d, _) in &h.routes {
                        by_ns.entry(h.namespace.as_str()).or_default().push((d, backend_ref(h)));
                    }
                }
                for (d, pool) in &plan.pools {
                    let backend =
                        json!({"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool});
                    by_ns.entry(o.namespace.as_str()).or_default().push((d, backend));
                }
                if matches!(o.target, Target::EnvoyGateway { .. }) {
                    // Envoy Gateway runs the filter only on a route that matched: one must match
                    // first. That catch-all answers what the filter did not route itself (never a
                    // model's backend, which would take every other model's unrouted requests).
                    let filter = json!(unrouted_filter_name(o));
                    by_ns.entry(o.namespace.as_str()).or_default().push(("", filter));
                    docs.push(unrouted_filter(o));
                }
                for (ns, rules) in by_ns {
                    docs.push(http_route(config, &rules, o, name, hostnames, ns));
                }
            }
        }
    }
    if o.wants(Part::Hpa) {
        for d in plan.dests.iter() {
            if let Some(h) = d.host.and_then(|k| hs.get(k)).filter(|h| !h.external) {
                docs.push(hpa(d, h, o));
            }
        }
    }
    if o.wants(Part::AdapterRules) {
        docs.push(adapter_rules(o));
    }
    // Envoy Gateway's proxies have no mesh identity: an AuthorizationPolicy would lock them out.
    let meshed = !matches!(o.target, Target::EnvoyGateway { .. });
    for h in hs.iter().filter(|h| !h.external) {
        if o.wants(Part::NetworkPolicy) {
            docs.push(network_policy(h, o));
        }
        if o.wants(Part::AuthorizationPolicy) && meshed {
            docs.push(authorization_policy(h, o, &config.trust_domain));
        }
    }
    if o.wants(Part::External) {
        for h in hs.iter().filter(|h| h.external) {
            docs.extend(external_provider(h, o));
        }
    }
    if let (true, Some(rl)) = (o.wants(Part::RateLimits), &plan.rate_limit) {
        docs.extend(rate_limit_docs(config, o, rl));
    }
    docs
}

/// Limitador's limits file (a ConfigMap next to Limitador), and a ServiceEntry when the service
/// is outside the cluster.
fn rate_limit_docs(config: &Config, o: &Options, (host, port, ns): &(String, u16, Option<String>)) -> Vec<Doc> {
    let mut docs = Vec::new();
    let limits = crate::limitador::limits(config);
    if !limits.is_empty() {
        let ns = ns.clone().unwrap_or_else(|| o.namespace.clone());
        let envoy = crate::limitador::envoy_ratelimit_yaml(config);
        docs.push(Doc {
            file: "limitador-limits".into(),
            comment: format!(
                "Limitador's limits for the filter's `mode: global` limits (namespace = rateLimitService.domain).\n\
                 Mount it as Limitador's LIMITS_FILE (it reloads on change): limitador-server /etc/limitador/limits.yaml redis redis://...\n\
                 The same request limits for envoyproxy/ratelimit (token limits need Limitador's CheckRateLimit/Report):\n{}",
                envoy.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
            ),
            value: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": o.meta(&o.object_name("limitador-limits"), &ns),
                "data": {"limits.yaml": crate::limitador::limits_yaml(config)}}),
        });
    }
    if ns.is_none() {
        docs.push(Doc {
            file: "rate-limit-service-entry".into(),
            comment: format!(
                "The rate limit service is outside the mesh: this ServiceEntry gives the proxies the cluster\n\
                 `outbound|{port}||{host}` that rateLimitService.cluster names (gRPC, so HTTP/2)."
            ),
            value: json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": o.meta(&o.object_name("rate-limit-service"), &o.namespace),
                "spec": {"hosts": [host], "location": "MESH_EXTERNAL", "resolution": "DNS",
                         "ports": [{"number": port, "name": "grpc", "protocol": "GRPC"}]}}),
        });
    }
    docs
}

/// The Service ports the models are served on, when every destination names its port: in a
/// sidecar, the filter then runs only on outbound traffic to those ports, not on every call the
/// pod makes (its `scope` still decides within them).
fn model_ports(config: &Config) -> Vec<u16> {
    let mut ports = Vec::new();
    for d in config.models.iter().flat_map(|m| &m.destinations) {
        // An external provider is called on the mesh's plain-HTTP port, not its TLS port.
        let port = match &d.host {
            Some(h) if external_host(h) => Some(EXTERNAL_HTTP_PORT),
            _ => d.port,
        };
        match port {
            Some(p) if !ports.contains(&p) => ports.push(p),
            Some(_) => {}
            None => return Vec::new(),
        }
    }
    ports.sort_unstable();
    ports
}

fn gateway_ref(name: &str) -> Value {
    json!({"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": name})
}

fn wasm_plugin(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Doc {
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
fn envoy_filter_scope(target: &Target) -> (&'static str, Value) {
    match target {
        Target::Selector(sel) => ("SIDECAR_OUTBOUND", json!({"workloadSelector": {"labels": sel}})),
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } | Target::EnvoyGateway { name, .. } => {
            ("GATEWAY", json!({"targetRefs": [gateway_ref(name)]}))
        }
    }
}

/// An EnvoyFilter's patches: in a sidecar, one per outbound listener of the models' ports (when
/// all are known), else one for every listener of the context.
fn per_listener(context: &str, ports: &[u16], patch: impl Fn(Option<u16>) -> Value) -> Value {
    if context == "SIDECAR_OUTBOUND" && !ports.is_empty() {
        Value::Array(ports.iter().map(|p| patch(Some(*p))).collect())
    } else {
        json!([patch(None)])
    }
}

fn envoy_filters(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Vec<Doc> {
    let ext = extension_config(config_json, o, url);
    let name = ext["name"].clone();
    let (context, scope) = envoy_filter_scope(&o.target);
    let mut ext_spec = scope.clone();
    ext_spec["configPatches"] = json!([{"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "ADD", "value": ext}}]);
    let mut filter_spec = scope;
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
    filter_spec["configPatches"] = per_listener(context, ports, patch);
    if let Some(p) = o.priority {
        filter_spec["priority"] = json!(p);
    }
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

/// Envoy holds a request body the filter reads only up to the connection's buffer limit and
/// answers 413 itself past it: 1 MiB by default, 32 KiB on Envoy Gateway's listeners.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: u64 = 1 << 20;
pub const ENVOY_GATEWAY_BUFFER_LIMIT: u64 = 32 << 10;

/// The listener buffer limit the target's proxies have unless told otherwise.
pub fn default_buffer_limit(target: &Target) -> u64 {
    match target {
        Target::EnvoyGateway { .. } => ENVOY_GATEWAY_BUFFER_LIMIT,
        _ => ENVOY_DEFAULT_BUFFER_LIMIT,
    }
}

/// The listener buffer limit a `maxBodyBytes` needs (Envoy's field is 32-bit).
pub fn listener_buffer_limit(max_body_bytes: u64) -> u64 {
    max_body_bytes.min(u64::from(u32::MAX))
}

/// The listener's buffer limit raised to `maxBodyBytes` where the proxy's default is lower: an
/// EnvoyFilter (LISTENER, MERGE) for Istio's gateways and sidecars over 1 MiB, a
/// ClientTrafficPolicy for Envoy Gateway (whose listeners default to 32 KiB). A waypoint cannot
/// be patched (`wasmpack manifests` warns).
fn buffer_limit(config: &Config, o: &Options, ports: &[u16]) -> Option<Doc> {
    if config.max_body_bytes <= default_buffer_limit(&o.target) {
        return None;
    }
    let limit = listener_buffer_limit(config.max_body_bytes);
    let why = format!(
        "The filter reads request bodies up to maxBodyBytes ({}), and Envoy holds a body only up to\n\
         the listener's per-connection buffer limit, answering 413 itself past it.",
        config.max_body_bytes
    );
    match &o.target {
        // The EnvoyPatchPolicy of body routing sets it on the listener it patches.
        Target::EnvoyGateway { .. } if config.body_routing => None,
        Target::EnvoyGateway { name, .. } => Some(Doc {
            file: "clienttrafficpolicy-buffer-limit".into(),
            comment: format!(
                "{why}\n\
                 Envoy Gateway's listeners default to 32 KiB: this raises the limit of Gateway `{name}` to {limit}.\n\
                 Envoy Gateway takes one ClientTrafficPolicy per Gateway (the oldest wins): if `{name}` has one\n\
                 already, set its connection.bufferLimit to {limit} there and render with --skip buffer-limit."
            ),
            value: json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "ClientTrafficPolicy",
                "metadata": o.meta(&o.object_name("buffer-limit"), &o.namespace),
                "spec": {"targetRefs": [gateway_ref(name)], "connection": {"bufferLimit": limit}}}),
        }),
        Target::Selector(_) | Target::Gateway { .. } => {
            let (context, mut spec) = envoy_filter_scope(&o.target);
            let patch = |port: Option<u16>| {
                let mut m = json!({"context": context});
                if let Some(p) = port {
                    m["listener"] = json!({"portNumber": p});
                }
                json!({"applyTo": "LISTENER", "match": m,
                       "patch": {"operation": "MERGE", "value": {"per_connection_buffer_limit_bytes": limit}}})
            };
            spec["configPatches"] = per_listener(context, ports, patch);
            Some(Doc {
                file: "envoyfilter-buffer-limit".into(),
                comment: format!(
                    "{why}\n\
                     Istio leaves Envoy's default of 1 MiB: this raises it to {limit} on the listeners the filter\n\
                     runs on."
                ),
                value: json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                    "metadata": o.meta(&o.object_name("buffer-limit"), &o.namespace), "spec": spec}),
            })
        }
        // Istio applies no EnvoyFilter to a waypoint (`wasmpack manifests` warns).
        Target::Waypoint { .. } => None,
    }
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

/// A mesh (GAMMA) HTTPRoute on the Service clients call through a waypoint: by the filter's
/// header to each destination's Service, anything else to the Service itself.
fn mesh_route(config: &Config, hosts: &[Host], o: &Options, waypoint: &str, service: &str, port: u16) -> Doc {
    let header = &config.route_header;
    let (svc, ns) = service_of(service, &o.namespace).unwrap_or_else(|_| (service.to_string(), o.namespace.clone()));
    let mut rules: Vec<Value> = Vec::new();
    for h in hosts {
        for (d, _) in &h.routes {
            let mut rule = json!({
                "matches": [{"headers": [{"type": "Exact", "name": header, "value": d}]}],
                "backendRefs": [backend_ref(h)]
            });
            if h.external {
                rule["filters"] = json!([{"type": "URLRewrite", "urlRewrite": {"hostname": h.host}}]);
            }
            rules.push(rule);
        }
    }
    rules.push(json!({"backendRefs": [{"name": svc, "port": port}]}));
    Doc {
        file: format!("httproute-{ns}-{svc}"),
        comment: format!(
            "Mesh route (Gateway API GAMMA) of `{service}` at waypoint `{waypoint}`: by the `{header}` header\n\
             the filter sets to each destination's Service; what it did not route goes to `{svc}` itself.\n\
             Enrol the Service (or its namespace) to the waypoint, in an ambient namespace:\n\
             \x20 kubectl label namespace {ns} istio.io/dataplane-mode=ambient\n\
             \x20 kubectl label service {svc} -n {ns} istio.io/use-waypoint={waypoint}{}",
            if ns == o.namespace {
                String::new()
            } else {
                format!(" istio.io/use-waypoint-namespace={}", o.namespace)
            }
        ),
        value: json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": o.meta(&o.object_name(&format!("{svc}-routes")), &ns),
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": svc, "port": port}], "rules": rules}}),
    }
}

fn subset_key(h: &Host, o: &Options) -> String {
    o.subset_labels
        .get(&h.host)
        .cloned()
        .unwrap_or_else(|| "version".to_string())
}

fn destination_rule(h: &Host, o: &Options, failover: Option<&model_router::config::Failover>) -> Doc {
    let key = subset_key(h, o);
    let pods = o.pods_of(h);
    let mut subsets: Vec<Value> = Vec::new();
    for s in h.routes.iter().filter_map(|(_, s)| s.as_ref()) {
        if !subsets.iter().any(|x| x["name"] == json!(s)) {
            let mut labels = pods.clone();
            labels.insert(key.clone(), s.clone());
            subsets.push(json!({"name": s, "labels": labels}));
        }
    }
    let mut spec = json!({"host": h.host, "subsets": subsets});
    let mut comment = format!("Subsets of {} by pod label `{key}`.", h.host);
    if let Some(f) = failover {
        // Endpoint-level health inside each destination, complementary to the filter's
        // destination-level failover (docs/failover.md).
        spec["trafficPolicy"] = outlier_detection(f);
        comment.push_str(
            "\noutlierDetection ejects single failing pods (endpoints) of a destination; the filter's\n\
             failover takes a whole destination out of rotation (docs/failover.md).",
        );
    }
    Doc {
        file: format!("destinationrule-{}-{}", h.namespace, h.service),
        comment,
        value: json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": o.meta(&o.object_name(&h.service), &h.namespace), "spec": spec}),
    }
}

/// Istio's `outlierDetection` from the filter's `failover` thresholds.
fn outlier_detection(f: &model_router::config::Failover) -> Value {
    let secs = |ms: u32| format!("{}s", ms.div_ceil(1000).max(1));
    json!({"outlierDetection": {
        "consecutive5xxErrors": f.threshold,
        "interval": "10s",
        "baseEjectionTime": secs(f.probation_ms),
        "maxEjectionPercent": 50
    }})
}

/// The models whose destinations a request for a model of `served` may be sent to: those
/// models and, with failover, their fallbacks' models.
fn reachable_models(config: &Config, served: impl Fn(&model_router::config::Model) -> bool) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (i, m) in config.models.iter().enumerate().filter(|(_, m)| served(m)) {
        let fallbacks = m
            .fallbacks
            .iter()
            .chain(m.destinations.iter().flat_map(|d| d.fallbacks.iter()));
        for j in std::iter::once(i).chain(fallbacks.map(|f| f.model)) {
            if !out.contains(&j) {
                out.push(j);
            }
        }
    }
    out.sort_unstable();
    out
}

fn route_destination(h: &Host, subset: Option<&String>) -> Value {
    let mut d = json!({"host": h.host});
    if let Some(s) = subset {
        d["subset"] = json!(s);
    }
    if h.external {
        d["port"] = json!({"number": EXTERNAL_HTTP_PORT});
    } else if let Some(p) = h.port {
        d["port"] = json!({"number": p});
    }
    d
}

/// A Gateway API backendRef: the Service, or an external provider's ServiceEntry host
/// (`networking.istio.io` `Hostname`, istio/istio pilot/pkg/config/kube/gateway/conversion.go).
fn backend_ref(h: &Host) -> Value {
    if h.external {
        json!({"group": "networking.istio.io", "kind": "Hostname", "name": h.host, "port": EXTERNAL_HTTP_PORT})
    } else {
        json!({"name": h.service, "port": h.port.unwrap_or(80)})
    }
}

fn virtual_service(config: &Config, h: &Host, hosts: &[Host], o: &Options) -> Doc {
    let header = &config.route_header;
    // Every destination of every model this host serves: the filter may pick one on another host.
    let mut http: Vec<Value> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let served = |m: &model_router::config::Model| {
        m.destinations
            .iter()
            .any(|d| d.host.as_deref() == Some(h.host.as_str()))
    };
    for m in reachable_models(config, served).into_iter().map(|i| &config.models[i]) {
        for d in &m.destinations {
            let Some(target) = d.host.as_ref().and_then(|x| hosts.iter().find(|y| &y.host == x)) else {
                continue;
            };
            if seen.contains(&d.name.as_str()) {
                continue;
            }
            seen.push(&d.name);
            let mut rule = json!({"name": d.name, "match": [{"headers": {header.as_str(): {"exact": d.name}}}],
                                  "route": [{"destination": route_destination(target, d.subset.as_ref())}]});
            if target.external && target.host != h.host {
                rule["rewrite"] = json!({"authority": target.host});
            }
            if config.failover.is_some() {
                // A request that never reached a backend is safe to send again.
                rule["retries"] = json!({"attempts": 2, "retryOn": "connect-failure,refused-stream"});
            }
            http.push(rule);
        }
    }
    // The caller asked for this host; what the filter did not route still goes to it.
    http.push(json!({"name": "unrouted", "route": [{"destination": route_destination(h, None)}]}));
    Doc {
        file: format!("virtualservice-{}-{}", h.namespace, h.service),
        comment: format!(
            "Routes calls to {} by the `{header}` header the filter sets (the weighted, sticky split is\n\
             the filter's, to any destination of the models this host serves); calls it did not route go to\n\
             {} as a whole.",
            h.host, h.host
        ),
        value: json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": o.meta(&o.object_name(&h.service), &h.namespace), "spec": {"hosts": [h.host], "http": http}}),
    }
}

/// An external provider: a ServiceEntry (the mesh calls it on plain-HTTP port 80, sent to its TLS
/// port) and a DestinationRule originating TLS with the provider's name as SNI (Istio's egress TLS
/// origination). Credentials are not the filter's: callers send their key, or a credential
/// injector adds it (docs/reach.md).
fn external_provider(h: &Host, o: &Options) -> Vec<Doc> {
    let tls_port = h.port.unwrap_or(443);
    vec![
        Doc {
            file: format!("serviceentry-{}", h.service),
            comment: format!(
                "External provider {}: called in the mesh on port {EXTERNAL_HTTP_PORT} (plain HTTP, so the filter and the\n\
                 proxy see the requests), sent to port {tls_port} over TLS (DestinationRule below).",
                h.host
            ),
            value: json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": o.meta(&o.object_name(&h.service), &o.namespace),
                "spec": {"hosts": [h.host], "location": "MESH_EXTERNAL", "resolution": "DNS",
                         "ports": [{"number": EXTERNAL_HTTP_PORT, "name": "http", "protocol": "HTTP", "targetPort": tls_port},
                                   {"number": tls_port, "name": "https", "protocol": "HTTPS"}]}}),
        },
        Doc {
            file: format!("destinationrule-tls-{}", h.service),
            comment: format!("TLS origination to {} (SNI {}).", h.host, h.host),
            value: json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": o.meta(&o.object_name(&format!("{}-tls", h.service)), &o.namespace),
                "spec": {"host": h.host, "trafficPolicy": {"portLevelSettings": [
                    {"port": {"number": EXTERNAL_HTTP_PORT}, "tls": {"mode": "SIMPLE", "sni": h.host}}]}}}),
        },
    ]
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
    const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let filter = envoy_gateway_wasm_filter_name(&o.namespace, &o.object_name(""), 0);
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
    let raise = o.wants(Part::BufferLimit) && config.max_body_bytes > ENVOY_GATEWAY_BUFFER_LIMIT;
    let limit = listener_buffer_limit(config.max_body_bytes);
    if raise {
        patches.push(json!({
            "type": LISTENER_TYPE,
            "name": listener,
            "operation": {"op": "add", "path": "/per_connection_buffer_limit_bytes", "value": limit}
        }));
    }
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

fn unrouted_filter_name(o: &Options) -> String {
    o.object_name("unrouted")
}

/// The answer of the Envoy Gateway catch-all rule: requests the filter did not route (no model,
/// or a body model with bodyRouting off) get a clear 404, never a model's backend.
fn unrouted_filter(o: &Options) -> Doc {
    let body = json!({"error": {
        "message": "no model route took this request: name a model this gateway serves (GET /v1/models lists them)",
        "type": "invalid_request_error",
        "param": null,
        "code": "no_route"}});
    Doc {
        file: "httproutefilter-unrouted".into(),
        comment: "The answer of the HTTPRoute's catch-all rule (Envoy Gateway's direct response): a request the\n\
                  filter did not route to a destination gets 404 `no_route`, never one model's backend."
            .into(),
        value: json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "HTTPRouteFilter",
            "metadata": o.meta(&unrouted_filter_name(o), &o.namespace),
            "spec": {"directResponse": {"contentType": "application/json", "statusCode": 404,
                     "body": {"type": "Inline", "inline": body.to_string()}}}}),
    }
}

fn http_route(
    config: &Config,
    backends: &[(&str, Value)],
    o: &Options,
    gateway: &str,
    hostnames: &[String],
    ns: &str,
) -> Doc {
    let header = &config.route_header;
    let rules: Vec<Value> = backends
        .iter()
        .map(|(d, backend)| {
            if d.is_empty() {
                // The catch-all rule (Envoy Gateway): every request of these hosts matches a route,
                // and what the filter did not route gets the HTTPRouteFilter's answer.
                return json!({"filters": [{"type": "ExtensionRef", "extensionRef":
                    {"group": "gateway.envoyproxy.io", "kind": "HTTPRouteFilter", "name": backend}}]});
            }
            let mut rule = json!({
                "matches": [{"headers": [{"type": "Exact", "name": header, "value": d}]}],
                "backendRefs": [backend]
            });
            if backend["kind"] == "Hostname" {
                // A provider answers for its own host name only.
                rule["filters"] = json!([{"type": "URLRewrite", "urlRewrite": {"hostname": backend["name"]}}]);
            }
            rule
        })
        .collect();
    let catch_all = backends.iter().any(|(d, _)| d.is_empty());
    let mut parent = gateway_ref(gateway);
    let mut cross = String::new();
    if ns != o.namespace {
        parent["namespace"] = json!(o.namespace);
        cross = format!(
            "\nIt lives next to its Services in `{ns}` and attaches to the gateway in `{}`: the gateway's\n\
             listener must allow routes from `{ns}` (allowedRoutes.namespaces).",
            o.namespace
        );
    }
    Doc {
        file: format!("httproute-{ns}"),
        comment: format!(
            "Routes requests for {} at gateway `{gateway}` by the `{header}` header the filter sets.\n{}{cross}",
            hostnames.join(", "),
            if catch_all {
                "The last rule catches the rest (Envoy Gateway runs the filter only on a matched route): what\n\
                 the filter did not route is answered 404 `no_route` (HTTPRouteFilter), never sent to a model."
            } else {
                "There is no catch-all: a request the filter did not route matches no rule of this route\n\
                 (the gateway answers 404), and other traffic of a shared gateway is left to its own routes."
            }
        ),
        value: json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": o.meta(&o.object_name("routes"), ns),
            "spec": {"parentRefs": [parent], "hostnames": hostnames, "rules": rules}}),
    }
}

fn hpa(d: &Dest, h: &Host, o: &Options) -> Doc {
    let workload = o.workload(&d.name);
    Doc {
        file: format!("hpa-{}-{workload}", h.namespace),
        comment: format!(
            "Scales {workload} (destination {}, model {}) on the filter's in-flight requests\n\
             (an External metric served by prometheus-adapter, rule below), with CPU as the fallback.\n\
             Skip it (--skip hpa) where the platform autoscales already (KServe, KEDA).",
            d.name,
            d.models.join(", ")
        ),
        value: json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": o.meta(&o.object_name(&workload), &h.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
            "minReplicas": o.min_replicas,
            "maxReplicas": o.max_replicas,
            "metrics": [
                {"type": "External", "external": {
                    "metric": {"name": IN_FLIGHT, "selector": {"matchLabels": {"destination": d.name}}},
                    "target": {"type": "AverageValue", "averageValue": o.max_in_flight.to_string()}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
            ]
        }}),
    }
}

fn adapter_rules(o: &Options) -> Doc {
    let rules = format!(
        "externalRules:\n\
         - seriesQuery: '{IN_FLIGHT}{{destination!=\"\"}}'\n\
         \x20 resources:\n\
         \x20   namespaced: false\n\
         \x20 name:\n\
         \x20   as: {IN_FLIGHT}\n\
         \x20 metricsQuery: 'sum(<<.Series>>{{<<.LabelMatchers>>}}) by (destination)'\n"
    );
    Doc {
        file: "prometheus-adapter-rules".into(),
        comment: "prometheus-adapter rule serving the in-flight gauge (summed over every proxy that routes)\n\
                  as an External metric; merge it into your adapter's config."
            .into(),
        value: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": o.meta(&o.object_name("adapter-rules"), &o.namespace),
            "data": {"config.yaml": rules}}),
    }
}

fn in_namespace(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

/// Ports Prometheus scrapes on an Istio pod: the sidecar's merged metrics (app + proxy) and Envoy's.
const METRICS_PORTS: [u16; 2] = [15020, 15090];

fn network_policy(h: &Host, o: &Options) -> Doc {
    let mut from = vec![match &o.target {
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } => {
            json!({"namespaceSelector": in_namespace(&o.namespace),
            "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}}})
        }
        // Envoy Gateway's proxies run where its controller puts them (envoy-gateway-system by default).
        Target::EnvoyGateway { name, .. } => json!({"namespaceSelector": {},
            "podSelector": {"matchLabels": {"gateway.envoyproxy.io/owning-gateway-name": name,
                                            "gateway.envoyproxy.io/owning-gateway-namespace": o.namespace}}}),
        Target::Selector(sel) => {
            json!({"namespaceSelector": in_namespace(&o.namespace), "podSelector": {"matchLabels": sel}})
        }
    }];
    for ns in &o.network.ingress_namespaces {
        from.push(json!({"namespaceSelector": in_namespace(ns)}));
    }
    let ingress = vec![
        json!({"from": from}),
        // Metrics scraping (Prometheus anywhere in the cluster) of the sidecar's ports only.
        json!({"ports": METRICS_PORTS.iter().map(|p| json!({"protocol": "TCP", "port": p})).collect::<Vec<_>>()}),
    ];
    let mut egress = vec![
        json!({"to": [{"namespaceSelector": in_namespace("kube-system"), "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
        json!({"to": [{"namespaceSelector": in_namespace("istio-system"), "podSelector": {"matchLabels": {"app": "istiod"}}}],
               "ports": [{"protocol": "TCP", "port": 15012}]}),
    ];
    for dep in &o.network.dependencies {
        egress.push(json!({"to": [{"podSelector": {"matchLabels": dep}}]}));
    }
    for cidr in &o.network.egress_cidrs {
        egress.push(json!({"to": [{"ipBlock": {"cidr": cidr}}]}));
    }
    for ns in &o.network.egress_namespaces {
        egress.push(json!({"to": [{"namespaceSelector": in_namespace(ns)}]}));
    }
    if !o.network.egress_ports.is_empty() {
        let ports: Vec<Value> = o
            .network
            .egress_ports
            .iter()
            .map(|p| json!({"protocol": "TCP", "port": p}))
            .collect();
        egress.push(json!({"ports": ports}));
    }
    Doc {
        file: format!("networkpolicy-{}-{}", h.namespace, h.service),
        comment: format!(
            "Only the {} (and --ingress-namespace) reach the `{}` model pods, plus metrics scraping on the\n\
             sidecar's ports {} and {}; the pods reach DNS, istiod and what --dependency, --egress-cidr,\n\
             --egress-namespace and --egress-port allow (model weights from a hub or S3 need one of those).",
            match &o.target {
                Target::Gateway { name, .. } | Target::EnvoyGateway { name, .. } => format!("gateway `{name}`"),
                Target::Waypoint { name, .. } => format!("waypoint `{name}` (HBONE, port 15008)"),
                Target::Selector(_) => "selected callers".to_string(),
            },
            h.service,
            METRICS_PORTS[0],
            METRICS_PORTS[1]
        ),
        value: json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": o.meta(&o.object_name(&format!("{}-model", h.service)), &h.namespace),
            "spec": {"podSelector": {"matchLabels": o.pods_of(h)}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": ingress, "egress": egress}}),
    }
}

/// `td`: the mesh's trust domain (`trustDomain`, `--trust-domain`): Istio's principals carry it.
fn authorization_policy(h: &Host, o: &Options, td: &str) -> Doc {
    let principals = if o.principals.is_empty() {
        match &o.target {
            Target::Gateway { name, .. } | Target::EnvoyGateway { name, .. } => {
                vec![format!("{td}/ns/{}/sa/{name}-istio", o.namespace)]
            }
            // A waypoint's service account is its own name (Istio's deployment controller, no suffix).
            Target::Waypoint { name, .. } => vec![format!("{td}/ns/{}/sa/{name}", o.namespace)],
            Target::Selector(_) => vec![format!("{td}/ns/{}/sa/*", o.namespace)],
        }
    } else {
        o.principals.clone()
    };
    Doc {
        file: format!("authorizationpolicy-{}-{}", h.namespace, h.service),
        comment: format!(
            "mTLS identity check: only these principals may call the `{}` model pods.",
            h.service
        ),
        value: json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": o.meta(&o.object_name(&format!("{}-callers", h.service)), &h.namespace),
            "spec": {"selector": {"matchLabels": o.pods_of(h)}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": principals}}]}]}}),
    }
}

/// The histogram buckets Istio's annotation takes: one list for every `wasmcustom` stat (it
/// matches by stat-name prefix, and the labels come first in the name), so the union of the
/// request-duration and TTFT buckets (docs/telemetry.md).
pub fn istio_buckets() -> Vec<u64> {
    let mut buckets: Vec<u64> = DURATION_BUCKETS_MS.iter().chain(TTFT_BUCKETS_MS).copied().collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

/// The pod annotations that export the filter's metrics from the proxies it runs in: Istio's
/// per-setting annotations (comma-separated lists, istio/istio pkg/bootstrap), which add to the
/// pod's `proxy.istio.io/config` instead of replacing it (a Deployment's own proxy settings, such
/// as `holdApplicationUntilProxyStarts`, stay).
pub fn stats_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "sidecar.istio.io/statsInclusionRegexps".to_string(),
            ".*model_router_.*".to_string(),
        ),
        ("sidecar.istio.io/extraStatTags".to_string(), LABEL_KEYS.join(",")),
        (
            "sidecar.istio.io/statsHistogramBuckets".to_string(),
            json!({ "wasmcustom": istio_buckets() }).to_string(),
        ),
    ])
}

/// The stats annotations as a YAML `annotations:` block (for a comment a user can paste).
pub fn stats_annotations_yaml() -> String {
    let v = json!({"annotations": stats_annotations()});
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// kustomization.yaml for the rendered files.
pub fn kustomization(docs: &[Doc]) -> Value {
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": docs.iter().map(|d| format!("{}.yaml", d.file)).collect::<Vec<_>>(),
    })
}

/// A kustomize Component that adds the stats annotations where the filter runs: to the callers'
/// Deployments (include it in the kustomization that has them), or, at a gateway, to the Gateway's
/// `spec.infrastructure.annotations`, which Istio copies to the gateway's pods.
pub fn stats_component(o: &Options) -> Value {
    let annotations = stats_annotations();
    let (target, patch) = match &o.target {
        Target::Selector(sel) => (
            json!({"kind": "Deployment", "labelSelector": sel.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "any"},
                   "spec": {"template": {"metadata": {"annotations": annotations}}}}),
        ),
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } | Target::EnvoyGateway { name, .. } => (
            json!({"kind": "Gateway", "name": name}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
                   "spec": {"infrastructure": {"annotations": annotations}}}),
        ),
    };
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "patches": [{"target": target, "patch": serde_yaml::to_string(&patch).unwrap_or_default()}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar_options() -> Options {
        Options {
            name: "mr".into(),
            namespace: "ai".into(),
            target: Target::Selector(BTreeMap::from([("app".into(), "chat".into())])),
            extension_api: FilterApi::WasmPlugin,
            repository: "r.example.com/mr".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            fail_open: false,
            phase: "UNSPECIFIED_PHASE".into(),
            priority: None,
            pull_secret: None,
            workloads: BTreeMap::new(),
            max_in_flight: 4,
            min_replicas: 1,
            max_replicas: 2,
            principals: Vec::new(),
            network: Network::default(),
            pod_selectors: BTreeMap::new(),
            subset_labels: BTreeMap::new(),
            only: Vec::new(),
            skip: Vec::new(),
        }
    }

    #[test]
    fn failover_renders_outlier_detection_retries_and_routes_to_fallbacks() {
        let json: Value = serde_json::from_str(
            r#"{"failover": {"consecutiveFailures": 4, "probation": "2500ms"}, "models": [
                {"name": "m", "destinations": [{"name": "a", "host": "a.ai.svc.cluster.local", "port": 8000}],
                 "fallbacks": [{"model": "f"}]},
                {"name": "f", "destinations": [{"name": "fb", "host": "f.ai.svc.cluster.local", "port": 8000}]}]}"#,
        )
        .unwrap();
        let config = Config::from_json(json.to_string().as_bytes()).unwrap();
        let o = sidecar_options();
        let plan = plan(&config, &o).unwrap();
        let docs = render(&json, &config, &o, &plan);
        let find = |kind: &str, host: &str| {
            docs.iter()
                .map(|d| &d.value)
                .find(|v| v["kind"] == kind && (v["spec"]["host"] == host || v["spec"]["hosts"][0] == host))
                .unwrap()
                .clone()
        };
        let dr = find("DestinationRule", "a.ai.svc.cluster.local");
        assert_eq!(
            dr["spec"]["trafficPolicy"]["outlierDetection"],
            json!({"consecutive5xxErrors": 4, "interval": "10s", "baseEjectionTime": "3s", "maxEjectionPercent": 50})
        );
        let vs = find("VirtualService", "a.ai.svc.cluster.local");
        let rules = vs["spec"]["http"].as_array().unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["a", "fb", "unrouted"],
            "the fallback's destination is routable from a's callers"
        );
        assert_eq!(rules[0]["retries"]["retryOn"], "connect-failure,refused-stream");
    }

    #[test]
    fn a_caller_of_one_host_reaches_every_destination_of_its_models_and_providers_get_tls() {
        let json: Value = serde_json::from_str(
            r#"{"bodyRouting": false, "models": [{"name": "m", "destinations": [
                {"name": "a", "host": "a.ai.svc.cluster.local", "port": 8000},
                {"name": "b", "host": "b.ai.svc.cluster.local", "port": 8000},
                {"name": "openai", "host": "api.openai.com", "port": 443}]}]}"#,
        )
        .unwrap();
        let config = Config::from_json(json.to_string().as_bytes()).unwrap();
        let o = sidecar_options();
        let plan = plan(&config, &o).unwrap();
        let docs = render(&json, &config, &o, &plan);
        let vs: Vec<&Value> = docs
            .iter()
            .map(|d| &d.value)
            .filter(|v| v["kind"] == "VirtualService")
            .collect();
        assert_eq!(vs.len(), 3);
        let a = vs
            .iter()
            .find(|v| v["spec"]["hosts"][0] == "a.ai.svc.cluster.local")
            .unwrap();
        let names: Vec<&str> = a["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["a", "b", "openai", "unrouted"],
            "a caller of `a` can be sent to `b` or the provider"
        );
        assert_eq!(
            a["spec"]["http"][1]["route"][0]["destination"]["host"],
            "b.ai.svc.cluster.local"
        );
        assert_eq!(a["spec"]["http"][2]["rewrite"]["authority"], "api.openai.com");
        assert_eq!(a["spec"]["http"][2]["route"][0]["destination"]["port"]["number"], 80);
        let kinds: Vec<&str> = docs.iter().map(|d| d.value["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"ServiceEntry"), "{kinds:?}");
        let dr: Vec<&Value> = docs
            .iter()
            .map(|d| &d.value)
            .filter(|v| v["kind"] == "DestinationRule")
            .collect();
        assert!(dr
            .iter()
            .any(|d| d["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["sni"] == "api.openai.com"));
        // Nothing of ours runs at the provider: no HPA, NetworkPolicy or AuthorizationPolicy for it.
        assert!(!docs.iter().any(|d| d.file.contains("api-openai-com")
            && d.value["kind"] != "ServiceEntry"
            && d.value["kind"] != "DestinationRule"
            && d.value["kind"] != "VirtualService"));
        // The sidecar's filter runs on the port the mesh calls the provider on.
        let wp = docs.iter().find(|d| d.value["kind"] == "WasmPlugin").unwrap();
        assert_eq!(
            wp.value["spec"]["match"][0]["ports"],
            json!([{"number": 80}, {"number": 8000}])
        );
    }

    /// The listener's buffer limit is raised to maxBodyBytes only where the proxy's default is
    /// lower: over 1 MiB in Istio (per model port in a sidecar), over 32 KiB on Envoy Gateway.
    #[test]
    fn the_buffer_limit_is_raised_where_the_default_is_lower() {
        let limit_docs = |max: u64, target: Target, skip: Vec<Part>| {
            let json = json!({"bodyRouting": false, "maxBodyBytes": max, "models": [{"name": "m", "destinations": [
                {"name": "a", "host": "a.ai.svc.cluster.local", "port": 8000},
                {"name": "b", "host": "b.ai.svc.cluster.local", "port": 8080}]}]});
            let config = Config::from_json(json.to_string().as_bytes()).unwrap();
            let o = Options {
                target,
                skip,
                ..sidecar_options()
            };
            let plan = plan(&config, &o).unwrap();
            render(&json, &config, &o, &plan)
                .into_iter()
                .filter(|d| d.file.ends_with("buffer-limit"))
                .map(|d| d.value)
                .collect::<Vec<Value>>()
        };
        let sidecar = || Target::Selector(BTreeMap::from([("app".into(), "chat".into())]));
        let gateway = || Target::Gateway {
            name: "gw".into(),
            hostnames: vec!["llm.example.com".into()],
        };
        let eg = || Target::EnvoyGateway {
            name: "eg".into(),
            hostnames: vec!["llm.example.com".into()],
            listener: "ai/eg/http".into(),
        };
        let waypoint = || Target::Waypoint {
            name: "wp".into(),
            service: "llm.ai.svc.cluster.local".into(),
            port: 8000,
        };
        let mib = 1 << 20;

        let d = limit_docs(8 * mib, sidecar(), Vec::new());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0]["kind"], "EnvoyFilter");
        assert_eq!(d[0]["spec"]["workloadSelector"]["labels"]["app"], "chat");
        let patches = d[0]["spec"]["configPatches"].as_array().unwrap();
        let ports: Vec<&Value> = patches.iter().map(|p| &p["match"]["listener"]["portNumber"]).collect();
        assert_eq!(
            ports,
            [&json!(8000), &json!(8080)],
            "the outbound listeners of the models' ports"
        );
        for p in patches {
            assert_eq!(p["applyTo"], "LISTENER");
            assert_eq!(p["match"]["context"], "SIDECAR_OUTBOUND");
            assert_eq!(p["patch"]["operation"], "MERGE");
            assert_eq!(p["patch"]["value"]["per_connection_buffer_limit_bytes"], 8 * mib);
        }

        let d = limit_docs(8 * mib, gateway(), Vec::new());
        assert_eq!(d[0]["spec"]["targetRefs"][0]["name"], "gw");
        assert_eq!(d[0]["spec"]["configPatches"][0]["match"], json!({"context": "GATEWAY"}));

        // Envoy's default already holds 1 MiB; a waypoint cannot be patched (manifests warns).
        assert!(limit_docs(mib, sidecar(), Vec::new()).is_empty());
        assert!(limit_docs(mib, gateway(), Vec::new()).is_empty());
        assert!(limit_docs(8 * mib, waypoint(), Vec::new()).is_empty());

        // Envoy Gateway's listeners hold 32 KiB: the default 1 MiB body needs its policy.
        let d = limit_docs(mib, eg(), Vec::new());
        assert_eq!(d[0]["kind"], "ClientTrafficPolicy");
        assert_eq!(d[0]["spec"]["connection"]["bufferLimit"], mib);
        assert_eq!(d[0]["spec"]["targetRefs"][0]["name"], "eg");
        assert!(limit_docs(32 << 10, eg(), Vec::new()).is_empty());

        // Envoy's field is 32-bit; --skip buffer-limit leaves it out.
        let d = limit_docs(u64::MAX, gateway(), Vec::new());
        assert_eq!(
            d[0]["spec"]["configPatches"][0]["patch"]["value"]["per_connection_buffer_limit_bytes"],
            u32::MAX
        );
        assert!(limit_docs(8 * mib, gateway(), vec![Part::BufferLimit]).is_empty());
    }

    fn two_models() -> (Value, Config) {
        let json = json!({"models": [
            {"name": "chat", "destinations": [
                {"name": "chat-v1", "weight": 90, "host": "chat-v1.ai.svc.cluster.local", "port": 8000},
                {"name": "chat-v2", "weight": 10, "host": "chat-v2.ai.svc.cluster.local", "port": 8000}]},
            {"name": "embeddings", "destinations": [
                {"name": "embed", "host": "embed.ai.svc.cluster.local", "port": 8000}]}]});
        let config = Config::from_json(json.to_string().as_bytes()).unwrap();
        (json, config)
    }

    /// Envoy Gateway routes body-named models: the EnvoyPatchPolicy lets the filter named after
    /// the EnvoyExtensionPolicy hold headers on the chosen listener, and the catch-all rule
    /// answers itself instead of sending every unrouted request to one model's Service.
    #[test]
    fn envoy_gateway_holds_headers_and_its_catch_all_is_no_model() {
        let (json, config) = two_models();
        let o = Options {
            target: Target::EnvoyGateway {
                name: "eg".into(),
                hostnames: vec!["llm.example.com".into()],
                listener: "ai/eg/http".into(),
            },
            ..sidecar_options()
        };
        let plan = plan(&config, &o).unwrap();
        let docs = render(&json, &config, &o, &plan);
        let epp = docs.iter().find(|d| d.value["kind"] == "EnvoyPatchPolicy").unwrap();
        assert_eq!(epp.value["metadata"]["name"], "mr-body-routing");
        let patches = epp.value["spec"]["jsonPatches"].as_array().unwrap();
        assert_eq!(patches[0]["name"], "ai/eg/http");
        assert_eq!(
            patches[0]["operation"]["jsonPath"],
            "..http_filters[?(@.name=='envoy.filters.http.wasm/envoyextensionpolicy/ai/mr/wasm/0')].typed_config.config"
        );
        assert_eq!(patches[0]["operation"]["path"], "/allow_on_headers_stop_iteration");
        assert_eq!(patches[1]["operation"]["path"], "/per_connection_buffer_limit_bytes");
        assert_eq!(patches[1]["operation"]["value"], 1 << 20);
        // The EnvoyExtensionPolicy the filter name is made of.
        let eep = docs.iter().find(|d| d.value["kind"] == "EnvoyExtensionPolicy").unwrap();
        assert_eq!(eep.value["metadata"]["name"], "mr");
        assert_eq!(eep.value["metadata"]["namespace"], "ai");
        // No ClientTrafficPolicy besides: the patch raises the buffer limit.
        assert!(!docs.iter().any(|d| d.value["kind"] == "ClientTrafficPolicy"));
        let route = docs.iter().find(|d| d.value["kind"] == "HTTPRoute").unwrap();
        let rules = route.value["spec"]["rules"].as_array().unwrap();
        let last = rules.last().unwrap();
        assert!(last.get("matches").is_none(), "the last rule catches the rest");
        assert!(last.get("backendRefs").is_none(), "never a model's backend: {last}");
        assert_eq!(last["filters"][0]["extensionRef"]["name"], "mr-unrouted");
        let answer = docs.iter().find(|d| d.value["kind"] == "HTTPRouteFilter").unwrap();
        assert_eq!(answer.value["spec"]["directResponse"]["statusCode"], 404);
        for r in &rules[..rules.len() - 1] {
            assert!(r["matches"][0]["headers"][0]["value"].is_string(), "{r}");
        }
    }

    /// A waypoint cannot route by the body: its catch-all is the Service clients call. When that
    /// is one model's Service, the other models' requests would land there: refused, naming them.
    #[test]
    fn a_waypoint_whose_catch_all_is_one_models_service_is_refused() {
        let (mut json, _) = two_models();
        json["bodyRouting"] = json!(false);
        let config = Config::from_json(json.to_string().as_bytes()).unwrap();
        let waypoint = |service: &str| Options {
            target: Target::Waypoint {
                name: "wp".into(),
                service: service.into(),
                port: 8000,
            },
            ..sidecar_options()
        };
        let problems = plan(&config, &waypoint("chat-v1.ai.svc.cluster.local")).unwrap_err();
        let p = problems.iter().find(|p| p.at == "--service").unwrap();
        assert!(p.message.contains("`chat`, `embeddings`"), "{}", p.message);
        // The embeddings Service serves all of `embeddings`, not `chat`.
        let problems = plan(&config, &waypoint("embed")).unwrap_err();
        assert!(
            problems.iter().any(|p| p.message.contains("model `chat` in")),
            "{problems:?}"
        );
        // A Service in front of the models is the Service clients call: accepted.
        assert!(plan(&config, &waypoint("llm.ai.svc.cluster.local")).is_ok());
        // With a single model served there entirely, nothing goes astray.
        let one = Config::from_json(
            br#"{"bodyRouting": false, "models": [{"name": "e", "destinations": [{"name": "embed", "host": "embed", "port": 8000}]}]}"#,
        )
        .unwrap();
        assert!(plan(&one, &waypoint("embed")).is_ok());
    }

    #[test]
    fn dns_names() {
        assert_eq!(dns_label("OpenAI.Prod").as_deref(), Some("openai-prod"));
        assert_eq!(
            dns_label("meta-llama/Llama-3.1-8B").as_deref(),
            Some("meta-llama-llama-3-1-8b")
        );
        assert_eq!(dns_label("--").as_deref(), None);
        assert_eq!(dns_label(&"a".repeat(80)).map(|s| s.len()), Some(63));
        assert!(is_dns_label("llama-v1"));
        assert!(!is_dns_label("Llama"));
        assert_eq!(
            service_of("llama.team-a.svc.cluster.local", "ai").unwrap(),
            ("llama".into(), "team-a".into())
        );
        assert_eq!(
            service_of("llama.team-b", "ai").unwrap(),
            ("llama".into(), "team-b".into())
        );
        assert_eq!(service_of("llama", "ai").unwrap(), ("llama".into(), "ai".into()));
        assert!(service_of("api.openai.com", "ai").is_err());
        assert!(service_of("Llama.ai", "ai").is_err());
    }
}
