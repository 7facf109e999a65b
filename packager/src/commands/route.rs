//! `wasmpack route CONFIG --path P [--body FILE] [-H K:V]`: the decision the filter would make
//! (`model_router::decide`, shared with the browser playground), as JSON.

use anyhow::{bail, Context, Result};
use model_router::decide::{decide_in, destination_states, Proxy, RouteRequest};

use crate::cli::{ProxyKind, RouteArgs};
use crate::plugin_config;

pub fn run(args: &RouteArgs) -> Result<()> {
    let loaded = plugin_config::load(&args.config.path())?;
    let body = match &args.body {
        Some(p) if p.as_os_str() == "-" => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading the body from stdin")?;
            Some(b)
        }
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            bail!("-H {h}: expected NAME:VALUE")
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let workload = match &args.workload {
        None => None,
        Some(w) => match w.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Some((ns, sa)),
            _ => bail!("--workload {w}: expected NAMESPACE/SERVICE_ACCOUNT"),
        },
    };
    let proxy = match args.proxy {
        ProxyKind::Envoy => Proxy::Envoy,
        ProxyKind::Sidecar => Proxy::Sidecar,
        ProxyKind::SidecarInbound => Proxy::SidecarInbound,
        ProxyKind::Gateway => Proxy::Gateway,
        ProxyKind::Waypoint => Proxy::Waypoint,
    };
    let req = RouteRequest {
        method: &args.method,
        path: &args.path,
        headers: &headers,
        body: body.as_deref(),
        peer_identity: args.peer_identity.as_deref(),
        proxy,
        workload,
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut states = Vec::new();
    for s in &args.destination_state {
        let Some((d, st)) = s.split_once('=') else {
            bail!("--destination-state {s}: expected DEST=open|half-open|closed")
        };
        states.push((d.trim().to_string(), st.trim().to_string()));
    }
    let shared = if states.is_empty() {
        Default::default()
    } else {
        destination_states(&loaded.config, &states).map_err(|e| anyhow::anyhow!("--destination-state {e}"))?
    };
    let decision = decide_in(&loaded.config, &req, seed, args.repeat, shared);
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(())
}
