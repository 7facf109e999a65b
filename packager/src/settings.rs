//! Settings resolved from the command line once, in the manner of uv's `Settings::resolve`: the
//! clap types stay in `cli.rs`; `manifests`, `apply` and `delete` take a `RenderSettings`, which
//! has checked every flag on its own and against the mode it renders for.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::cli::{parse_label, PartArg, RenderArgs};
use crate::plugin_config::{self, Loaded};
use crate::registry::RegistryOpts;
use crate::render::{self, is_dns_label, FilterApi, Network, Options, Part, Target};

pub struct RenderSettings {
    pub config_path: PathBuf,
    pub loaded: Loaded,
    pub image: String,
    pub offline: bool,
    pub registry: RegistryOpts,
    /// Everything but the image's repository and digest (filled in once the image is pinned).
    pub options: Options,
}

fn labels(s: &str, flag: &str) -> Result<BTreeMap<String, String>> {
    s.split(',')
        .map(|kv| parse_label(kv).map_err(|e| anyhow::anyhow!("{flag} {s}: {e}")))
        .collect()
}

/// `spiffe://cluster.local/ns/a/sa/b` or `cluster.local/ns/a/sa/b` → the form Istio's
/// AuthorizationPolicy matches (`cluster.local/ns/a/sa/b`); `*` allowed as Istio allows it.
pub fn principal(p: &str) -> Result<String> {
    let bare = p.strip_prefix("spiffe://").unwrap_or(p);
    let parts: Vec<&str> = bare.split('/').collect();
    let ok = matches!(parts.as_slice(), [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty())
        || bare == "*"
        || (bare.ends_with('*') && !bare[..bare.len() - 1].contains('*'));
    if !ok || bare.chars().any(char::is_whitespace) {
        bail!(
            "--allow-principal {p}: expected TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT (with or without \
             spiffe://), e.g. cluster.local/ns/team-a/sa/web"
        );
    }
    Ok(bare.to_string())
}

/// The configuration with these fields set (`overwrite`: also where the file sets them), parsed
/// again by the filter's parser.
fn with_fields(mut loaded: Loaded, fields: &[(&str, Value)], overwrite: bool) -> Result<Loaded> {
    let Some(obj) = loaded.json.as_object_mut() else {
        return Ok(loaded);
    };
    let mut changed = false;
    for (key, value) in fields {
        if overwrite || !obj.contains_key(*key) {
            obj.insert((*key).to_string(), value.clone());
            changed = true;
        }
    }
    if changed {
        loaded.config = model_router::config::Config::from_json(loaded.json.to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(loaded)
}

/// The configuration with `bodyRouting: false` (for hosts that cannot hold headers).
fn without_body_routing(loaded: Loaded) -> Result<Loaded> {
    with_fields(loaded, &[("bodyRouting", json!(false))], true)
}

/// What a gateway serves external clients, unless the configuration says otherwise: the model
/// list, and no decision headers (docs/configuration.md, "OpenAI-compatible clients").
fn gateway_defaults(loaded: Loaded) -> Result<Loaded> {
    with_fields(
        loaded,
        &[("serveModelList", json!(true)), ("responseHeaders", json!("none"))],
        false,
    )
}

/// Where the caller's identity comes from in this install, unless the configuration says
/// (docs/access-control.md, "Who the caller is"): the callers' own sidecar workload, a waypoint's
/// peer principal, a gateway's client certificate (or Envoy Gateway's trusted header). The filter
/// would find the same with `auto`; pinned, a listener it was not meant for (an inbound one)
/// cannot lend it the wrong identity. `--trust-domain` sets the mesh's trust domain.
fn identity_defaults(loaded: Loaded, args: &RenderArgs) -> Result<Loaded> {
    let source = if !args.selector.is_empty() {
        "workload"
    } else if args.waypoint.is_some() {
        "peerPrincipal"
    } else if args.envoy_gateway.is_some() && loaded.config.identity_header.is_some() {
        "header"
    } else {
        "peerCertificate"
    };
    let loaded = with_fields(loaded, &[("identitySource", json!(source))], false)?;
    match &args.trust_domain {
        Some(td) => with_fields(loaded, &[("trustDomain", json!(td))], true)
            .map_err(|e| anyhow::anyhow!("--trust-domain {td}: {e}")),
        None => Ok(loaded),
    }
}

/// In the callers' sidecars the filter sees every call the pod makes, to any service: unless the
/// configuration sets a `scope`, only the model hosts (and the shorter names a client in the mesh
/// uses for a Service: `NAME`, `NAME.NS`, `NAME.NS.svc`) are its business, so an unrelated
/// service's `POST /api/generate` or `/v1/models/x:predict` is not refused as an unknown model.
/// Needs every destination's `host` (without one, the filter's default scope stays).
fn sidecar_defaults(loaded: Loaded) -> Result<Loaded> {
    let destinations: Vec<_> = loaded.config.models.iter().flat_map(|m| &m.destinations).collect();
    // A host that is no host name is the plan's to refuse, with its own message.
    let plain = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if loaded.json.get("scope").is_some() || !destinations.iter().all(|d| d.host.as_deref().is_some_and(plain)) {
        return Ok(loaded);
    }
    let mut hosts: Vec<String> = Vec::new();
    let mut add = |h: String| {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    };
    for d in destinations {
        let Some(host) = d.host.as_deref() else { continue };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some((service, _)) = host.split_once(".svc") {
            let mut labels = service.split('.');
            if let (Some(name), Some(ns)) = (labels.next(), labels.next()) {
                add(name.to_string());
                add(format!("{name}.{ns}"));
                add(format!("{name}.{ns}.svc"));
            }
        }
        add(host);
    }
    if hosts.is_empty() {
        return Ok(loaded);
    }
    with_fields(loaded, &[("scope", json!({"hosts": hosts}))], false)
}

fn part(p: PartArg) -> Part {
    match p {
        PartArg::Filter => Part::Filter,
        PartArg::DestinationRule => Part::DestinationRule,
        PartArg::VirtualService => Part::VirtualService,
        PartArg::HttpRoute => Part::HttpRoute,
        PartArg::Hpa => Part::Hpa,
        PartArg::AdapterRules => Part::AdapterRules,
        PartArg::NetworkPolicy => Part::NetworkPolicy,
        PartArg::AuthorizationPolicy => Part::AuthorizationPolicy,
        PartArg::RateLimits => Part::RateLimits,
        PartArg::External => Part::External,
        PartArg::BufferLimit => Part::BufferLimit,
    }
}

impl RenderSettings {
    /// Reads the configuration and checks every flag; `pull_secret` is a Secret the command
    /// creates itself (apply --pull-secret-from-docker-config). Each step checks one group of
    /// flags, in the order their errors are reported.
    pub fn resolve(args: &RenderArgs, pull_secret: Option<String>) -> Result<RenderSettings> {
        let loaded = configuration(args)?;
        check_installation(args)?;
        let target = target(args)?;
        let extension_api = extension_api(args, &target, loaded.config.body_routing)?;
        check_replicas(args)?;
        check_envoy_filter_pair(args, loaded.config.body_routing, pull_secret.is_some())?;
        check_subset_labels(args, &target)?;
        let principals = allowed_principals(args)?;
        let dependencies = dependencies(args)?;
        let pod_selectors = pod_selectors(args)?;
        check_workloads(args)?;
        let network = network(args, dependencies)?;
        let options = Options {
            name: args.name.clone(),
            namespace: args.namespace.clone(),
            target,
            extension_api,
            repository: String::new(),
            digest: String::new(),
            fail_open: args.fail_open,
            phase: args.phase.map_or("UNSPECIFIED_PHASE", |p| p.as_str()).to_string(),
            priority: args.priority,
            pull_secret: pull_secret.or_else(|| args.pull_secret.clone()),
            workloads: args.workload.iter().cloned().collect(),
            max_in_flight: args.max_in_flight,
            min_replicas: args.min_replicas,
            max_replicas: args.max_replicas,
            principals,
            network,
            pod_selectors,
            subset_labels: args.subset_labels.iter().cloned().collect(),
            only: args.only.iter().copied().map(part).collect(),
            skip: args.skip.iter().copied().map(part).collect(),
        };
        check_plan(args, &loaded, &options)?;
        Ok(RenderSettings {
            config_path: args.config.clone(),
            loaded,
            image: args.image.clone(),
            offline: args.offline,
            registry: args.registry.opts(),
            options,
        })
    }
}

/// The configuration with the defaults of the install mode: a gateway's (model list, no decision
/// headers), a waypoint's (no bodyRouting), a sidecar's (the model hosts as the scope), and where
/// the caller's identity comes from.
fn configuration(args: &RenderArgs) -> Result<Loaded> {
    let mut loaded = plugin_config::load(&args.config)?;
    if args.gateway.is_some() || args.envoy_gateway.is_some() {
        loaded = gateway_defaults(loaded)?;
    }
    if let Some(w) = &args.waypoint {
        loaded = waypoint_defaults(loaded, w)?;
    }
    if !args.selector.is_empty() {
        loaded = sidecar_defaults(loaded)?;
    }
    identity_defaults(loaded, args)
}

/// A waypoint cannot let the filter hold request headers: bodyRouting is turned off, with a
/// warning that says what that means. (Envoy Gateway holds headers through the EnvoyPatchPolicy
/// rendered for it.)
fn waypoint_defaults(loaded: Loaded, waypoint: &str) -> Result<Loaded> {
    if !loaded.config.body_routing {
        return Ok(loaded);
    }
    let why = format!(
        "--waypoint {waypoint}: a waypoint cannot let the filter hold request headers (EnvoyFilter is not \
         supported on waypoints, and a WasmPlugin cannot set allow_on_headers_stop_iteration)"
    );
    eprintln!(
        "warning: {why}: installing with bodyRouting false. Models in the path are routed; models in the \
         JSON body are admitted, limited, counted and rewritten, but go where the route sends them \
         (reported as `unrouted`). See docs/reach.md."
    );
    without_body_routing(loaded)
}

/// `--name` prefixes every object, `--namespace` holds the filter and the gateway route.
fn check_installation(args: &RenderArgs) -> Result<()> {
    if !is_dns_label(&args.name) || args.name.len() > 40 {
        bail!(
            "--name {}: an installation name is a DNS label (lowercase letters, digits, `-`) of at most \
             40 characters (it prefixes every object)",
            args.name
        );
    }
    if !is_dns_label(&args.namespace) {
        bail!("--namespace {}: not a Kubernetes namespace name", args.namespace);
    }
    Ok(())
}

/// Where the filter runs: exactly one of `--selector`, `--gateway`, `--waypoint`,
/// `--envoy-gateway`, with the flags that mode takes.
fn target(args: &RenderArgs) -> Result<Target> {
    let targets = [
        !args.selector.is_empty(),
        args.gateway.is_some(),
        args.waypoint.is_some(),
        args.envoy_gateway.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        bail!("give one of --selector, --gateway, --waypoint or --envoy-gateway");
    }
    check_hostnames(args)?;
    check_mode_flags(args)?;
    if let Some(g) = &args.gateway {
        Ok(Target::Gateway {
            name: g.clone(),
            hostnames: args.hostnames.clone(),
        })
    } else if let Some(g) = &args.envoy_gateway {
        Ok(Target::EnvoyGateway {
            name: g.clone(),
            hostnames: args.hostnames.clone(),
            listener: envoy_gateway_listener(args, g)?,
        })
    } else if let Some(w) = &args.waypoint {
        waypoint(args, w)
    } else {
        Ok(Target::Selector(args.selector.iter().cloned().collect()))
    }
}

/// A gateway's routes match only the host names clients use (`--hostname`, gateways only).
fn check_hostnames(args: &RenderArgs) -> Result<()> {
    let gateway_like = args.gateway.as_ref().or(args.envoy_gateway.as_ref());
    if let Some(g) = gateway_like {
        if args.hostnames.is_empty() {
            bail!(
                "--gateway/--envoy-gateway {g} needs --hostname (the host names clients use): the HTTPRoute \
                 matches only those, so it never takes over other traffic of a shared gateway"
            );
        }
        for h in &args.hostnames {
            let name = h.strip_prefix("*.").unwrap_or(h);
            if name.split('.').any(|l| !is_dns_label(l)) {
                bail!("--hostname {h}: not a host name (lowercase DNS labels, optionally *.domain)");
            }
        }
    } else if !args.hostnames.is_empty() {
        bail!("--hostname applies to --gateway and --envoy-gateway installs only (in the mesh, routing follows the Service hosts)");
    }
    Ok(())
}

/// `--listener` and `--service` belong to one mode each; Gateway names are DNS labels.
fn check_mode_flags(args: &RenderArgs) -> Result<()> {
    if args.listener.is_some() && args.envoy_gateway.is_none() {
        bail!("--listener applies to --envoy-gateway installs only (the listener its EnvoyPatchPolicy patches)");
    }
    if args.service.is_some() && args.waypoint.is_none() {
        bail!("--service applies to --waypoint installs only (the Service clients call through the waypoint)");
    }
    for name in [&args.gateway, &args.waypoint, &args.envoy_gateway]
        .into_iter()
        .flatten()
    {
        if !is_dns_label(name) {
            bail!("{name}: not a Gateway name (a DNS label)");
        }
    }
    Ok(())
}

/// The xDS listener the EnvoyPatchPolicy of body routing patches: `--listener` as a Gateway
/// listener name (default `http`), or as an xDS listener name itself.
fn envoy_gateway_listener(args: &RenderArgs, gateway: &str) -> Result<String> {
    let section = args.listener.as_deref().unwrap_or("http");
    let v2 = section.strip_prefix("tcp-").is_some_and(|p| p.parse::<u16>().is_ok());
    if section.contains('/') || v2 {
        Ok(section.to_string())
    } else if is_dns_label(section) {
        Ok(render::envoy_gateway_listener_name(&args.namespace, gateway, section))
    } else {
        bail!("--listener {section}: a Gateway listener name (a DNS label), or an xDS listener name");
    }
}

/// A waypoint and the Service clients call through it (`--service HOST:PORT`).
fn waypoint(args: &RenderArgs, waypoint: &str) -> Result<Target> {
    let Some(service) = &args.service else {
        bail!(
            "--waypoint {waypoint} needs --service HOST:PORT: the Service clients call, enrolled to the waypoint \
             (istio.io/use-waypoint: {waypoint}); its mesh HTTPRoute routes by the filter's header"
        );
    };
    let (host, port) = service
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok().filter(|p| *p > 0)?)))
        .ok_or_else(|| {
            anyhow::anyhow!("--service {service}: expected HOST:PORT, e.g. llm.ai.svc.cluster.local:8000")
        })?;
    Ok(Target::Waypoint {
        name: waypoint.to_string(),
        service: host,
        port,
    })
}

