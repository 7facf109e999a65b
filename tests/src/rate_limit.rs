//! The real rate limit stack for global limits: Debian's `redis-server` and Kuadrant's
//! `limitador-server`, started on free loopback ports and stopped when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::envoy::repo_root;
use crate::process::{free_port, wait_for_port, Proc};

pub struct Redis {
    proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let bin = which("redis-server").unwrap_or_else(|| {
            panic!("redis-server is missing: install Debian's redis-server (`apt-get install redis-server`; scripts/setup.sh does it)")
        });
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let log = dir.path().join("redis.log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server: {e}"));
        wait_for_port(port, "redis-server", &mut child, &log);
        Redis {
            proc: Proc(child),
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        let _ = &self.proc;
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `$LIMITADOR_BIN`, else `../shared/bin/limitador-server` next to the repository.
pub fn limitador_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LIMITADOR_BIN") {
        return PathBuf::from(p);
    }
    let shared = repo_root().join("../shared/bin/limitador-server");
    if shared.is_file() {
        return shared;
    }
    if let Some(p) = which("limitador-server") {
        return p;
    }
    panic!(
        "limitador-server is missing: set LIMITADOR_BIN, or install it with \
         `cargo install --git https://github.com/Kuadrant/limitador limitador-server` \
         (or use its container image, quay.io/kuadrant/limitador)"
    )
}

pub struct Limitador {
    proc: Option<Proc>,
    /// Its gRPC port (Envoy RLS and Kuadrant's check/report API).
    pub rls_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Limitador {
    /// Starts `limitador-server` with `limits_yaml` as its limits file, counting in Redis.
    pub fn start(limits_yaml: &str, redis: &Redis) -> Limitador {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let limits = dir.path().join("limits.yaml");
        std::fs::write(&limits, limits_yaml).unwrap_or_else(|e| panic!("{e}"));
        let (rls_port, http_port) = (free_port(), free_port());
        let log = dir.path().join("limitador.log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(limitador_bin())
            .args(["--rls-ip", "127.0.0.1", "--rls-port", &rls_port.to_string()])
            .args(["--http-ip", "127.0.0.1", "--http-port", &http_port.to_string()])
            .arg(&limits)
            .args(["redis", &redis.url()])
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting limitador-server: {e}"));
        wait_for_port(rls_port, "limitador-server", &mut child, &log);
        Limitador {
            proc: Some(Proc(child)),
            rls_port,
            http_port,
            log,
            _dir: dir,
        }
    }

    /// Stops it (the port then refuses connections).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// The limits it loaded, as its HTTP API reports them.
    pub fn limits(&self, namespace: &str) -> String {
        let url = format!("/limits/{namespace}");
        crate::envoy::admin_get(self.http_port, &url).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A gRPC "service" that accepts connections and never answers: a hung rate limit service.
pub struct Blackhole {
    pub port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                held.push(s);
            }
        });
        Blackhole { port, _thread: thread }
    }
}
