//! The plan: what the configuration and the options mean together (the Services, workloads and
//! inference pools to render for), checked before anything is rendered. Every problem is found at
//! once, each named by the field or flag it comes from.

use std::collections::BTreeMap;

use model_router::config::{Config, Destination, Model};

use super::names::{dns_label, external_host, is_dns_label, service_of};
use super::options::{Options, Part, Target};

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

/// One destination, once (a destination name used by several models is one workload).
#[derive(Debug, Clone)]
pub(super) struct Dest {
    pub(super) name: String,
    pub(super) models: Vec<String>,
    pub(super) host: Option<usize>,
}

/// What will be rendered, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub hosts: Vec<Host>,
    pub(super) dests: Vec<Dest>,
    /// (destination, InferencePool) for destinations served by an inference pool.
    pub(super) pools: Vec<(String, String)>,
    /// The rate limit service of global limits: its host, port, and the namespace of its
    /// Service (`None`: outside the cluster, reached through a ServiceEntry).
    pub(super) rate_limit: Option<(String, u16, Option<String>)>,
}

/// Checks what the configuration and the options mean together; every problem at once.
pub fn plan(config: &Config, o: &Options) -> Result<Plan, Vec<Problem>> {
    let mut p = Planner {
        config,
        o,
        problems: Vec::new(),
        hosts: Vec::new(),
        dests: Vec::new(),
        pools: Vec::new(),
    };
    for (i, m) in config.models.iter().enumerate() {
        for (j, d) in m.destinations.iter().enumerate() {
            p.destination(&format!("models[{i}].destinations[{j}]"), m, d);
        }
    }
    if o.target.routes_to_services() {
        p.one_service_per_destination();
    }
    p.workload_names();
    p.host_object_names();
    p.flags_name_destinations();
    if let Target::Waypoint { service, .. } = &o.target {
        p.waypoint_service(service);
    }
    let rate_limit = p.rate_limit_service();
    p.problems.dedup();
    if p.problems.is_empty() {
        Ok(Plan {
            hosts: p.hosts,
            dests: p.dests,
            pools: p.pools,
            rate_limit,
        })
    } else {
        Err(p.problems)
    }
}

/// The plan as it is made: what was found so far, and the problems.
struct Planner<'a> {
    config: &'a Config,
    o: &'a Options,
    problems: Vec<Problem>,
    hosts: Vec<Host>,
    dests: Vec<Dest>,
    pools: Vec<(String, String)>,
}

