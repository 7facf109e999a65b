//! End-to-end harness: real Envoy 1.40 (V8) loading the built `model_router.wasm`, in front of
//! fake OpenAI-compatible backends that record what they receive.

// A test harness: failing loudly with a message is its job.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod demo;
pub mod envoy;
pub mod pki;
pub mod process;
pub mod providers;
pub mod rate_limit;

use std::collections::BTreeMap;
use std::path::PathBuf;

use backend::Backend;
use envoy::Envoy;
use serde_json::Value;
use wasmpack::bootstrap::{Spec, Upstream};
pub use wasmpack::prom;

/// What a test client got back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Envoy with the filter, one backend per configured destination, and a `default` backend for
/// requests the filter does not route.
pub struct Scenario {
    pub envoy: Envoy,
    pub backends: BTreeMap<String, Backend>,
    pub default: Backend,
    pub client: reqwest::Client,
    pub access_log: PathBuf,
    /// The listener speaks TLS.
    pub tls: bool,
}

pub struct Options {
    pub allow_hold: bool,
    pub concurrency: u32,
    /// Replaces the filter's http_filters entry (an ECDS `config_discovery` one, say).
    pub filter_entry: Option<Value>,
    /// Serve TLS and require client certificates from this PKI (mTLS, SPIFFE identities).
    pub tls: Option<std::sync::Arc<pki::Pki>>,
    /// HTTP filters before the Wasm filter.
    pub pre_filters: Vec<Value>,
    /// gRPC clusters (the rate limit service).
    pub grpc_clusters: Vec<Upstream>,
    /// Envoy keeps the trailers of HTTP/1 chunked requests (`http_protocol_options:
    /// enable_trailers`), as it always does for HTTP/2: a raw HTTP/1 client can then send them.
    pub http1_trailers: bool,
    /// Bootstrap Envoy as Istio's agent does for this proxy (node id and metadata, the
    /// listener's traffic direction).
    pub istio: Option<IstioProxy>,
}

/// An Istio proxy as its agent bootstraps it (istio/istio `pkg/bootstrap`, the node id
/// `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local` and the `ISTIO_META_*` metadata).
#[derive(Debug, Clone)]
pub struct IstioProxy {
    /// `sidecar`, `router` (a gateway) or `waypoint`.
    pub kind: &'static str,
    pub namespace: String,
    pub service_account: String,
    /// The listener's `traffic_direction`: `OUTBOUND` (a sidecar's calls out, a gateway) or `INBOUND`.
    pub direction: &'static str,
}

impl IstioProxy {
    pub fn sidecar_outbound(namespace: &str, service_account: &str) -> IstioProxy {
        IstioProxy {
            kind: "sidecar",
            namespace: namespace.into(),
            service_account: service_account.into(),
            direction: "OUTBOUND",
        }
    }

    /// The bootstrap's `node`, as Istio's agent writes it.
    pub fn node(&self) -> Value {
        let pod = format!("{}-7d9f8b6c5-x2x4q", self.service_account);
        serde_json::json!({
            "id": format!("{}~10.244.1.17~{pod}.{ns}~{ns}.svc.cluster.local", self.kind, ns = self.namespace),
            "cluster": format!("{}.{}", self.service_account, self.namespace),
            "metadata": {
                "NAMESPACE": self.namespace,
                "SERVICE_ACCOUNT": self.service_account,
                "MESH_ID": "cluster.local",
                "CLUSTER_ID": "Kubernetes",
                "ISTIO_VERSION": "1.28.0",
                "NAME": pod,
                "WORKLOAD_NAME": self.service_account,
                "LABELS": {"app": self.service_account, "service.istio.io/canonical-name": self.service_account},
                "INSTANCE_IPS": "10.244.1.17",
                "INTERCEPTION_MODE": "REDIRECT",
                "OWNER": format!("kubernetes://apis/apps/v1/namespaces/{}/deployments/{}", self.namespace, self.service_account),
                "PROXY_CONFIG": {"discoveryAddress": "istiod.istio-system.svc:15012", "holdApplicationUntilProxyStarts": true}
            }
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_hold: true,
            concurrency: 1,
            filter_entry: None,
            tls: None,
            pre_filters: Vec::new(),
            grpc_clusters: Vec::new(),
            http1_trailers: false,
            istio: None,
        }
    }
}

impl Scenario {
    pub async fn start(config: Value) -> Scenario {
        Scenario::start_with(config, Options::default()).await
    }