/// Istio's resource for a plain Wasm filter (`--extension-api`): a TrafficExtension neither runs
/// on Envoy Gateway nor holds headers for bodyRouting.
fn extension_api(args: &RenderArgs, target: &Target, body_routing: bool) -> Result<FilterApi> {
    let extension_api = match args.extension_api {
        crate::cli::ExtensionApi::Wasmplugin => FilterApi::WasmPlugin,
        crate::cli::ExtensionApi::TrafficExtension => FilterApi::TrafficExtension,
    };
    if matches!(target, Target::EnvoyGateway { .. }) && extension_api == FilterApi::TrafficExtension {
        bail!("--extension-api is Istio's; Envoy Gateway's filter is an EnvoyExtensionPolicy");
    }
    if body_routing && extension_api == FilterApi::TrafficExtension {
        bail!(
            "--extension-api traffic-extension: a TrafficExtension, like a WasmPlugin, cannot let the filter hold \
             request headers, and bodyRouting is on (it is installed as an EnvoyFilter pair); set \
             `bodyRouting: false` to use a TrafficExtension"
        );
    }
    Ok(extension_api)
}

fn check_replicas(args: &RenderArgs) -> Result<()> {
    if args.min_replicas > args.max_replicas {
        bail!(
            "--min-replicas {} is more than --max-replicas {}",
            args.min_replicas,
            args.max_replicas
        );
    }
    Ok(())
}

