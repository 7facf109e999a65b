//! Checks that a file is a proxy-wasm module Envoy can load: valid Wasm, a proxy-wasm ABI version
//! export, an allocator export and an exported memory.

use sha2::{Digest, Sha256};
use wasmparser::{ExternalKind, Parser, Payload, Validator, WasmFeatures};

/// ABI version exports Envoy recognises (proxy-wasm spec).
pub const ABI_EXPORTS: &[&str] = &[
    "proxy_abi_version_0_2_1",
    "proxy_abi_version_0_2_0",
    "proxy_abi_version_0_1_0",
];
/// Allocators the host calls to hand memory to the module.
pub const ALLOCATOR_EXPORTS: &[&str] = &["proxy_on_memory_allocate", "malloc"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInfo {
    pub size: usize,
    /// `sha256:<hex>` of the module bytes.
    pub sha256: String,
    pub abi_versions: Vec<String>,
    pub allocator: String,
    pub exports: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("not a WebAssembly module (no `\\0asm` header)")]
    NotWasm,
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error("no proxy-wasm ABI version export (expected one of {})", ABI_EXPORTS.join(", "))]
    NoAbi,
    #[error("no allocator export (expected `proxy_on_memory_allocate` or `malloc`)")]
    NoAllocator,
    #[error("the module does not export its memory")]
    NoMemory,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Validates `bytes` and reports what Envoy needs from a proxy-wasm module.
pub fn check(bytes: &[u8]) -> Result<ModuleInfo, ModuleError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(ModuleError::NotWasm);
    }
    // rustc's wasm32-wasip1 output uses these post-MVP features; V8 supports them all.
    let features = WasmFeatures::default();
    Validator::new_with_features(features)
        .validate_all(bytes)
        .map_err(|e| ModuleError::Invalid(e.to_string()))?;
    let mut exports = Vec::new();
    let mut memory_exported = false;
    for payload in Parser::new(0).parse_all(bytes) {
        if let Ok(Payload::ExportSection(reader)) = payload {
            for export in reader.into_iter().flatten() {
                if export.kind == ExternalKind::Memory {
                    memory_exported = true;
                }
                if export.kind == ExternalKind::Func {
                    exports.push(export.name.to_string());
                }
            }
        }
    }
    let abi_versions: Vec<String> = ABI_EXPORTS
        .iter()
        .filter(|a| exports.iter().any(|e| e == *a))
        .map(|a| a.to_string())
        .collect();
    if abi_versions.is_empty() {
        return Err(ModuleError::NoAbi);
    }
    let allocator = ALLOCATOR_EXPORTS
        .iter()
        .find(|a| exports.iter().any(|e| e == *a))
        .ok_or(ModuleError::NoAllocator)?
        .to_string();
    if !memory_exported {
        return Err(ModuleError::NoMemory);
    }
    exports.sort();
    Ok(ModuleInfo {
        size: bytes.len(),
        sha256: digest(bytes),
        abi_versions,
        allocator,
        exports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled module: exports the given functions (all `() -> ()`) and maybe memory.
    pub fn module(funcs: &[&str], memory: bool) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let section = |m: &mut Vec<u8>, id: u8, body: Vec<u8>| {
            m.push(id);
            m.push(body.len() as u8);
            m.extend(body);
        };
        section(&mut m, 1, vec![1, 0x60, 0, 0]); // one type: () -> ()
        let mut f = vec![funcs.len() as u8];
        f.extend(std::iter::repeat_n(0u8, funcs.len()));
        section(&mut m, 3, f);
        if memory {
            section(&mut m, 5, vec![1, 0, 1]);
        }
        let mut e = vec![(funcs.len() + usize::from(memory)) as u8];
        for (i, name) in funcs.iter().enumerate() {
            e.push(name.len() as u8);
            e.extend(name.as_bytes());
            e.extend([0, i as u8]);
        }
        if memory {
            e.extend([6]);
            e.extend(b"memory");
            e.extend([2, 0]);
        }
        section(&mut m, 7, e);
        let mut code = vec![funcs.len() as u8];
        for _ in funcs {
            code.extend([2, 0, 0x0b]);
        }
        section(&mut m, 10, code);
        m
    }

    #[test]
    fn accepts_a_proxy_wasm_module() {
        let m = module(&["proxy_abi_version_0_2_1", "malloc", "proxy_on_request_headers"], true);
        let info = check(&m).unwrap();
        assert_eq!(info.abi_versions, vec!["proxy_abi_version_0_2_1"]);
        assert_eq!(info.allocator, "malloc");
        assert_eq!(info.size, m.len());
        assert!(info.sha256.starts_with("sha256:") && info.sha256.len() == 71);
    }

    #[test]
    fn rejects_what_envoy_would() {
        assert_eq!(check(b"hello"), Err(ModuleError::NotWasm));
        assert!(matches!(
            check(b"\0asm\x01\0\0\0\x01\xff"),
            Err(ModuleError::Invalid(_))
        ));
        assert_eq!(check(&module(&["malloc"], true)), Err(ModuleError::NoAbi));
        assert_eq!(
            check(&module(&["proxy_abi_version_0_2_1"], true)),
            Err(ModuleError::NoAllocator)
        );
        assert_eq!(
            check(&module(&["proxy_abi_version_0_2_1", "malloc"], false)),
            Err(ModuleError::NoMemory)
        );
    }
}
