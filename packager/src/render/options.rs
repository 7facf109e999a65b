//! What to render: where the filter runs, which parts, and the names and settings of the objects.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::names::dns_label;
use super::plan::Host;
use super::{FILTER_NAME, INSTALLATION_LABEL, MANAGED_BY};

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
    pub(super) fn routes_to_services(&self) -> bool {
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

    /// The Deployment serving a destination.
    pub(super) fn workload(&self, dest: &str) -> String {
        self.workloads
            .get(dest)
            .cloned()
            .or_else(|| dns_label(dest))
            .unwrap_or_else(|| dest.to_string())
    }

    /// An object's metadata: its name, namespace and the labels of this installation.
    pub(super) fn meta(&self, name: &str, ns: &str) -> Value {
        json!({"name": name, "namespace": ns, "labels": {
            MANAGED_BY.0: MANAGED_BY.1,
            "app.kubernetes.io/part-of": FILTER_NAME,
            INSTALLATION_LABEL: self.name,
        }})
    }

    /// The labels of a host's pods.
    pub(super) fn pods_of(&self, h: &Host) -> BTreeMap<String, String> {
        self.pod_selectors
            .get(&h.host)
            .cloned()
            .unwrap_or_else(|| BTreeMap::from([("app".to_string(), h.service.clone())]))
    }
}