/// With bodyRouting on Istio the filter is an EnvoyFilter pair: no phase, no image pull secret
/// (`has_pull_secret`: the command creates one itself).
fn check_envoy_filter_pair(args: &RenderArgs, body_routing: bool, has_pull_secret: bool) -> Result<()> {
    if !body_routing || args.envoy_gateway.is_some() {
        return Ok(());
    }
    let ecds = "bodyRouting is on, so the filter is installed as an EnvoyFilter pair (a WasmPlugin cannot \
                let it hold headers)";
    if args.phase.is_some() {
        bail!("--phase applies to WasmPlugin installs only: {ecds}, which sits just before the router");
    }
    if args.pull_secret.is_some() || has_pull_secret {
        bail!(
            "an image pull secret applies to WasmPlugin installs only: {ecds}, whose module istio-agent \
             fetches without one; use an image the proxies can pull, or `bodyRouting: false`"
        );
    }
    Ok(())
}

/// Subsets are routed to by a VirtualService, in sidecars only.
fn check_subset_labels(args: &RenderArgs, target: &Target) -> Result<()> {
    if !matches!(target, Target::Selector(_)) && !args.subset_labels.is_empty() {
        bail!("--subset-label applies to sidecar installs only: an HTTPRoute routes to Services, not subsets");
    }
    Ok(())
}