    pub async fn start_with(config: Value, opts: Options) -> Scenario {
        let mut backends = BTreeMap::new();
        for m in config["models"].as_array().into_iter().flatten() {
            for d in m["destinations"].as_array().into_iter().flatten() {
                let name = d["name"].as_str().unwrap_or_default().to_string();
                if !backends.contains_key(&name) {
                    backends.insert(name.clone(), Backend::start(&name).await);
                }
            }
        }
        let default = Backend::start("default").await;
        let mut upstreams: Vec<Upstream> = backends
            .values()
            .map(|b| Upstream {
                name: b.name.clone(),
                host: "127.0.0.1".into(),
                port: b.port(),
            })
            .collect();
        upstreams.push(Upstream {
            name: "default".into(),
            host: "127.0.0.1".into(),
            port: default.port(),
        });
        let logdir = tempfile::tempdir().map(|d| d.keep()).unwrap_or_else(|e| panic!("{e}"));
        let access_log = logdir.join("access.log");
        let mut boot = wasmpack::bootstrap::render(&Spec {
            listen: ("127.0.0.1".into(), 0),
            admin: ("127.0.0.1".into(), 0),
            wasm: envoy::wasm_path(),
            config_json: config.to_string(),
            route_header: config["routeHeader"].as_str().unwrap_or("x-ai-route").to_string(),
            upstreams,
            default_upstream: Some("default".into()),
            allow_hold: opts.allow_hold,
            access_log: Some(access_log.display().to_string()),
            filter_entry: opts.filter_entry,
            stats_flush_on_admin: true,
            transport_socket: opts.tls.as_ref().map(|p| p.transport_socket()),
            pre_filters: opts.pre_filters,
            grpc_clusters: opts.grpc_clusters,
            route_timeout_s: 300,
        });
        if opts.http1_trailers {
            let hcm = &mut boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
            hcm["http_protocol_options"] = serde_json::json!({"enable_trailers": true});
        }
        if let Some(proxy) = &opts.istio {
            boot["node"] = proxy.node();
            boot["static_resources"]["listeners"][0]["traffic_direction"] = proxy.direction.into();
        }
        let tls = opts.tls.is_some();
        let envoy = match tokio::task::block_in_place(|| Envoy::start(&boot, opts.concurrency)) {
            Ok(e) => e,
            Err(e) => panic!("{e:#}"),
        };
        let client = http_client()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        Scenario {
            envoy,
            backends,
            default,
            client,
            access_log,
            tls,
        }
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends.get(name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// POSTs `body` to `path` through Envoy.
    pub async fn post(&self, path: &str, body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> Reply {
        self.send("POST", path, body.into(), headers).await
    }

    pub async fn send(&self, method: &str, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
        self.send_with(&self.client, method, path, body, headers).await
    }

    /// The listener URL for `path` (https when the scenario serves TLS).
    pub fn url(&self, path: &str) -> String {
        let u = self.envoy.url(path);
        if self.tls {
            u.replacen("http://", "https://", 1)
        } else {
            u
        }
    }

    /// Like `send`, with a given client (e.g. one presenting a client certificate).
    pub async fn send_with(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = client.request(method, self.url(path)).body(body);
        let has_ct = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !has_ct {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => panic!("request to {path} failed: {e}\nenvoy log:\n{}", tail(&self.envoy.log())),
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Reply { status, headers, body }
    }

    /// Prometheus text from Envoy's admin endpoint.
    pub fn prometheus(&self) -> String {
        self.envoy.admin("/stats/prometheus").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Prometheus text once `ready` holds for it. Counters and gauges are read live; histograms
    /// only after Envoy merged the workers' samples, which each scrape starts
    /// (`stats_flush_on_admin`) but does not wait for: a test says which counts it expects.
    /// Panics, naming `what`, with the last text if it never holds within 10 s.
    pub async fn prometheus_when(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = self.prometheus();
            if ready(&text) {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "never true: {what}\n{text}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    /// The first access log line containing `needle`, waiting for Envoy's buffered log writes.
    pub async fn access_log_line(&self, needle: &str) -> Option<String> {
        for _ in 0..60 {
            if let Some(l) = self.access_log().lines().find(|l| l.contains(needle)) {
                return Some(l.to_string());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }
}

/// A reqwest client builder, with the process's one crypto provider (ring, as `wasmpack` uses)
/// installed first: reqwest is built without a bundled provider.
pub fn http_client() -> reqwest::ClientBuilder {
    wasmpack::commands::apply::install_crypto_provider();
    reqwest::Client::builder()
}

/// The project's Python (`.venv`, made by `scripts/setup.sh`) with the official `openai` client.
pub fn venv_python() -> PathBuf {
    let python = envoy::repo_root().join(".venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        panic!(
            "the official openai Python client is missing: run `scripts/setup.sh` \
             (it runs `.venv/bin/pip install openai`)"
        );
    }
    python
}

/// A metric's value (summed over series) from Prometheus text; 0 when absent.
/// The sum of a metric's samples with these labels. A name no sample carries is an error (a
/// renamed metric must not read as zero); for series the filter makes on first use, see
/// [`metric_if_made`].
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = prom::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        samples.iter().any(|s| s.name == name),
        "no metric named {name} in the scrape"
    );
    prom::sum(&samples, name, labels)
}

/// Like [`metric`], for a series the filter makes only when it first counts something (e.g. the
/// rate limit service's failures): absent reads as zero. `made_with` is a metric of the same
/// family that must exist, so a rename of the family is still caught.
pub fn metric_if_made(text: &str, name: &str, labels: &[(&str, &str)], made_with: &str) -> f64 {
    let samples = prom::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        samples.iter().any(|s| s.name == made_with),
        "no metric named {made_with} in the scrape"
    );
    prom::sum(&samples, name, labels)
}

/// The last lines of a log, for failure messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
