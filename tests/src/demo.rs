//! The demo the README's first command runs, also run (with assertions) by tests/tests/cli_run.rs:
//! local OpenAI-compatible backends, `wasmpack run` (real Envoy with the filter), a mix of real
//! requests, then `wasmpack stats`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::envoy::{admin_get, repo_root};

pub const CONFIG: &str = "\
# The demo's plugin configuration (model-router; see docs/configuration.md)
stickyHeader: x-user-id
bodyRouting: true
injectStreamUsage: true
models:
  - name: llama-3-8b
    aliases: [gpt-3.5-turbo]
    upstreamModel: meta-llama/Meta-Llama-3-8B-Instruct
    destinations:
      - {name: llama-3-8b-v1, weight: 90}
      - {name: llama-3-8b-v2, weight: 10}
  - name: gpt-4o
    destinations:
      - {name: gpt-4o, weight: 1}
  - name: bge-small
    destinations:
      - {name: embeddings, weight: 1}
";

/// The wasmpack binary of this workspace (built by scripts/test.sh and scripts/demo.sh).
pub fn wasmpack_bin() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let p = target.join("debug/wasmpack");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p wasmpack`",
        p.display()
    );
    p
}

/// `wasmpack run`, stopped with SIGINT on drop if still running.
pub struct Run {
    pub child: Child,
    pub listen: String,
    pub admin: String,
    pub log: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// Sends Ctrl-C and returns how `wasmpack run` exited.
    pub fn interrupt(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("wasmpack run did not stop within 15 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Demo {
    pub backends: BTreeMap<String, Backend>,
    pub run: Run,
    pub dir: tempfile::TempDir,
}

/// Starts the backends and `wasmpack run`, and waits until Envoy is ready.
pub async fn start() -> Result<Demo> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("model-router.yaml");
    std::fs::write(&config, CONFIG)?;
    let mut backends = BTreeMap::new();
    let mut args: Vec<String> = vec!["run".into(), "--config".into(), config.display().to_string()];
    for name in ["llama-3-8b-v1", "llama-3-8b-v2", "gpt-4o", "embeddings"] {
        let b = Backend::start(name).await;
        args.push("--upstream".into());
        args.push(format!("{name}=127.0.0.1:{}", b.port()));
        backends.insert(name.to_string(), b);
    }
    let (listen, admin) = (
        format!("127.0.0.1:{}", crate::process::free_port()),
        format!("127.0.0.1:{}", crate::process::free_port()),
    );
    let log = dir.path().join("access.log");
    args.extend([
        "--listen".into(),
        listen.clone(),
        "--admin".into(),
        admin.clone(),
        "--access-log".into(),
        log.display().to_string(),
    ]);
    let wasm = crate::envoy::wasm_path();
    args.extend([
        "--wasm".into(),
        wasm.display().to_string(),
        "--envoy".into(),
        crate::envoy::envoy_bin().display().to_string(),
    ]);
    let child = Command::new(wasmpack_bin())
        .args(&args)
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting wasmpack run")?;
    let mut run = Run {
        child,
        listen,
        admin,
        log,
    };
    let admin_port: u16 = run.admin.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = run.child.try_wait()? {
            bail!("wasmpack run exited early: {s}");
        }
        if admin_get(admin_port, "/ready")
            .map(|r| r.trim() == "LIVE")
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("Envoy did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Demo { backends, run, dir })
}

/// What the traffic mix did.
#[derive(Debug, Default)]
pub struct Traffic {
    pub canary: BTreeMap<String, u32>,
    pub lines: Vec<String>,
    pub statuses: Vec<u16>,
}

/// The destination the filter chose, from the `x-ai-route` response header.
fn route_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-ai-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Sends the demo's mix of real OpenAI-style requests through Envoy.
pub async fn traffic(d: &Demo) -> Result<Traffic> {
    let client = crate::http_client().timeout(Duration::from_secs(20)).build()?;
    let url = |p: &str| format!("http://{}{p}", d.run.listen);
    let mut t = Traffic::default();
    let post = |path: &str, body: Value, user: Option<&str>| {
        let mut r = client
            .post(url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(u) = user {
            r = r.header("x-user-id", u.to_string());
        }
        r.send()
    };
    let chat = |model: &str, stream: bool| json!({"model": model, "stream": stream, "max_tokens": 12, "messages": [{"role": "user", "content": "Hello!"}]});
    for i in 0..60 {
        let r = post(
            "/v1/chat/completions",
            chat("llama-3-8b", false),
            Some(&format!("user-{i}")),
        )
        .await?;
        t.statuses.push(r.status().as_u16());
        let dest = route_of(&r);
        *t.canary.entry(dest).or_default() += 1;
        r.bytes().await?;
    }
    t.lines.push(format!(
        "60 chat requests for llama-3-8b from 60 users, canary 90/10 -> {:?}",
        t.canary
    ));
    let r = post("/v1/chat/completions", chat("gpt-3.5-turbo", false), Some("alice")).await?;
    let dest = route_of(&r);
    t.statuses.push(r.status().as_u16());
    r.bytes().await?;
    let seen = d
        .backends
        .get(&dest)
        .and_then(|b| b.exchanges().pop())
        .map(|e| e.json()["model"].clone())
        .unwrap_or(Value::Null);
    t.lines.push(format!(
        "alias gpt-3.5-turbo -> {dest}; the backend received model {seen}"
    ));
    for _ in 0..8 {
        let r = post("/v1/chat/completions", chat("gpt-4o", true), None).await?;
        t.statuses.push(r.status().as_u16());
        r.bytes().await?;
    }
    t.lines
        .push("8 streaming chat requests for gpt-4o (SSE; usage injected and counted from the stream)".into());
    for _ in 0..6 {
        let r = post(
            "/v1/embeddings",
            json!({"model": "bge-small", "input": ["a", "b"]}),
            None,
        )
        .await?;
        t.statuses.push(r.status().as_u16());
        r.bytes().await?;
    }
    t.lines.push("6 embeddings requests for bge-small".into());
    let r = post("/v1/chat/completions", chat("no-such-model", false), None).await?;
    let status = r.status().as_u16();
    t.statuses.push(status);
    t.lines.push(format!("unknown model -> {status} {}", r.text().await?));
    Ok(t)
}

/// `wasmpack stats` against the demo's Envoy.
pub fn stats(d: &Demo) -> Result<String> {
    let out = Command::new(wasmpack_bin())
        // HOST:PORT, as `wasmpack run` prints it.
        .args(["stats", "--admin", &d.run.admin.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("wasmpack stats failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
