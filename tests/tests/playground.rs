//! The browser playground in a real headless Chromium, driven over WebDriver (chromedriver):
//! the page `wasmpack playground` serves loads the filter's core, shows a configuration error
//! with its field path as it is typed, and decides every preset exactly as `wasmpack route` does
//! (one shared table: the page's own presets). A screenshot is saved for the docs.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port}");
}

fn need(path: &str, how: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.exists(), "{path} is missing: {how}");
    p
}

/// A WebDriver session on chromedriver.
struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Driver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    /// Types into an element as a user does (key events, so the page's input handlers run).
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls until `script` returns true (the page recomputes after a short debounce).
    async fn until(&self, script: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.js(script, json!([])).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

const CONFIG: &str = "stickyHeader: x-user-id\nmodels:\n  - name: llama-3-8b\n    aliases: [gpt-3.5-turbo]\n    upstreamModel: meta-llama/Meta-Llama-3-8B-Instruct\n    destinations:\n      - {name: llama-v1, weight: 90}\n      - {name: llama-v2, weight: 10}\n  - name: bge-small\n    destinations:\n      - {name: embeddings}\n  - name: resnet-50\n    destinations:\n      - {name: triton}\n  - name: claude-internal\n    allow: [\"spiffe://cluster.local/ns/research/*\"]\n    destinations:\n      - {name: anthropic-proxy}\n";

const OTHER: &str = "models:\n  - name: mistral-7b\n    aliases: [gpt-4o]\n    destinations:\n      - {name: mistral-a}\n  - name: e5-large\n    destinations:\n      - {name: e5}\n  - name: yolo\n    destinations:\n      - {name: triton-2}\n  - name: secret\n    allow: [\"spiffe://td/ns/vault/sa/reader\"]\n    destinations:\n      - {name: vault}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_decides_as_the_cli_does() {
    let root = e2e::envoy::repo_root();
    need(
        root.join("playground/dist/pkg/playground_bg.wasm").to_str().unwrap(),
        "build the playground with scripts/build-playground.sh (scripts/test.sh does)",
    );
    let chromium = need("/usr/bin/chromium", "install Debian's chromium (scripts/setup.sh does)");
    let chromedriver = need(
        "/usr/bin/chromedriver",
        "install Debian's chromium-driver (scripts/setup.sh does)",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();

    let page_port = free_port();
    let _server = Killed(
        Command::new(e2e::demo::wasmpack_bin())
            .args(["playground", "--config"])
            .arg(&cfg)
            .args(["--listen", &format!("127.0.0.1:{page_port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(page_port, "wasmpack playground");
    let driver_port = free_port();
    let _driver = Killed(
        Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(driver_port, "chromedriver");
    let http = e2e::http_client().timeout(Duration::from_secs(60)).build().unwrap();
    let base = format!("http://127.0.0.1:{driver_port}");
    let profile = dir.path().join("profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--window-size=1500,1000", format!("--user-data-dir={}", profile.display())]}}}});
    let v: Value = http
        .post(format!("{base}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {v}"))
        .to_string();
    let d = Driver { http, base, session };
    d.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("http://127.0.0.1:{page_port}/")})),
    )
    .await;
    d.until(
        "return document.getElementById('status').textContent === 'ready'",
        "the page to load the core",
    )
    .await;
    // The configuration `--config` gave is the one on the page.
    let shown = d.js("return document.getElementById('config').value", json!([])).await;
    assert_eq!(shown, json!(CONFIG));

    // Typed with a mistake: the error names the field.
    let broken = CONFIG.replace("weight: 10}", "weight: ten}");
    d.type_into("#config", &broken).await;
    d.until(
        "return document.getElementById('config-errors').textContent.includes('models[0].destinations[1].weight')",
        "the error with its path",
    )
    .await;
    let errors = d.text("#config-errors").await;
    assert!(errors.contains("models[0].destinations[1].weight"), "{errors}");
    assert!(errors.contains("(line 8, column 34)"), "placed at the value: {errors}");
    assert!(
        errors.contains(r#"expected a whole number from 0 to 4294967295, found "ten""#),
        "in `wasmpack check`'s words: {errors}"
    );
    // A semantic error (valid YAML, a weight out of range) is placed too, as `wasmpack check`
    // places it.
    let negative = CONFIG.replace("weight: 90}", "weight: -1}");
    d.type_into("#config", &negative).await;
    d.until(
        "return document.getElementById('config-errors').textContent.includes('models[0].destinations[0].weight')",
        "the semantic error with its path",
    )
    .await;
    let errors = d.text("#config-errors").await;
    assert!(errors.contains("(line 7, column 34)"), "placed at the value: {errors}");
    // Fixed: the error goes, the decision comes back.
    d.type_into("#config", CONFIG).await;
    d.until(
        "return document.getElementById('config-errors').textContent === ''",
        "the error to clear",
    )
    .await;

    // Every preset, as the page decides it and as `wasmpack route --seed 42` does.
    let presets = d.js("return window.playgroundPresets", json!([])).await;
    let presets = presets.as_array().unwrap().clone();
    assert!(presets.len() >= 7);
    let mut outcomes = Vec::new();
    for p in &presets {
        let id = p["id"].as_str().unwrap();
        d.js(
            "document.querySelector(`#presets button[data-preset='${arguments[0]}']`).click()",
            json!([id]),
        )
        .await;
        let text = d
            .js("return document.getElementById('decision').textContent", json!([]))
            .await;
        let page: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        let body = dir.path().join(format!("{id}.json"));
        std::fs::write(&body, p["body"].as_str().unwrap()).unwrap();
        let mut cmd = Command::new(e2e::demo::wasmpack_bin());
        cmd.args(["route", "--config"])
            .arg(&cfg)
            .args([
                "--method",
                p["method"].as_str().unwrap(),
                "--path",
                p["path"].as_str().unwrap(),
                "--seed",
                "42",
                "--body",
            ])
            .arg(&body);
        for line in p["headers"].as_str().unwrap().lines().filter(|l| l.contains(':')) {
            cmd.args(["-H", line]);
        }
        if let Some(identity) = p["identity"].as_str() {
            cmd.args(["--peer-identity", identity]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(page, cli, "preset {id}: the page and `wasmpack route` disagree");
        outcomes.push((id.to_string(), page["outcome"].clone(), page["reject"]["code"].clone()));
    }
    // The table covers what it should: routes, a path model, refusals.
    let get = |id: &str| outcomes.iter().find(|(i, _, _)| i == id).cloned().unwrap();
    assert_eq!(get("chat").1, "routed");
    assert_eq!(get("kserve").1, "routed");
    assert_eq!(get("duplicate").2, "duplicate_model");
    assert_eq!(get("anthropic").1, "routed", "the research identity may use the model");

    // The split chart: 90/10 within a few percent over 1000 sticky callers.
    d.js(
        "document.querySelector('#presets button[data-preset=\"chat\"]').click()",
        json!([]),
    )
    .await;
    let share = d
        .js(
            "const b = document.querySelector('#split .bar[data-destination=\"llama-v1\"] span:last-child'); return b ? b.textContent : ''",
            json!([]),
        )
        .await;
    let pct: f64 = share.as_str().unwrap().trim_end_matches('%').parse().unwrap();
    assert!((85.0..=95.0).contains(&pct), "llama-v1 got {pct}%");

    // The split of an allow-listed model follows the caller identity typed in (issue #31).
    d.js(
        "const s = document.getElementById('split-model'); s.value = 'claude-internal'; s.dispatchEvent(new Event('input'))",
        json!([]),
    )
    .await;
    d.type_into("#identity", "spiffe://cluster.local/ns/research/sa/notebook")
        .await;
    d.until(
        "return !!document.querySelector('#split .bar[data-destination=\"anthropic-proxy\"]') && document.querySelectorAll('#split .bar').length === 1",
        "the split of an allowed caller to reach anthropic-proxy only",
    )
    .await;
    d.type_into("#identity", "spiffe://cluster.local/ns/sales/sa/crm").await;
    d.until(
        "return !document.querySelector('#split .bar[data-destination=\"anthropic-proxy\"]') && document.querySelectorAll('#split .bar').length === 1",
        "the split of a caller outside the allow list to be refused",
    )
    .await;
    let denied = d.text("#split").await;
    assert!(denied.contains("denied"), "{denied}");
    // Back to the example's first preset and model for the screenshot.
    d.js(
        "const s = document.getElementById('split-model'); s.value = 'llama-3-8b'; document.querySelector('#presets button[data-preset=\"chat\"]').click()",
        json!([]),
    )
    .await;

    // A screenshot for the docs (docs/playground.png is refreshed with UPDATE_SCREENSHOT=1).
    let png = d.call(reqwest::Method::GET, "/screenshot", None).await;
    let bytes = base64_decode(png.as_str().unwrap());
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    let target = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        root.join("docs/playground.png")
    } else {
        dir.path().join("playground.png")
    };
    std::fs::write(&target, &bytes).unwrap();

    // Another configuration: the presets name its models, not the example's (issue #31).
    d.type_into("#config", OTHER).await;
    d.until(
        "return JSON.stringify(window.playgroundPresets).includes('gpt-4o')",
        "the presets to follow the configuration",
    )
    .await;
    let presets = d.js("return window.playgroundPresets", json!([])).await;
    let text = presets.to_string();
    for old in [
        "llama-3-8b",
        "gpt-3.5-turbo",
        "bge-small",
        "resnet-50",
        "claude-internal",
    ] {
        assert!(!text.contains(old), "a preset still names {old}: {text}");
    }
    for (id, verdict) in [
        ("chat", "routed to mistral-a (model mistral-7b)"),
        ("embeddings", "routed to e5 (model e5-large)"),
        ("kserve", "routed to triton-2 (model yolo)"),
        ("anthropic", "routed to vault (model secret)"),
    ] {
        d.js(
            "document.querySelector(`#presets button[data-preset='${arguments[0]}']`).click()",
            json!([id]),
        )
        .await;
        assert_eq!(
            d.text("#verdict").await,
            verdict,
            "preset {id} on the other configuration"
        );
    }
    d.call(reqwest::Method::DELETE, "", None).await;
}

/// Standard base64 (the screenshot); no dependency for one use.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
