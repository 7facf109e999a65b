//! `wasmpack playground [--config FILE] [--listen ADDR]`: serves the browser playground (the
//! filter's own core compiled to WebAssembly, see playground/) with a configuration preloaded.
//! A tiny static file server: GET only, files of the built page, and `/config.yaml`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::PlaygroundArgs;
use crate::plugin_config;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/playground_page.rs"));
}

/// Where the page comes from.
#[derive(Debug, Clone)]
enum Page {
    /// Built into this binary (build.rs, from playground/dist when it was built).
    Embedded,
    Dir(PathBuf),
}

fn is_page(d: &Path) -> bool {
    d.join("index.html").is_file() && d.join("pkg/playground_bg.wasm").is_file()
}

/// The page: --dir, else the one built into the binary, else ./playground/dist.
fn page(explicit: Option<&Path>) -> Result<Page> {
    if let Some(d) = explicit {
        if is_page(d) {
            return Ok(Page::Dir(d.to_path_buf()));
        }
        bail!(
            "--dir {}: no built playground there (index.html and pkg/playground_bg.wasm)",
            d.display()
        );
    }
    if !embedded::PAGE.is_empty() {
        return Ok(Page::Embedded);
    }
    let local = PathBuf::from("playground/dist");
    if is_page(&local) {
        return Ok(Page::Dir(local));
    }
    bail!(
        "this wasmpack was built without the playground page, and ./playground/dist is not built: in the \
         project's checkout run scripts/build-playground.sh, then rebuild or reinstall wasmpack (cargo install \
         --path packager), which embeds the page; or pass --dir DIR"
    )
}

fn read_page(page: &Page, rel: &str) -> Option<Vec<u8>> {
    match page {
        Page::Embedded => embedded::PAGE.iter().find(|(p, _)| *p == rel).map(|(_, b)| b.to_vec()),
        Page::Dir(dir) => std::fs::read(dir.join(rel)).ok(),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        Some("yaml") => "text/yaml; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The bytes for a request path: a file of the page (no `..`, no hidden files), or the config.
fn lookup(page: &Page, config: Option<&[u8]>, path: &str) -> Option<(Vec<u8>, &'static str)> {
    let path = path.split(['?', '#']).next().unwrap_or("/");
    if path == "/config.yaml" {
        return config.map(|c| (c.to_vec(), content_type(path)));
    }
    let rel = if path == "/" {
        "index.html"
    } else {
        path.trim_start_matches('/')
    };
    if rel.split('/').any(|p| p.is_empty() || p.starts_with('.')) {
        return None;
    }
    let bytes = read_page(page, rel)?;
    Some((bytes, content_type(rel)))
}

pub async fn run(args: &PlaygroundArgs) -> Result<()> {
    let dir = page(args.dir.as_deref())?;
    let config = match &args.config {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            // A broken file is said here too (the page shows it, with its field path, as well).
            if let Err(e) = plugin_config::load(p) {
                eprintln!("warning: {e:#} (the playground shows the errors)");
            }
            Some(bytes)
        }
        None => None,
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let from = match &dir {
        Page::Embedded => "the page built into wasmpack".to_string(),
        Page::Dir(d) => d.display().to_string(),
    };
    println!("model-router playground: http://{addr}/ ({from}; Ctrl-C stops)");
    loop {
        let (mut socket, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let dir = dir.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut read = 0;
            // The request line and headers; bodies are not expected (GET only).
            while read < buf.len() {
                match socket.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
                if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..read]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let (status, body, ctype) = match (method, lookup(&dir, config.as_deref(), path)) {
                ("GET" | "HEAD", Some((b, t))) => ("200 OK", b, t),
                ("GET" | "HEAD", None) => ("404 Not Found", b"not found\n".to_vec(), "text/plain"),
                _ => ("405 Method Not Allowed", b"GET only\n".to_vec(), "text/plain"),
            };
            let header = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(header.as_bytes()).await;
            if method != "HEAD" {
                let _ = socket.write_all(&body).await;
            }
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_files_and_the_config_are_served() {
        let dir = std::env::temp_dir().join(format!("wasmpack-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(dir.join("index.html"), "<html>").unwrap_or_default();
        let dir = Page::Dir(dir);
        assert_eq!(
            lookup(&dir, None, "/").map(|(_, t)| t),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            lookup(&dir, Some(b"models: []"), "/config.yaml?x=1").map(|(b, _)| b),
            Some(b"models: []".to_vec())
        );
        assert!(lookup(&dir, None, "/config.yaml").is_none());
        assert!(lookup(&dir, None, "/../etc/passwd").is_none());
        assert!(lookup(&dir, None, "/.git/config").is_none());
        if let Page::Dir(d) = dir {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}