impl Planner<'_> {
    fn push(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.problems.push(problem(at, message));
    }

    /// One destination of a model: its inference pool or Service, what the mode can route to,
    /// and its workload.
    fn destination(&mut self, at: &str, m: &Model, d: &Destination) {
        if let Some(pool) = &d.inference_pool {
            self.inference_pool(at, d, pool);
        }
        let host = d.host.as_ref().and_then(|host| self.service(at, d, host));
        if self.o.target.routes_to_services() {
            self.http_route_backend(at, d, host);
        }
        self.workload(at, m, d, host);
        if let Some(k) = host {
            let h = &mut self.hosts[k];
            if !h.routes.iter().any(|(n, _)| n == &d.name) {
                h.routes.push((d.name.clone(), d.subset.clone()));
            }
        }
    }

    /// An InferencePool is a Gateway API backend, named like an object, serving a destination
    /// alone.
    fn inference_pool(&mut self, at: &str, d: &Destination, pool: &str) {
        let pools_ok = matches!(self.o.target, Target::Gateway { .. } | Target::EnvoyGateway { .. });
        if !pools_ok {
            self.push(
                format!("{at}.inferencePool"),
                "an InferencePool is a Gateway API backend: it needs a --gateway or --envoy-gateway install",
            );
        } else if d.host.is_some() || d.subset.is_some() {
            self.push(
                format!("{at}.inferencePool"),
                "a destination is served by a Service (`host`) or by an InferencePool, not both",
            );
        } else if !is_dns_label(pool) {
            self.push(format!("{at}.inferencePool"), format!("`{pool}` is not an object name"));
        } else if !self.pools.iter().any(|(n, _)| n == &d.name) {
            self.pools.push((d.name.clone(), pool.to_string()));
        }
    }

    /// The Service (or external provider) a destination's `host` names, one per host with one
    /// port; its index in `hosts`, or `None` if the host names none.
    fn service(&mut self, at: &str, d: &Destination, host: &str) -> Option<usize> {
        let found = match locate(host, &self.o.namespace) {
            Err(e) => {
                self.push(format!("{at}.host"), e);
                return None;
            }
            Ok(found) => found,
        };
        if found.external {
            self.external_provider(at, d, host);
        }
        let k = match self.hosts.iter().position(|h| h.host == host) {
            Some(k) => k,
            None => {
                self.hosts.push(found);
                self.hosts.len() - 1
            }
        };
        match (self.hosts[k].port, d.port) {
            (Some(a), Some(b)) if a != b => self.push(
                format!("{at}.port"),
                format!("{b}, but another destination of `{host}` says {a}: one Service, one port"),
            ),
            (None, p) => self.hosts[k].port = p,
            _ => {}
        }
        Some(k)
    }

    /// An external provider has no subsets, and Envoy Gateway reaches it only through a Backend.
    fn external_provider(&mut self, at: &str, d: &Destination, host: &str) {
        if d.subset.is_some() {
            self.push(
                format!("{at}.subset"),
                format!("`{host}` is an external provider: it has no subsets"),
            );
        }
        if matches!(self.o.target, Target::EnvoyGateway { .. }) {
            self.push(
                format!("{at}.host"),
                format!(
                    "`{host}` is an external provider: on Envoy Gateway it needs a Backend resource, which \
                     wasmpack does not render"
                ),
            );
        }
    }

    /// An HTTPRoute (gateway, waypoint) sends to a Service port, not to a subset.
    fn http_route_backend(&mut self, at: &str, d: &Destination, host: Option<usize>) {
        if d.subset.is_some() {
            self.push(
                format!("{at}.subset"),
                "a gateway or waypoint routes with a Gateway API HTTPRoute, which sends to Services, not \
                 DestinationRule subsets: give each destination its own Service (host) instead",
            );
        }
        let is_external = host.and_then(|k| self.hosts.get(k)).is_some_and(|h| h.external);
        if d.host.is_some() && d.port.is_none() && !is_external {
            self.push(
                format!("{at}.port"),
                "an HTTPRoute (gateway, waypoint) needs the Service port of each destination",
            );
        }
    }

    /// One destination name is one workload: the models it serves must agree on its host and
    /// subset.
    fn workload(&mut self, at: &str, m: &Model, d: &Destination, host: Option<usize>) {
        let config = self.config;
        let Some(k) = self.dests.iter().position(|x| x.name == d.name) else {
            self.dests.push(Dest {
                name: d.name.clone(),
                models: vec![m.name.clone()],
                host,
            });
            return;
        };
        let same = self.dests[k].host == host
            && config
                .models
                .iter()
                .flat_map(|m| &m.destinations)
                .filter(|y| y.name == d.name)
                .all(|y| y.subset == d.subset && y.host == d.host);
        if !same {
            let message = format!(
                "destination `{}` is also used by model `{}` with another host or subset; \
                 one destination name is one workload (rename one of them)",
                d.name,
                self.dests[k].models.join("`, `")
            );
            self.push(format!("{at}.name"), message);
        }
        self.dests[k].models.push(m.name.clone());
    }

    /// At a gateway each destination needs its own Service, or the route cannot tell them apart.
    fn one_service_per_destination(&mut self) {
        let mut by_service: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for h in &self.hosts {
            for (d, _) in &h.routes {
                by_service.entry(h.host.as_str()).or_default().push(d);
            }
        }
        let mut problems = Vec::new();
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
        self.problems.extend(problems);
    }

    /// Each destination's Deployment is a DNS label, and so is the name of its HPA.
    fn workload_names(&mut self) {
        let o = self.o;
        let mut problems = Vec::new();
        for d in &self.dests {
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
        self.problems.extend(problems);
    }

    /// The names of the objects of each Service (routes, NetworkPolicy, AuthorizationPolicy) are
    /// DNS labels.
    fn host_object_names(&mut self) {
        let mut problems = Vec::new();
        for h in &self.hosts {
            for suffix in ["", "-model", "-callers"] {
                let n = self.o.object_name(&format!("{}{suffix}", h.service));
                if !is_dns_label(&n) {
                    problems.push(problem(
                        "--name",
                        format!("`{n}` would be longer than 63 characters: use a shorter --name"),
                    ));
                }
            }
        }
        self.problems.extend(problems);
    }

    /// `--workload`, `--pod-selector` and `--subset-label` name destinations and hosts that exist.
    fn flags_name_destinations(&mut self) {
        let o = self.o;
        for w in o.workloads.keys() {
            if !self.dests.iter().any(|d| &d.name == w) {
                self.push("--workload", format!("no destination is called `{w}`"));
            }
        }
        for host in o.pod_selectors.keys().chain(o.subset_labels.keys()) {
            if !self.hosts.iter().any(|h| &h.host == host) {
                self.push(
                    "--pod-selector/--subset-label",
                    format!("no destination has host `{host}`"),
                );
            }
        }
    }

    /// A waypoint's `--service` is a Service, in the namespace of every model Service, and not
    /// one that would take other models' requests.
    fn waypoint_service(&mut self, service: &str) {
        let (svc, ns) = match service_of(service, &self.o.namespace) {
            Err(e) => {
                self.push("--service", e);
                return;
            }
            Ok(found) => found,
        };
        if let Some(p) = catch_all_problem(self.config, &self.hosts, service, &svc, &ns) {
            self.problems.push(p);
        }
        let mut problems = Vec::new();
        for h in self.hosts.iter().filter(|h| h.namespace != ns && !h.external) {
            problems.push(problem(
                "--service",
                format!(
                    "`{}` is in namespace `{}`, not `{ns}` where the mesh route of `{service}` lives: a \
                     waypoint route sends to Services of its own namespace (else a ReferenceGrant is needed)",
                    h.host, h.namespace
                ),
            ));
        }
        self.problems.extend(problems);
    }

    /// The rate limit service of global limits, from the Istio cluster name that reaches it.
    fn rate_limit_service(&mut self) -> Option<(String, u16, Option<String>)> {
        let r = self.config.rate_limit_service.as_ref()?;
        if let Some((host, port)) = crate::limitador::istio_cluster(&r.cluster) {
            let ns = service_of(&host, &self.o.namespace).ok().map(|(_, ns)| ns);
            return Some((host, port, ns));
        }
        let hint = match r.cluster.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => format!(" (for `{h}` port {p}: `outbound|{p}||{h}`)"),
            _ => String::new(),
        };
        self.push(
            "rateLimitService.cluster",
            format!(
                "`{}` is not a cluster Istio creates: Istio names the cluster of a host and port \
                 `outbound|PORT||HOST`{hint}",
                r.cluster
            ),
        );
        None
    }
}

/// What a destination's `host` names: a Service of the cluster, or an external provider (named
/// in the install namespace after its host name); no port or routes yet.
fn locate(host: &str, namespace: &str) -> Result<Host, String> {
    let (service, namespace, external) = if external_host(host) {
        let service = dns_label(host).ok_or_else(|| format!("`{host}`: no object name can be made from it"))?;
        (service, namespace.to_string(), true)
    } else {
        let (service, namespace) = service_of(host, namespace)?;
        (service, namespace, false)
    };
    Ok(Host {
        host: host.to_string(),
        service,
        namespace,
        port: None,
        routes: Vec::new(),
        external,
    })
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
    let served_there = |d: &Destination| {
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
