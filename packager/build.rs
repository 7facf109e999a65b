//! Embeds the git commit the CLI was built from (for `wasmpack --version`), and the built
//! playground page (playground/dist, made by scripts/build-playground.sh) when it is there, so
//! that an installed `wasmpack playground` needs no source tree.

use std::path::{Path, PathBuf};

/// Every file under `dir`, relative paths with `/`.
fn files(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, base, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            out.push((rel, p.clone()));
        }
    }
}

fn embed_playground() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = manifest.join("../playground/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut found = Vec::new();
    if dist.join("index.html").is_file() && dist.join("pkg/playground_bg.wasm").is_file() {
        files(&dist, &dist, &mut found);
    }
    if !found.is_empty() {
        warn_if_stale(&manifest, &dist);
    }
    let mut code =
        String::from("/// The built playground page: (path, bytes).\npub static PAGE: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &found {
        println!("cargo:rerun-if-changed={}", path.display());
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("playground_page.rs");
    if let Err(e) = std::fs::write(&out, code) {
        println!("cargo:warning=writing {}: {e}", out.display());
    }
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut all = Vec::new();
    files(dir, dir, &mut all);
    all.iter()
        .filter_map(|(_, p)| p.metadata().and_then(|m| m.modified()).ok())
        .max()
}

/// A page built before its sources changed would be embedded as it is: say so, with the fix.
fn warn_if_stale(manifest: &Path, dist: &Path) {
    let sources = [
        "../playground/src",
        "../playground/web",
        "../config-yaml/src",
        "../filter/src",
    ];
    for s in sources {
        println!("cargo:rerun-if-changed={}", manifest.join(s).display());
    }
    let built = newest(&dist.join("pkg"));
    let changed = sources.iter().filter_map(|s| newest(&manifest.join(s))).max();
    if let (Some(built), Some(changed)) = (built, changed) {
        if changed > built {
            println!(
                "cargo:warning=playground/dist is older than its sources: `wasmpack playground` will serve \
                 the old page; run scripts/build-playground.sh, then build wasmpack again"
            );
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    embed_playground();
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WASMPACK_GIT_COMMIT={commit}");
    // Built again when the commit changes: HEAD and the current branch's ref, where git keeps them
    // for this checkout (a `git worktree` has its own HEAD, and the main checkout's refs); not when
    // another branch moves. Only paths that exist: cargo reruns a build script that names a missing
    // one on every build, and so rebuilds wasmpack every time.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(p) = git(&["rev-parse", "--git-path", name]).filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
