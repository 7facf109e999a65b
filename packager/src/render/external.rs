//! External providers (`api.openai.com`): reached through the mesh on plain HTTP, so the filter
//! and the proxy see the requests, and sent to the provider over TLS the proxy originates.

use serde_json::json;

use super::options::Options;
use super::plan::Host;
use super::Doc;

/// The plain-HTTP port the mesh calls an external provider on; the proxy originates TLS to the
/// provider's port (Istio's egress TLS origination: ServiceEntry port 80 → targetPort 443).
pub const EXTERNAL_HTTP_PORT: u16 = 80;

/// An external provider: a ServiceEntry (the mesh calls it on plain-HTTP port 80, sent to its TLS
/// port) and a DestinationRule originating TLS with the provider's name as SNI (Istio's egress TLS
/// origination). Credentials are not the filter's: callers send their key, or a credential
/// injector adds it (docs/reach.md).
pub(super) fn external_provider(h: &Host, o: &Options) -> Vec<Doc> {
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
