//! A local Kubernetes API endpoint for the real client stack: `wasmpack apply` reads a kubeconfig,
//! builds a `kube::Client` and talks HTTPS (a CA from the kubeconfig, a bearer token) or plain
//! HTTP (like `kubectl proxy`) to this server. It answers discovery, server-side apply, get and
//! delete from an in-memory store, and records every request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-token-0123";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub authorization: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// (path of the object) -> object.
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    /// API groups to answer 404 for (a cluster without those CRDs).
    missing_groups: Vec<String>,
    /// Requests whose path contains this get a 403.
    forbid: Option<String>,
}

pub struct KubeApi {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    pub ca_pem: Option<String>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The kinds this API serves: (group/version, kind, plural, namespaced).
const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("v1", "ConfigMap", "configmaps", true),
    ("v1", "Secret", "secrets", true),
    ("v1", "Namespace", "namespaces", false),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
    ),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", true),
    ("networking.istio.io/v1", "VirtualService", "virtualservices", true),
    ("networking.istio.io/v1", "DestinationRule", "destinationrules", true),
    ("networking.istio.io/v1alpha3", "EnvoyFilter", "envoyfilters", true),
    ("extensions.istio.io/v1alpha1", "WasmPlugin", "wasmplugins", true),
    (
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", true),
];

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": if code < 300 { "Success" } else { "Failure" },
           "code": code, "reason": reason, "message": message})
}

