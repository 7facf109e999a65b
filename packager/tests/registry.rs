//! `wasmpack push/pull/inspect` against a real OCI registry (Debian's docker-registry), plain and
//! with TLS + htpasswd auth, cross-checked with skopeo.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::*;

fn write_module(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let wasm = filter_wasm();
    let p = dir.join("model_router.wasm");
    std::fs::write(&p, &wasm).unwrap();
    (p, wasm)
}

fn push(reg: &Registry, file: &str, reference: &str, extra: &[&str]) -> std::process::Output {
    let flags = reg.flags();
    let mut args = vec!["push", file, reference];
    args.extend(flags.iter().map(String::as_str));
    args.extend(extra);
    wasmpack(&args, PASSWORD, &[("DOCKER_CONFIG", "/nonexistent")])
}

#[test]
fn round_trip_both_layouts_on_a_plain_registry() {
    let reg = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (file, wasm) = write_module(tmp.path());
    let file = file.to_str().unwrap();
    for (format, expect_layout) in [("image", "oci (compat)"), ("oci", "oci (wasm layer)")] {
        let reference = reg.reference(&format!("filters/model-router:{format}"));
        let out = push(
            &reg,
            file,
            &reference,
            &["--format", format, "--tag", &format!("{format}-extra")],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let so = stdout(&out);
        let digest = so.lines().last().unwrap().to_string();
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{so}");
        assert!(so.contains(expect_layout), "{so}");

        // An independent client sees the same manifest, whose sha256 is the printed digest.
        let raw = reg.skopeo(&["inspect", "--raw", &format!("docker://{reference}")]);
        assert!(raw.status.success(), "skopeo: {}", stderr(&raw));
        assert_eq!(sha256(&raw.stdout), digest);
        let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        assert!(
            !String::from_utf8_lossy(&raw.stdout).contains("application/vnd.wasm."),
            "never the crate's media type"
        );
        if format == "image" {
            assert_eq!(m["layers"].as_array().unwrap().len(), 1);
            assert_eq!(
                m["layers"][0]["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
        } else {
            assert_eq!(m["layers"].as_array().unwrap().len(), 2);
            assert_eq!(
                m["layers"][1]["mediaType"],
                "application/vnd.module.wasm.content.layer.v1+wasm"
            );
        }
        assert!(m["annotations"]["org.opencontainers.image.created"].is_string());
        // The extra tag points at the same manifest.
        let extra = reg.skopeo(&[
            "inspect",
            "--raw",
            &format!(
                "docker://{}",
                reg.reference(&format!("filters/model-router:{format}-extra"))
            ),
        ]);
        assert_eq!(extra.stdout, raw.stdout);

        // skopeo copies it out, and the layer holds our module.
        let dest = tmp.path().join(format!("copy-{format}"));
        let cp = reg.skopeo(&[
            "copy",
            &format!("docker://{reference}"),
            &format!("dir:{}", dest.display()),
        ]);
        assert!(cp.status.success(), "skopeo copy: {}", stderr(&cp));
        let layer_digest = m["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let layer = std::fs::read(dest.join(&layer_digest)).unwrap();
        if format == "image" {
            let mut tar = tar_entries(&layer);
            assert_eq!(tar.remove("plugin.wasm").unwrap(), wasm);
        } else {
            assert_eq!(layer, wasm);
        }

        // pull, by tag and by digest, gives the same bytes back.
        for r in [
            reference.clone(),
            format!("{}@{digest}", reg.reference("filters/model-router")),
        ] {
            let outf = tmp.path().join("pulled.wasm");
            let o = wasmpack(&["pull", &r, "-o", outf.to_str().unwrap(), "--plain-http"], "", &[]);
            assert!(o.status.success(), "{}", stderr(&o));
            assert_eq!(std::fs::read(&outf).unwrap(), wasm);
        }

        let o = wasmpack(&["inspect", &reference, "--plain-http"], "", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains("Istio can load it: yes"), "{text}");
        assert!(text.contains(&digest), "{text}");
        assert!(text.contains(&sha256(&wasm)), "{text}");
        assert!(text.contains("proxy_abi_version_0_2_1"), "{text}");
    }
}

fn tar_entries(tgz: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut out = std::collections::BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut v = Vec::new();
        e.read_to_end(&mut v).unwrap();
        out.insert(name, v);
    }
    out
}

#[test]
fn tls_with_basic_auth_and_docker_config() {
    let reg = Registry::tls_auth();
    let tmp = tempfile::tempdir().unwrap();
    let (file, wasm) = write_module(tmp.path());
    let file = file.to_str().unwrap();
    let reference = reg.reference("ai/model-router:1.0.0");
    let out = push(&reg, file, &reference, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out).lines().last().unwrap().to_string();
    let raw = reg.skopeo(&["inspect", "--raw", &format!("docker://{reference}")]);
    assert!(raw.status.success(), "{}", stderr(&raw));
    assert_eq!(sha256(&raw.stdout), digest);

    // Credentials from a docker config.json (auths), no flags.
    let cfg = tmp.path().join("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    std::fs::write(
        cfg.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let outf = tmp.path().join("pulled.wasm");
    let ca = reg.ca_file();
    let o = wasmpack(
        &[
            "pull",
            &reference,
            "-o",
            outf.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        "",
        &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&outf).unwrap(), wasm);
    // `-o -`: the module on standard output, the report on standard error.
    let o = wasmpack(
        &["pull", &reference, "-o", "-", "--ca-file", ca.to_str().unwrap()],
        "",
        &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, wasm);
    assert!(stderr(&o).contains("to standard output"), "{}", stderr(&o));
    assert!(!tmp.path().join("-").exists() && !std::path::Path::new("-").exists());
}

/// A failure: exit 1, one line on stderr containing `needle`, and nothing under the tag.
fn assert_fails(out: &std::process::Output, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    let err = stderr(out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        err.trim_end().lines().filter(|l| !l.starts_with("warning:")).count(),
        1,
        "one line: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

fn nothing_under(reg: &Registry, reference: &str) {
    let raw = reg.skopeo(&["inspect", "--raw", &format!("docker://{reference}")]);
    assert!(!raw.status.success(), "something was pushed to {reference}");
}

#[test]
fn failures_are_one_clear_line_and_push_nothing() {
    let reg = Registry::tls_auth();
    let tmp = tempfile::tempdir().unwrap();
    let (file, _) = write_module(tmp.path());
    let file = file.to_str().unwrap();
    let reference = reg.reference("ai/model-router:bad");
    let ca = reg.ca_file();
    let ca = ca.to_str().unwrap();

    // Wrong password.
    let o = wasmpack(
        &[
            "push",
            file,
            &reference,
            "--ca-file",
            ca,
            "-u",
            USER,
            "--password-stdin",
        ],
        "wrong",
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_fails(&o, "credentials refused");
    // No credentials at all: said so, not that they were refused.
    let o = wasmpack(
        &["push", file, &reference, "--ca-file", ca],
        "",
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_fails(&o, "no credentials were sent");
    assert!(!stderr(&o).contains("credentials refused"), "{}", stderr(&o));
    // Untrusted certificate.
    let o = wasmpack(
        &["push", file, &reference, "-u", USER, "--password-stdin"],
        PASSWORD,
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_fails(&o, "--ca-file");
    assert!(stderr(&o).contains("not trusted"), "{}", stderr(&o));
    nothing_under(&reg, &reference);
    // A name the certificate does not list (it names 127.0.0.1 only): --ca-file is no advice.
    let by_name = reference.replacen("127.0.0.1", "localhost", 1);
    let ca = reg.ca_file();
    let o = wasmpack(
        &[
            "push",
            file,
            &by_name,
            "-u",
            USER,
            "--password-stdin",
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        PASSWORD,
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_fails(&o, "not valid for the name `localhost");
    assert!(!stderr(&o).contains("pass --ca-file"), "{}", stderr(&o));
    // TLS to a plain-HTTP registry.
    let plain = Registry::plain();
    let o = wasmpack(
        &["push", file, &plain.reference("x/y:1")],
        "",
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_fails(&o, "--plain-http");

    // Not Wasm: refused before any network I/O (the registry address is unreachable).
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho not wasm\n").unwrap();
    let o = wasmpack(
        &["push", junk.to_str().unwrap(), "127.0.0.1:1/x:y", "--plain-http"],
        "",
        &[],
    );
    assert_fails(&o, "not a proxy-wasm module");
    // Wasm without the proxy-wasm ABI.
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    let o = wasmpack(
        &["push", junk.to_str().unwrap(), "127.0.0.1:1/x:y", "--plain-http"],
        "",
        &[],
    );
    assert_fails(&o, "ABI");

    // Unreachable: fails within seconds.
    let started = Instant::now();
    let o = wasmpack(
        &["push", file, &format!("127.0.0.1:{}/x:y", free_port()), "--plain-http"],
        "",
        &[],
    );
    assert_fails(&o, "cannot reach");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// A registry that answers every request but `GET /v2/` with 500.
fn broken_registry() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let (status, body) = if head.starts_with("GET /v2/ ") {
                        ("200 OK", "{}".to_string())
                    } else {
                        (
                            "500 Internal Server Error",
                            r#"{"errors":[{"code":"UNKNOWN","message":"storage backend down"}]}"#.to_string(),
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_registry_answering_500() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, _) = write_module(tmp.path());
    let port = broken_registry();
    let o = wasmpack(
        &[
            "push",
            file.to_str().unwrap(),
            &format!("127.0.0.1:{port}/ai/model-router:x"),
            "--plain-http",
        ],
        "",
        &[],
    );
    assert_fails(&o, "500");
    let o = wasmpack(
        &[
            "inspect",
            &format!("127.0.0.1:{port}/ai/model-router:x"),
            "--plain-http",
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["push"][..],
        &["push", "a.wasm", "r", "--format", "zip"],
        &["frobnicate"],
        &["push", "a", "r", "--username", "x"],
    ] {
        let o = wasmpack(args, "", &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn docker_v2_layout_and_insecure() {
    // Istio's third layout: a Docker v2 schema 2 manifest (skopeo converts our image to it).
    let reg = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (file, wasm) = write_module(tmp.path());
    let src = reg.reference("filters/model-router:oci");
    let o = push(&reg, file.to_str().unwrap(), &src, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dst = reg.reference("filters/model-router:docker");
    let cp = reg.skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{src}"),
        &format!("docker://{dst}"),
    ]);
    assert!(cp.status.success(), "skopeo copy: {}", stderr(&cp));
    let raw = reg.skopeo(&["inspect", "--raw", &format!("docker://{dst}")]);
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let out = tmp.path().join("from-docker.wasm");
    let o = wasmpack(&["pull", &dst, "-o", out.to_str().unwrap(), "--plain-http"], "", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("docker layout"), "{}", stdout(&o));
    assert_eq!(std::fs::read(&out).unwrap(), wasm);
    let o = wasmpack(&["inspect", &dst, "--plain-http"], "", &[]);
    assert!(stdout(&o).contains("Istio can load it: yes"), "{}", stdout(&o));

    // --insecure reaches a TLS registry without trusting its certificate, and says so.
    let tls = Registry::tls_auth();
    let r = tls.reference("ai/model-router:insecure");
    let o = wasmpack(
        &[
            "push",
            file.to_str().unwrap(),
            &r,
            "--insecure",
            "-u",
            USER,
            "--password-stdin",
        ],
        PASSWORD,
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: --insecure"), "{}", stderr(&o));
}

/// The same module pushed twice, a second apart, to two tags: one manifest digest, as an
/// independent client (skopeo) reads it. SOURCE_DATE_EPOCH still sets `created`.
#[test]
fn pushes_are_reproducible() {
    let reg = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (file, _) = write_module(tmp.path());
    let file = file.to_str().unwrap();
    let mut digests = Vec::new();
    for tag in ["a", "b"] {
        let reference = reg.reference(&format!("filters/repro:{tag}"));
        let out = push(&reg, file, &reference, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let raw = reg.skopeo(&["inspect", "--raw", &format!("docker://{reference}")]);
        assert!(raw.status.success(), "{}", stderr(&raw));
        digests.push(sha256(&raw.stdout));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(digests[0], digests[1]);
    let reference = reg.reference("filters/repro:dated");
    let flags = reg.flags();
    let mut args = vec!["push", file, reference.as_str()];
    args.extend(flags.iter().map(String::as_str));
    let out = wasmpack(
        &args,
        PASSWORD,
        &[("DOCKER_CONFIG", "/nonexistent"), ("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = reg.skopeo(&["inspect", "--raw", &format!("docker://{reference}")]);
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_ne!(sha256(&raw.stdout), digests[0]);
}
