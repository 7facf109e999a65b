//! The OCI image layouts Istio's agent loads (istio/istio pkg/wasm/imagefetcher.go), built and
//! checked here without any network.
//!
//! * `Image` (default): an OCI image manifest whose last layer is
//!   `application/vnd.oci.image.layer.v1.tar+gzip` holding `plugin.wasm`. Istio and Envoy Gateway
//!   both load it, and ordinary registry tools (skopeo, crane, docker) see a normal image.
//! * `Oci`: exactly two layers, one `application/vnd.module.wasm.content.layer.v1+wasm` holding the
//!   raw module (the solo.io "oci" variant), plus a small metadata layer.
//!
//! Never `oci_client::manifest::WASM_LAYER_MEDIA_TYPE` (`application/vnd.wasm…`): Istio rejects it.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{json, Value};

use crate::module::digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_TGZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const WASM_CONFIG_LAYER: &str = "application/vnd.module.wasm.config.v1+json";
pub const PLUGIN_FILE: &str = "plugin.wasm";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCI image, last layer tar+gzip holding plugin.wasm (Istio, Envoy Gateway, any registry tool)
    Image,
    /// Two layers, one raw `application/vnd.module.wasm.content.layer.v1+wasm` (solo.io variant)
    Oci,
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub data: Vec<u8>,
    pub digest: String,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: digest(&data),
            data,
        }
    }

    fn descriptor(&self, annotations: Option<Value>) -> Value {
        let mut d = json!({"mediaType": self.media_type, "digest": self.digest, "size": self.data.len()});
        if let (Some(a), Some(o)) = (annotations, d.as_object_mut()) {
            o.insert("annotations".into(), a);
        }
        d
    }
}