fn reply(code: u16, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn openssl(args: &[&str], dir: &Path) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed to make test certificates ({e}); apt-get install openssl"));
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1; returns (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-kube-ca",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    );
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

impl KubeApi {
    /// HTTPS with a certificate from a test CA, requiring `Authorization: Bearer TOKEN`.
    pub async fn tls(dir: &Path) -> KubeApi {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        wasmpack::commands::apply::install_crypto_provider();
        let (ca, cert, key) = certificates(dir);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut api = KubeApi::serve(Some(acceptor), true).await;
        api.ca_pem = Some(std::fs::read_to_string(ca).unwrap());
        api
    }

    /// Plain HTTP without authentication, as `kubectl proxy` serves it.
    pub async fn plain() -> KubeApi {
        KubeApi::serve(None, false).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>, need_token: bool) -> KubeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), need_token, req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(a) => {
                            if let Ok(s) = a.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        KubeApi {
            url: format!("{scheme}://127.0.0.1:{port}"),
            state,
            task,
            ca_pem: None,
        }
    }

    /// A kubeconfig for this server (context `test`, namespace `default`).
    pub fn kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        use base64::Engine;
        let cluster = match &self.ca_pem {
            Some(ca) => {
                json!({"server": self.url, "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca)})
            }
            None => json!({"server": self.url}),
        };
        let user = if self.ca_pem.is_some() {
            json!({"token": token})
        } else {
            json!({})
        };
        let cfg = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}]
        });
        let p = dir.join("kubeconfig");
        std::fs::write(&p, serde_saphyr::to_string(&cfg).unwrap()).unwrap();
        p
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().map(|s| s.requests.clone()).unwrap_or_default()
    }

    pub fn clear_requests(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.requests.clear();
        }
    }

    /// Stored objects as `Kind namespace/name`.
    pub fn objects(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.objects
            .values()
            .map(|o| {
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    pub fn object(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .values()
            .find(|o| o["kind"] == kind && o["metadata"]["namespace"] == ns && o["metadata"]["name"] == name)
            .cloned()
    }

    pub fn without_group(&self, group: &str) {
        self.state.lock().unwrap().missing_groups.push(group.to_string());
    }

    pub fn forbid(&self, path_part: &str) {
        self.state.lock().unwrap().forbid = Some(path_part.to_string());
    }

    /// Undoes `forbid`.
    pub fn allow(&self) {
        self.state.lock().unwrap().forbid = None;
    }
}

fn resource_list(gv: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.0 == gv)
        .flat_map(|(_, kind, plural, namespaced)| {
            [
                json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                       "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}),
                json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "patch"]}),
            ]
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// `/api/v1/namespaces/NS/PLURAL/NAME` or `/apis/G/V/...` → (group/version, kind, ns, name).
fn parse_object_path(path: &str) -> Option<(String, &'static str, String, String)> {
    let rest = path
        .strip_prefix("/api/")
        .map(|r| ("", r))
        .or_else(|| path.strip_prefix("/apis/").map(|r| ("g", r)))?;
    let parts: Vec<&str> = rest.1.split('/').collect();
    let (gv, tail) = if rest.0.is_empty() {
        (parts.first()?.to_string(), &parts[1..])
    } else {
        (format!("{}/{}", parts.first()?, parts.get(1)?), parts.get(2..)?)
    };
    let (ns, plural, name) = match tail {
        ["namespaces", ns, plural, name] => (ns.to_string(), *plural, name.to_string()),
        [plural, name] => (String::new(), *plural, name.to_string()),
        _ => return None,
    };
    let r = RESOURCES.iter().find(|r| r.0 == gv && r.2 == plural)?;
    Some((gv, r.1, ns, name))
}

async fn handle(
    state: Arc<Mutex<State>>,
    need_token: bool,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let content_type = header("content-type");
    let authorization = header("authorization");
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes)
        .or_else(|_| serde_saphyr::from_slice(&bytes).map_err(|_| ()))
        .unwrap_or(Value::Null);
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type,
        authorization: authorization.clone(),
        body: body.clone(),
    });
    if need_token && authorization != format!("Bearer {TOKEN}") {
        return Ok(reply(401, &status(401, "Unauthorized", "Unauthorized")));
    }
    if st.forbid.as_ref().is_some_and(|f| path.contains(f.as_str())) {
        return Ok(reply(
            403,
            &status(
                403,
                "Forbidden",
                &format!("{path} is forbidden: User \"ci\" cannot patch"),
            ),
        ));
    }
    let group = path
        .strip_prefix("/apis/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    if st.missing_groups.iter().any(|g| g == group) {
        return Ok(reply(
            404,
            &status(404, "NotFound", "the server could not find the requested resource"),
        ));
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/api") => return Ok(reply(200, &json!({"kind": "APIVersions", "versions": ["v1"]}))),
        ("GET", "/api/v1") => return Ok(reply(200, &resource_list("v1"))),
        ("GET", p) if p.starts_with("/apis/") && p.matches('/').count() == 3 => {
            let gv = p.trim_start_matches("/apis/");
            if RESOURCES.iter().any(|r| r.0 == gv) {
                return Ok(reply(200, &resource_list(gv)));
            }
            return Ok(reply(
                404,
                &status(404, "NotFound", "the server could not find the requested resource"),
            ));
        }
        _ => {}
    }
    let Some((gv, kind, ns, name)) = parse_object_path(&path) else {
        return Ok(reply(
            404,
            &status(404, "NotFound", &format!("no route {method} {path}")),
        ));
    };
    let key = format!("{gv}|{kind}|{ns}|{name}");
    let dry_run = query.contains("dryRun=All");
    match method.as_str() {
        "GET" => Ok(match st.objects.get(&key) {
            Some(o) => reply(200, o),
            None => reply(404, &status(404, "NotFound", &format!("{kind} \"{name}\" not found"))),
        }),
        "PATCH" => {
            let mut obj = body;
            obj["metadata"]["resourceVersion"] = json!("1");
            if !dry_run {
                st.objects.insert(key, obj.clone());
            }
            Ok(reply(200, &obj))
        }
        "DELETE" => {
            let existed = if dry_run {
                st.objects.contains_key(&key)
            } else {
                st.objects.remove(&key).is_some()
            };
            Ok(if existed {
                reply(200, &status(200, "", ""))
            } else {
                reply(404, &status(404, "NotFound", &format!("{kind} \"{name}\" not found")))
            })
        }
        _ => Ok(reply(405, &status(405, "MethodNotAllowed", "method not allowed"))),
    }
}
