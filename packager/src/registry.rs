//! Talking to an OCI registry: transport (TLS, CA file, plain HTTP, timeouts), credentials
//! (flags, docker config), and errors turned into one clear line.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::image::{Image, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::module::digest;

/// How to reach and authenticate to a registry (from the flags every registry command takes,
/// `cli::RegistryArgs`).
#[derive(Debug, Clone, Default)]
pub struct RegistryOpts {
    pub plain_http: bool,
    /// PEM file of CA certificates to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
    pub username: Option<String>,
    pub password_stdin: bool,
    /// Seconds allowed for the whole registry operation.
    pub timeout: u64,
}

/// Connected client plus what it needs per call.
pub struct Registry {
    pub client: Client,
    pub auth: RegistryAuth,
    pub timeout: Duration,
}

pub fn parse_reference(s: &str) -> Result<Reference> {
    let r: Reference = s
        .parse()
        .with_context(|| format!("`{s}` is not a valid image reference"))?;
    Ok(r)
}

impl Registry {
    pub fn connect(opts: &RegistryOpts, reference: &Reference) -> Result<Registry> {
        let mut extra = Vec::new();
        if let Some(path) = &opts.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                bail!("--ca-file {} holds no PEM certificate", path.display());
            }
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem,
            });
        }
        if opts.insecure {
            eprintln!("warning: --insecure: TLS certificates are not verified");
        }
        crate::commands::apply::install_crypto_provider();
        let config = ClientConfig {
            protocol: if opts.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: opts.insecure,
            extra_root_certificates: extra,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let auth = credentials(opts, reference.resolve_registry())?;
        Ok(Registry {
            client: Client::new(config),
            auth,
            timeout: Duration::from_secs(opts.timeout.max(1)),
        })
    }

    /// `explain`, and, when no credentials were sent at all, a refusal says so (rather than that
    /// credentials were refused).
    fn explain(&self, e: OciDistributionError, reference: &Reference) -> anyhow::Error {
        let err = explain(e, reference);
        let registry = reference.resolve_registry();
        if matches!(self.auth, RegistryAuth::Anonymous) && err.to_string().contains(": credentials refused (") {
            let why = err.to_string();
            let why = why
                .split_once("credentials refused (")
                .and_then(|(_, r)| r.rsplit_once(')'))
                .map_or(String::new(), |(c, _)| c.to_string());
            return anyhow!(
                "{registry}: no credentials were sent and the registry wants them ({why}): pass --username with \
                 --password-stdin, or run `docker login {registry}` (wasmpack reads the docker config)"
            );
        }
        err
    }

    async fn timed<T>(&self, what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => bail!("{what}: timed out after {} s", self.timeout.as_secs()),
        }
    }

    /// Pushes blobs, then the manifest under the reference's tag (or digest). Returns the manifest digest.
    pub async fn push(&self, reference: &Reference, image: &Image) -> Result<String> {
        self.timed("push", async {
            self.client
                .auth(reference, &self.auth, RegistryOperation::Push)
                .await
                .map_err(|e| self.explain(e, reference))?;
            for blob in std::iter::once(&image.config).chain(&image.layers) {
                self.client
                    .push_blob(reference, blob.data.clone(), &blob.digest)
                    .await
                    .map_err(|e| self.explain(e, reference))
                    .with_context(|| format!("uploading blob {}", blob.digest))?;
            }
            self.put_manifest(reference, &image.manifest).await
        })
        .await
    }

    pub async fn put_manifest(&self, reference: &Reference, manifest: &[u8]) -> Result<String> {
        let ct = http::HeaderValue::from_static(OCI_MANIFEST);
        self.client
            .push_manifest_raw(reference, manifest.to_vec(), ct)
            .await
            .map_err(|e| self.explain(e, reference))
            .context("uploading the manifest")?;
        Ok(digest(manifest))
    }

    /// The manifest bytes and the digest the registry gives for them (checked against the bytes).
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String)> {
        self.timed("fetching the manifest", async {
            let (bytes, registry_digest) = self
                .client
                .pull_manifest_raw(reference, &self.auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
                .await
                .map_err(|e| self.explain(e, reference))?;
            let actual = digest(&bytes);
            if !registry_digest.is_empty() && registry_digest != actual {
                bail!("the registry says the manifest is {registry_digest}, but its bytes hash to {actual}");
            }
            if let Some(want) = reference.digest() {
                if want != actual {
                    bail!("the manifest hashes to {actual}, not the {want} asked for");
                }
            }
            Ok((bytes.to_vec(), actual))
        })
        .await
    }

    /// A blob, verified against its digest.
    pub async fn blob(&self, reference: &Reference, digest_str: &str) -> Result<Vec<u8>> {
        self.timed("fetching a blob", async {
            let mut out = Vec::new();
            self.client
                .pull_blob(reference, digest_str, &mut out)
                .await
                .map_err(|e| self.explain(e, reference))
                .with_context(|| format!("fetching blob {digest_str}"))?;
            let actual = digest(&out);
            if actual != digest_str {
                bail!("blob {digest_str} has the wrong content (it hashes to {actual})");
            }
            Ok(out)
        })
        .await
    }
}

