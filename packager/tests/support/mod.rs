//! Real components for the CLI tests: Debian's `docker-registry` (CNCF distribution 2.8) on
//! 127.0.0.1, plain or with TLS and htpasswd (bcrypt) auth, started and stopped by the test.

#![allow(dead_code, clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "ci-bot";
pub const PASSWORD: &str = "s3cret-pass";

fn need(bin: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("`{bin}` not found: install it with `apt-get install {package}` (scripts/setup.sh does)");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub tls: bool,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn plain() -> Registry {
        Registry::start(false)
    }

    /// TLS with a self-signed certificate for 127.0.0.1, and htpasswd (bcrypt) basic auth.
    pub fn tls_auth() -> Registry {
        Registry::start(true)
    }

    fn start(tls: bool) -> Registry {
        let bin = need("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            d.join("data").display()
        );
        if tls {
            let openssl = need("openssl", "openssl");
            let ok = Command::new(openssl)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .args([
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                ])
                .arg("-keyout")
                .arg(d.join("key.pem"))
                .arg("-out")
                .arg(d.join("cert.pem"))
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl could not make a certificate");
            let htpasswd = need("htpasswd", "apache2-utils");
            let out = Command::new(htpasswd).args(["-Bbn", USER, PASSWORD]).output().unwrap();
            assert!(out.status.success());
            std::fs::write(d.join("htpasswd"), out.stdout).unwrap();
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: wasmpack-test\n    path: {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display(),
                d.join("htpasswd").display()
            ));
        }
        std::fs::write(d.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry { child, port, dir, tls };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not start:\n{}",
            std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Flags wasmpack needs to reach this registry with the right credentials.
    pub fn flags(&self) -> Vec<String> {
        if self.tls {
            vec![
                "--ca-file".into(),
                self.ca_file().display().to_string(),
                "--username".into(),
                USER.into(),
                "--password-stdin".into(),
            ]
        } else {
            vec!["--plain-http".into()]
        }
    }

    /// skopeo (an independent client) arguments for this registry.
    pub fn skopeo(&self, args: &[&str]) -> Output {
        let skopeo = need("skopeo", "skopeo");
        let mut c = Command::new(skopeo);
        c.arg(args[0]);
        let tls_flag = if args[0] == "copy" {
            "--src-tls-verify=false"
        } else {
            "--tls-verify=false"
        };
        c.arg(tls_flag);
        if self.tls {
            let creds = if args[0] == "copy" { "--src-creds" } else { "--creds" };
            c.arg(creds).arg(format!("{USER}:{PASSWORD}"));
        }
        c.args(&args[1..]);
        c.output().unwrap()
    }
}

/// Runs the wasmpack binary; `stdin` is written to its standard input.
pub fn wasmpack(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmpack"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The filter built by the test script (scripts/test.sh builds it first).
pub fn filter_wasm() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("target"));
    let p = target.join("wasm32-wasip1/release/model_router.wasm");
    std::fs::read(&p).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `cargo build -p model-router --release --target wasm32-wasip1`",
            p.display()
        )
    })
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
pub mod kube_api;