/// `--allow-principal`, in the form Istio's AuthorizationPolicy matches.
fn allowed_principals(args: &RenderArgs) -> Result<Vec<String>> {
    args.principals.iter().map(|p| principal(p)).collect()
}

/// `--dependency`: pod selectors the model pods may reach.
fn dependencies(args: &RenderArgs) -> Result<Vec<BTreeMap<String, String>>> {
    args.dependencies.iter().map(|d| labels(d, "--dependency")).collect()
}

/// `--pod-selector HOST=LABELS`: the pods of a host.
fn pod_selectors(args: &RenderArgs) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut pod_selectors = BTreeMap::new();
    for s in &args.pod_selectors {
        let Some((host, sel)) = s.split_once('=') else {
            bail!("--pod-selector {s}: expected HOST=KEY=VALUE[,KEY=VALUE]");
        };
        pod_selectors.insert(host.trim().to_string(), labels(sel, "--pod-selector")?);
    }
    Ok(pod_selectors)
}

/// `--workload DEST=NAME` names a Deployment.
fn check_workloads(args: &RenderArgs) -> Result<()> {
    for (w, name) in &args.workload {
        if !is_dns_label(name) {
            bail!("--workload {w}={name}: a Deployment name is a DNS label (lowercase letters, digits, `-`)");
        }
    }
    Ok(())
}

