//! Who the caller is, decided by where the filter runs (pure: the exchange reads the few Envoy
//! properties this asks for and hands them in).
//!
//! There is no single `source.principal` in Envoy: in the callers' sidecars (outbound) the app
//! talks plaintext to its own proxy, so the caller is that sidecar's own workload, named by the
//! node metadata Istio's agent writes; inbound listeners and gateways with client mTLS have the
//! peer's certificate; ambient waypoints get the caller from ztunnel over HBONE and Istio keeps it
//! in the filter state `io.istio.peer_principal`. A gateway never lends its own identity.

use crate::config::IdentitySource;

/// What kind of proxy the filter runs in: the first field of Istio's node id
/// (`sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local`, `router~…`, `waypoint~…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Sidecar,
    /// An Istio gateway (ingress, egress, Gateway API).
    Router,
    Waypoint,
    /// Not an Istio node id: plain Envoy, Envoy Gateway, `wasmpack run`.
    Other,
}

impl NodeKind {
    pub fn from_node_id(id: &[u8]) -> NodeKind {
        match id.split(|b| *b == b'~').next() {
            Some(b"sidecar") if id.contains(&b'~') => NodeKind::Sidecar,
            Some(b"router") if id.contains(&b'~') => NodeKind::Router,
            Some(b"waypoint") if id.contains(&b'~') => NodeKind::Waypoint,
            _ => NodeKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Sidecar => "sidecar",
            NodeKind::Router => "gateway",
            NodeKind::Waypoint => "waypoint",
            NodeKind::Other => "envoy",
        }
    }
}

/// The listener's traffic direction (Envoy's `listener_direction` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    Unspecified,
}

impl Direction {
    /// The property's value: an int64, little-endian (`envoy.config.core.v3.TrafficDirection`:
    /// 1 inbound, 2 outbound).
    pub fn from_property(raw: Option<&[u8]>) -> Direction {
        let n = raw
            .and_then(|b| b.get(..8))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes);
        match n {
            Some(1) => Direction::Inbound,
            Some(2) => Direction::Outbound,
            _ => Direction::Unspecified,
        }
    }
}

/// The source that applies to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The peer certificate, else Istio's peer-principal filter state (plain Envoy: the first
    /// present wins; neither can be set by a client).
    Peer,
    PeerCertificate,
    PeerPrincipal,
    /// The sidecar's own workload.
    Workload,
    Header,
    /// `workload` configured where it must not apply (a gateway, a waypoint, an inbound
    /// listener): no identity, rather than the proxy's own.
    Refused,
}

impl Source {
    /// The name `wasmpack route` shows.
    #[cfg(any(test, feature = "decide"))]
    pub fn name(self) -> &'static str {
        match self {
            Source::Peer => "peerCertificate",
            Source::PeerCertificate => "peerCertificate",
            Source::PeerPrincipal => "peerPrincipal",
            Source::Workload => "workload",
            Source::Header => "header",
            Source::Refused => "none",
        }
    }

    /// `identityHeader`, when configured, stands in for a source that found nobody (a caller
    /// without a client certificate). Never for the workload: the sidecar's workload is the
    /// caller, whatever a header says.
    pub fn header_fallback(self) -> bool {
        matches!(self, Source::Peer | Source::PeerCertificate | Source::PeerPrincipal)
    }

    /// Whether the node's kind (and, for a sidecar, the listener's direction) is needed to decide.
    pub fn needs_node(configured: IdentitySource) -> bool {
        matches!(configured, IdentitySource::Auto | IdentitySource::Workload)
    }
}

