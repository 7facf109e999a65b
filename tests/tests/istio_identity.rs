//! Where users run it: real Envoy bootstrapped as Istio's agent bootstraps a sidecar and a
//! gateway (node id `sidecar~…`/`router~…`, the `ISTIO_META_*` node metadata, the listener's
//! traffic direction), with the plaintext the app sends its own sidecar — no peer certificate.
//! The caller's identity is the one the place gives (docs/access-control.md, "Who the caller is").

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use e2e::{metric, IstioProxy, Options, Scenario};
use serde_json::{json, Value};

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// Two private models: one the `shop/checkout` workload may use, one only `ops` may; a third
/// limited to two requests a minute per principal.
fn config() -> Value {
    json!({
        "identityHeader": "x-client-identity",
        "models": [
            {"name": "private-llm", "allow": ["spiffe://cluster.local/ns/shop/sa/checkout"],
             "destinations": [{"name": "private", "host": "private-llm.ai.svc.cluster.local"}]},
            {"name": "ops-llm", "allow": ["spiffe://cluster.local/ns/ops/*"],
             "destinations": [{"name": "ops"}]},
            {"name": "metered", "limits": {"requestsPerMinute": 2, "by": "principal"},
             "destinations": [{"name": "metered"}]}
        ]
    })
}

async fn start(proxy: IstioProxy, config: Value) -> Scenario {
    Scenario::start_with(
        config,
        Options {
            istio: Some(proxy),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecars_outbound_caller_is_its_own_workload() {
    let s = start(IstioProxy::sidecar_outbound("shop", "checkout"), config()).await;
    // Plaintext from the app, no certificate: the sidecar's own workload is admitted by the
    // allow list that names it …
    let r = s.post("/v1/chat/completions", chat("private-llm"), &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e2e::tail(&s.envoy.log()));
    assert_eq!(s.backend("private").exchanges().len(), 1);
    // … refused by one that does not, whatever identity a header claims.
    let r = s
        .post(
            "/v1/chat/completions",
            chat("ops-llm"),
            &[("x-client-identity", "spiffe://cluster.local/ns/ops/sa/admin")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_access_denied");
    let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("spiffe://cluster.local/ns/shop/sa/checkout"),
        "the refusal names the sidecar's workload: {message}"
    );
    assert!(s.backend("ops").exchanges().is_empty());
    // `by: principal` counts the workload under its own principal (the third request of a minute
    // is refused, and the refusal is counted under its model).
    for expect in [200, 200, 429] {
        let r = s.post("/v1/chat/completions", chat("metered"), &[]).await;
        assert_eq!(r.status, expect, "{}", r.text());
    }
    let text = s.prometheus();
    assert_eq!(
        metric(
            &text,
            "model_router_rejected_total",
            &[("model", "metered"), ("reason", "rate_limit_exceeded")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "model_router_requests_total",
            &[("model", "ops-llm"), ("destination", "none"), ("code_class", "4xx")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_never_takes_its_own_identity_for_its_callers() {
    // The gateway's own workload is the one the allow list names: it must still not admit an
    // anonymous caller (no client certificate, no trusted header).
    let gateway = IstioProxy {
        kind: "router",
        namespace: "shop".into(),
        service_account: "checkout".into(),
        direction: "OUTBOUND",
    };
    for source in [None, Some("workload")] {
        let mut cfg = config();
        if let Some(src) = source {
            cfg["identitySource"] = json!(src);
        }
        let s = start(gateway.clone(), cfg).await;
        let r = s.post("/v1/chat/completions", chat("private-llm"), &[]).await;
        assert_eq!(r.status, 403, "identitySource {source:?}: {}", r.text());
        assert!(
            r.text().contains("A caller without identity"),
            "{source:?}: {}",
            r.text()
        );
        assert!(s.backend("private").exchanges().is_empty());
    }
    // A caller a trusted authentication step named (identityHeader) is who it says.
    let s = start(gateway, config()).await;
    let r = s
        .post(
            "/v1/chat/completions",
            chat("ops-llm"),
            &[("x-client-identity", "spiffe://cluster.local/ns/ops/sa/admin")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_listener_does_not_lend_the_callee_identity() {
    // The model pod's own sidecar, inbound: its workload is the callee, not the caller.
    let inbound = IstioProxy {
        kind: "sidecar",
        namespace: "shop".into(),
        service_account: "checkout".into(),
        direction: "INBOUND",
    };
    let s = start(inbound, config()).await;
    let r = s.post("/v1/chat/completions", chat("private-llm"), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_litellm_style_backend_is_checked_however_its_path_is_spelt() {
    // The caller's sidecar may not use `private-llm`; every spelling LiteLLM (and uvicorn under
    // it) serves as chat must be refused, none may reach the backend.
    let s = start(IstioProxy::sidecar_outbound("shop", "web"), config()).await;
    for path in [
        "/v1/chat/completions",
        "/chat/completions",
        "/engines/private-llm/chat/completions",
        "/openai/deployments/private-llm/chat/completions",
        "/v1/chat%2Fcompletions",
        "/CHAT/COMPLETIONS",
        "/v1//chat/./completions",
        "/api/v1/../chat/completions",
    ] {
        let body = if path.contains("private-llm") {
            chat("some-public-name")
        } else {
            chat("private-llm")
        };
        let r = s.post(path, body, &[]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    // Any path to the model's own host is in scope, even one no default endpoint lists.
    let r = s
        .post(
            "/v1/unlisted/generate",
            chat("private-llm"),
            &[("host", "private-llm.ai.svc.cluster.local:8000")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(s.backend("private").exchanges().is_empty());
    assert!(s.default.exchanges().is_empty(), "nothing reached the default route");
}