/// What the model pods may reach and be reached from besides the installation: `--dependency`
/// (parsed already), `--egress-cidr`, `--egress-namespace`, `--egress-port`,
/// `--ingress-namespace`.
fn network(args: &RenderArgs, dependencies: Vec<BTreeMap<String, String>>) -> Result<Network> {
    for cidr in &args.egress_cidrs {
        let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        });
        if !ok {
            bail!("--egress-cidr {cidr}: expected an address/prefix such as 10.0.0.0/8");
        }
    }
    for ns in args.egress_namespaces.iter().chain(&args.ingress_namespaces) {
        if !is_dns_label(ns) {
            bail!("{ns}: not a namespace name");
        }
    }
    Ok(Network {
        dependencies,
        egress_cidrs: args.egress_cidrs.clone(),
        egress_namespaces: args.egress_namespaces.clone(),
        egress_ports: egress_ports(args)?,
        ingress_namespaces: args.ingress_namespaces.clone(),
    })
}

/// `--egress-port`: a port number, or a named port.
fn egress_ports(args: &RenderArgs) -> Result<Vec<Value>> {
    args.egress_ports
        .iter()
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(json!(n)),
            _ if is_dns_label(p) && p.len() <= 15 => Ok(json!(p)),
            _ => bail!("--egress-port {p}: a port number or a named port"),
        })
        .collect()
}

/// The cross-resource checks need no digest: run them now, before any network call.
fn check_plan(args: &RenderArgs, loaded: &Loaded, options: &Options) -> Result<()> {
    if let Err(problems) = render::plan(&loaded.config, options) {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        bail!(
            "{}: the installation cannot be rendered:\n  {}",
            args.config.display(),
            lines.join("\n  ")
        );
    }
    Ok(())
}