/// An image ready to push: blobs first, then the manifest bytes (whose sha256 is the digest
/// Istio's `WasmPlugin.sha256` wants).
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// Builds the image. Everything is deterministic given the inputs (tar mtime = `created`).
pub fn build(wasm: &[u8], format: Format, annotations: &BTreeMap<String, String>, created_unix: i64) -> Image {
    let created = annotations.get("org.opencontainers.image.created").cloned();
    let (config, layers) = match format {
        Format::Image => {
            let tar = tar_with_plugin(wasm, created_unix);
            let diff_id = digest(&tar);
            let layer = Blob::new(OCI_LAYER_TGZ, gzip(&tar));
            let mut cfg = json!({
                "architecture": "wasm",
                "os": "wasip1",
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "config": {},
            });
            if let (Some(c), Some(o)) = (created, cfg.as_object_mut()) {
                o.insert("created".into(), json!(c));
            }
            (Blob::new(OCI_CONFIG, json_bytes(&cfg)), vec![layer])
        }
        Format::Oci => {
            let meta = json!({"type": "envoy_proxy"});
            (
                Blob::new(OCI_CONFIG, b"{}".to_vec()),
                vec![
                    Blob::new(WASM_CONFIG_LAYER, json_bytes(&meta)),
                    Blob::new(WASM_CONTENT_LAYER, wasm.to_vec()),
                ],
            )
        }
    };
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            let title =
                (l.media_type != WASM_CONFIG_LAYER).then(|| json!({"org.opencontainers.image.title": PLUGIN_FILE}));
            l.descriptor(title)
        })
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(None),
        "layers": layer_descs,
    });
    if !annotations.is_empty() {
        if let Some(o) = manifest.as_object_mut() {
            o.insert("annotations".into(), json!(annotations));
        }
    }
    let manifest = json_bytes(&manifest);
    Image {
        manifest_digest: digest(&manifest),
        config,
        layers,
        manifest,
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn tar_with_plugin(wasm: &[u8], mtime: i64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(wasm.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    let _ = h.set_path(PLUGIN_FILE);
    h.set_cksum();
    let _ = b.append(&h, wasm);
    b.into_inner().unwrap_or_default()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    // GzEncoder writes mtime 0 and no file name: the output depends on the input only.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// What a manifest looks like to Istio's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `docker`, `oci (compat)`, or `oci (wasm layer)`.
    pub format: &'static str,
    /// Index of the layer holding the module.
    pub layer: usize,
}

#[derive(Debug, Clone)]
pub struct LayerDesc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

pub fn manifest_media_type(manifest: &Value) -> &str {
    manifest["mediaType"].as_str().unwrap_or("")
}

pub fn layers(manifest: &Value) -> Vec<LayerDesc> {
    manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| LayerDesc {
            media_type: l["mediaType"].as_str().unwrap_or("").to_string(),
            digest: l["digest"].as_str().unwrap_or("").to_string(),
            size: l["size"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Istio's rules, in Istio's order. `Err` explains every reason it would refuse the image.
pub fn istio_layout(manifest: &Value) -> Result<Layout, String> {
    let layers = layers(manifest);
    let last = layers.last();
    if manifest_media_type(manifest) == DOCKER_MANIFEST {
        return match last {
            Some(l) if l.media_type == DOCKER_LAYER_TGZ => Ok(Layout {
                format: "docker",
                layer: layers.len() - 1,
            }),
            Some(l) => Err(format!(
                "a Docker manifest's last layer must be {DOCKER_LAYER_TGZ}, not {}",
                l.media_type
            )),
            None => Err("the image has no layers".into()),
        };
    }
    let compat = match last {
        Some(l) if l.media_type == OCI_LAYER_TGZ => {
            return Ok(Layout {
                format: "oci (compat)",
                layer: layers.len() - 1,
            })
        }
        Some(l) => format!("last layer is {} (compat variant needs {OCI_LAYER_TGZ})", l.media_type),
        None => "the image has no layers".to_string(),
    };
    if layers.len() != 2 {
        return Err(format!(
            "{compat}; and it has {} layers (the wasm-layer variant needs exactly 2)",
            layers.len()
        ));
    }
    match layers.iter().position(|l| l.media_type == WASM_CONTENT_LAYER) {
        Some(i) => Ok(Layout {
            format: "oci (wasm layer)",
            layer: i,
        }),
        None => Err(format!("{compat}; and no layer is {WASM_CONTENT_LAYER}")),
    }
}

/// The module from the layer Istio would read.
pub fn extract(layout: &Layout, blob: &[u8]) -> Result<Vec<u8>, String> {
    if layout.format == "oci (wasm layer)" {
        return Ok(blob.to_vec());
    }
    let gz = flate2::read::GzDecoder::new(blob);
    let mut archive = tar::Archive::new(gz);
    let entries = archive.entries().map_err(|e| format!("layer is not tar+gzip: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("layer is not tar+gzip: {e}"))?;
        let is_plugin = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n == PLUGIN_FILE))
            .unwrap_or(false);
        if is_plugin {
            let mut out = Vec::new();
            entry
                .read_to_end(&mut out)
                .map_err(|e| format!("reading {PLUGIN_FILE}: {e}"))?;
            return Ok(out);
        }
    }
    Err(format!("{PLUGIN_FILE} not found in the layer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "org.opencontainers.image.created".to_string(),
            "2026-01-01T00:00:00Z".to_string(),
        )])
    }

    #[test]
    fn both_formats_round_trip_through_istios_rules() {
        let wasm = b"\0asm\x01\0\0\0 pretend module".to_vec();
        for format in [Format::Image, Format::Oci] {
            let img = build(&wasm, format, &annotations(), 1_767_225_600);
            let m: Value = serde_json::from_slice(&img.manifest).unwrap();
            assert_eq!(img.manifest_digest, digest(&img.manifest));
            let layout = istio_layout(&m).unwrap();
            let descs = layers(&m);
            assert_eq!(descs.len(), img.layers.len());
            for (d, b) in descs.iter().zip(&img.layers) {
                assert_eq!(d.digest, b.digest);
                assert_eq!(d.size, b.data.len() as u64);
            }
            assert_eq!(extract(&layout, &img.layers[layout.layer].data).unwrap(), wasm);
            assert_eq!(
                m["annotations"]["org.opencontainers.image.created"],
                "2026-01-01T00:00:00Z"
            );
            assert!(!String::from_utf8_lossy(&img.manifest).contains("application/vnd.wasm"));
        }
        // Deterministic: same input, same digest.
        let a = build(&wasm, Format::Image, &annotations(), 1);
        let b = build(&wasm, Format::Image, &annotations(), 1);
        assert_eq!(a.manifest_digest, b.manifest_digest);
    }

    #[test]
    fn refuses_what_istio_refuses() {
        let m = json!({"mediaType": OCI_MANIFEST, "layers": [{"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": "sha256:x", "size": 1}]});
        let e = istio_layout(&m).unwrap_err();
        assert!(e.contains("needs exactly 2"), "{e}");
        let m = json!({"mediaType": DOCKER_MANIFEST, "layers": [{"mediaType": OCI_LAYER_TGZ}]});
        assert!(istio_layout(&m).unwrap_err().contains("Docker manifest"));
        let m = json!({"mediaType": DOCKER_MANIFEST, "layers": [{"mediaType": DOCKER_LAYER_TGZ}]});
        assert_eq!(istio_layout(&m).unwrap().format, "docker");
        let layout = Layout {
            format: "oci (compat)",
            layer: 0,
        };
        assert!(extract(&layout, b"not gzip").is_err());
        assert!(extract(&layout, &gzip(&tar_with_plugin(b"x", 0)[..0])).is_err());
    }
}