/// The source for a request, from the configuration and where the filter runs.
pub fn source(configured: IdentitySource, node: NodeKind, direction: Direction) -> Source {
    match configured {
        IdentitySource::Auto => match (node, direction) {
            (NodeKind::Sidecar, Direction::Outbound) => Source::Workload,
            (NodeKind::Sidecar | NodeKind::Router, _) => Source::PeerCertificate,
            (NodeKind::Waypoint, _) => Source::PeerPrincipal,
            (NodeKind::Other, _) => Source::Peer,
        },
        IdentitySource::Workload => match (node, direction) {
            (NodeKind::Router | NodeKind::Waypoint, _) | (_, Direction::Inbound) => Source::Refused,
            _ => Source::Workload,
        },
        IdentitySource::PeerCertificate => Source::PeerCertificate,
        IdentitySource::PeerPrincipal => Source::PeerPrincipal,
        IdentitySource::Header => Source::Header,
    }
}

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, when both names are
/// Kubernetes names (anything else in node metadata is no identity).
pub fn workload_principal(
    trust_domain: &str,
    namespace: Option<&[u8]>,
    service_account: Option<&[u8]>,
) -> Option<String> {
    let name = |v: Option<&[u8]>| {
        let v = v?;
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.');
        ok.then(|| String::from_utf8_lossy(v).into_owned())
    };
    Some(format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        name(namespace)?,
        name(service_account)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentitySource as I;

    #[test]
    fn node_kinds() {
        for (id, kind) in [
            (
                "sidecar~10.0.0.1~app-7d9.shop~shop.svc.cluster.local",
                NodeKind::Sidecar,
            ),
            (
                "router~10.0.0.2~gw-1.istio-system~istio-system.svc.cluster.local",
                NodeKind::Router,
            ),
            (
                "waypoint~10.0.0.3~waypoint-1.ai~ai.svc.cluster.local",
                NodeKind::Waypoint,
            ),
            ("sidecar", NodeKind::Other),
            ("wasmpack-run", NodeKind::Other),
            ("", NodeKind::Other),
            ("Sidecar~x", NodeKind::Other),
        ] {
            assert_eq!(NodeKind::from_node_id(id.as_bytes()), kind, "{id}");
        }
    }

    #[test]
    fn directions() {
        assert_eq!(Direction::from_property(Some(&1i64.to_le_bytes())), Direction::Inbound);
        assert_eq!(Direction::from_property(Some(&2i64.to_le_bytes())), Direction::Outbound);
        assert_eq!(
            Direction::from_property(Some(&0i64.to_le_bytes())),
            Direction::Unspecified
        );
        assert_eq!(Direction::from_property(Some(b"\x02")), Direction::Unspecified);
        assert_eq!(Direction::from_property(None), Direction::Unspecified);
    }

    #[test]
    fn where_the_filter_runs_decides() {
        use Direction::*;
        use NodeKind::*;
        for (configured, node, dir, want) in [
            (I::Auto, Sidecar, Outbound, Source::Workload),
            (I::Auto, Sidecar, Inbound, Source::PeerCertificate),
            (I::Auto, Sidecar, Unspecified, Source::PeerCertificate),
            (I::Auto, Router, Outbound, Source::PeerCertificate),
            (I::Auto, Waypoint, Inbound, Source::PeerPrincipal),
            (I::Auto, Other, Unspecified, Source::Peer),
            (I::Workload, Sidecar, Outbound, Source::Workload),
            (I::Workload, Other, Unspecified, Source::Workload),
            // A gateway or waypoint never lends its own identity; inbound, the workload is the callee.
            (I::Workload, Router, Outbound, Source::Refused),
            (I::Workload, Waypoint, Inbound, Source::Refused),
            (I::Workload, Sidecar, Inbound, Source::Refused),
            (I::PeerCertificate, Sidecar, Outbound, Source::PeerCertificate),
            (I::PeerPrincipal, Router, Outbound, Source::PeerPrincipal),
            (I::Header, Sidecar, Outbound, Source::Header),
        ] {
            assert_eq!(source(configured, node, dir), want, "{configured:?} {node:?} {dir:?}");
        }
        assert!(!Source::Workload.header_fallback());
        assert!(!Source::Refused.header_fallback());
        assert!(Source::PeerCertificate.header_fallback());
    }

    #[test]
    fn workload_principals() {
        assert_eq!(
            workload_principal("cluster.local", Some(b"shop"), Some(b"checkout")).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/checkout")
        );
        assert_eq!(workload_principal("td", None, Some(b"a")), None);
        assert_eq!(workload_principal("td", Some(b"a"), Some(b"")), None);
        assert_eq!(
            workload_principal("td", Some(b"a/b"), Some(b"c")),
            None,
            "no path tricks"
        );
        assert_eq!(workload_principal("td", Some(b"A"), Some(b"c")), None);
    }
}
