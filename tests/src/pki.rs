//! A throwaway PKI made with openssl: a CA, a server certificate for 127.0.0.1, and client
//! certificates whose URI SAN is a SPIFFE ID (as Istio's workload certificates carry).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

pub struct Pki {
    pub dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl not found ({e}): install it with `apt-get install openssl` (scripts/setup.sh does)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        openssl(
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"],
            d,
        );
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=model-router test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            d,
        );
        let pki = Pki { dir };
        pki.issue("server", "IP:127.0.0.1", "serverAuth");
        pki
    }

    fn issue(&self, name: &str, san: &str, usage: &str) {
        let d = self.dir.path();
        openssl(
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &format!("{name}.key"),
            ],
            d,
        );
        openssl(
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
            d,
        );
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
            d,
        );
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Envoy's downstream TLS: our server certificate, client certificates required and checked.
    pub fn transport_socket(&self) -> Value {
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": self.path("server.pem")}, "private_key": {"filename": self.path("server.key")}}],
            "validation_context": {"trusted_ca": {"filename": self.path("ca.pem")}}
        }}})
    }

    /// A client presenting a certificate for `spiffe_id` (or none).
    pub fn client(&self, name: &str, spiffe_id: Option<&str>) -> reqwest::Client {
        let ca = std::fs::read(self.path("ca.pem")).unwrap_or_else(|e| panic!("{e}"));
        let mut b = crate::http_client()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap_or_else(|e| panic!("{e}"))])
            .timeout(std::time::Duration::from_secs(20));
        if let Some(id) = spiffe_id {
            self.issue(name, &format!("URI:{id}"), "clientAuth");
            let mut pem = std::fs::read(self.path(&format!("{name}.pem"))).unwrap_or_else(|e| panic!("{e}"));
            pem.extend(std::fs::read(self.path(&format!("{name}.key"))).unwrap_or_else(|e| panic!("{e}")));
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap_or_else(|e| panic!("{e}")));
        }
        b.build().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