/// Credentials: `--username` with `--password-stdin`, else the docker config (`DOCKER_CONFIG`,
/// `auths`, `credsStore`, `credHelpers`), else anonymous.
fn credentials(opts: &RegistryOpts, registry: &str) -> Result<RegistryAuth> {
    if let (Some(user), true) = (&opts.username, opts.password_stdin) {
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            bail!("--password-stdin: no password on standard input");
        }
        return Ok(RegistryAuth::Basic(user.clone(), password));
    }
    match docker_login(registry) {
        Ok(Some((u, p))) => Ok(RegistryAuth::Basic(u, p)),
        _ => match docker_credential::get_credential(docker_key(registry)) {
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => Ok(RegistryAuth::Bearer(t)),
            _ => Ok(RegistryAuth::Anonymous),
        },
    }
}

/// Docker Hub's credentials live under its legacy key.
fn docker_key(registry: &str) -> &str {
    if registry == "docker.io" || registry == "index.docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    }
}

/// User name and password for `registry` from the docker config (`DOCKER_CONFIG`, `auths`,
/// `credsStore`, `credHelpers`): what `push` logs in with and `apply` puts in a pull secret.
/// `None` when there are none; an error for an identity token, which a pull secret cannot hold.
pub fn docker_login(registry: &str) -> Result<Option<(String, String)>> {
    match docker_credential::get_credential(docker_key(registry)) {
        Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => Ok(Some((u, p))),
        Ok(docker_credential::DockerCredential::IdentityToken(_)) => bail!(
            "the docker config holds an identity token for {registry}, which an image pull secret cannot carry; \
             create the Secret yourself and pass --pull-secret"
        ),
        Err(_) => Ok(None),
    }
}

/// An error and its sources, outermost first, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Turns a client error into one line that says what went wrong and what to do.
pub fn explain(e: OciDistributionError, reference: &Reference) -> anyhow::Error {
    let registry = reference.resolve_registry().to_string();
    let chain = {
        let s = error_chain(&e);
        // One line, and not a whole server error page.
        let mut one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one.len() > 300 {
            let mut end = 300;
            while !one.is_char_boundary(end) {
                end -= 1;
            }
            one.truncate(end);
            one.push('…');
        }
        one
    };
    let lower = chain.to_lowercase();
    let status = match &e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::ImageManifestNotFoundError(_) => Some(404),
        _ => None,
    };
    if matches!(e, OciDistributionError::AuthenticationFailure(_))
        || matches!(status, Some(401) | Some(403))
        || lower.contains("unauthorized")
        || lower.contains("denied")
    {
        return anyhow!(
            "{registry}: credentials refused ({chain}); check --username/--password-stdin or your docker login"
        );
    }
    // TLS problems each have their own fix: say the right one.
    if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        return anyhow!(
            "{registry}: the registry's TLS certificate is not valid for the name `{registry}` ({chain}); reach it by a \
             name its certificate lists (--ca-file cannot fix a name mismatch)"
        );
    }
    if lower.contains("expired") || lower.contains("notvalidyet") || lower.contains("not valid yet") {
        return anyhow!(
            "{registry}: the registry's TLS certificate has expired or is not valid yet ({chain}); renew it, or check \
             this machine's clock"
        );
    }
    if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
    {
        return anyhow!(
            "{registry}: the registry does not speak TLS there ({chain}); for an HTTP registry pass --plain-http"
        );
    }
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("tls") && lower.contains("invalid")
    {
        return anyhow!(
            "{registry}: TLS certificate not trusted ({chain}); pass --ca-file with the registry's CA, or --plain-http for an HTTP registry"
        );
    }
    if status == Some(404) || lower.contains("manifest unknown") || lower.contains("not found") {
        return anyhow!("{reference}: not found in the registry ({chain})");
    }
    if lower.contains("error sending request")
        || lower.contains("connect")
        || lower.contains("timed out")
        || lower.contains("dns")
    {
        return anyhow!("{registry}: cannot reach the registry ({chain})");
    }
    anyhow!("{registry}: {chain}")
}
