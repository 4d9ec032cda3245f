//! Talking to registries: endpoints (mirrors, then the upstream), TLS and plain HTTP, credentials, manifests and
//! blob streams, through the `oci-client` crate (OCI Distribution v2; Docker schema2 and OCI manifests, manifest
//! lists and indexes, the bearer-token flow).
//!
//! Credentials from the request go to the upstream registry they were given for (and the token realm it names),
//! never to a mirror: a mirror is pulled from anonymously. They are never logged (`RegistryAuth`'s Debug redacts).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciImageManifest};
use oci_client::secrets::RegistryAuth;

use super::ImageError;
use super::reference::Reference;
use crate::config::RegistryConfig;

/// Credentials for one pull, as the CRI AuthConfig carries them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of "username:password".
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The oci-client form: a registry token is used as a bearer token as is; an identity token (an OAuth2 refresh
    /// token) is offered the way Docker does, as the password of the user `<token>`; `auth` is decoded.
    pub fn to_registry_auth(&self) -> Result<RegistryAuth, ImageError> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            return Ok(RegistryAuth::Basic(
                "<token>".into(),
                self.identity_token.clone(),
            ));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ImageError::BadAuth("auth is not base64 of user:password".into()))?;
            let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                ImageError::BadAuth("auth has no ':' between user and password".into())
            })?;
            return Ok(RegistryAuth::Basic(user.into(), pass.into()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// One place to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// host[:port] the requests go to.
    pub host: String,
    pub plain_http: bool,
    /// A mirror of the reference's registry (pulled from anonymously), or the registry itself.
    pub mirror: bool,
}

/// Whether a host[:port] is a loopback address, where plain HTTP is allowed by default.
pub fn is_local(host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits a configured endpoint ("http://127.0.0.1:5000", "https://m.example", "m.example:5000") into host and
/// whether it is plain HTTP; a bare host is HTTPS unless local or `insecure`.
pub fn parse_endpoint(s: &str, insecure: bool) -> Result<(String, bool), String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not a registry endpoint (scheme://host[:port])"
        ));
    }
    let plain = match scheme {
        Some("http") => true,
        Some("https") => false,
        Some(other) => return Err(format!("{s:?}: unknown scheme {other:?} (http, https)")),
        None => insecure || is_local(host),
    };
    Ok((host.to_owned(), plain))
}

/// The endpoints to try for `registry`, in order: its mirrors, then itself.
pub fn endpoints(
    registries: &BTreeMap<String, RegistryConfig>,
    registry: &str,
) -> Result<Vec<Endpoint>, ImageError> {
    let cfg = registries.get(registry).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for m in &cfg.mirrors {
        let (host, plain_http) = parse_endpoint(m, false).map_err(ImageError::BadConfig)?;
        out.push(Endpoint {
            host,
            plain_http,
            mirror: true,
        });
    }
    out.push(Endpoint {
        host: registry.to_owned(),
        plain_http: cfg.insecure || is_local(registry),
        mirror: false,
    });
    Ok(out)
}

/// Chooses linux/<this arch> from an index; among several, one without a variant (or the base variant) first.
pub fn resolve_platform(entries: &[ImageIndexEntry]) -> Option<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let base_variant = match arch {
        "arm64" => "v8",
        _ => "v1",
    };
    let matching: Vec<&ImageIndexEntry> = entries
        .iter()
        .filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == arch)
        })
        .collect();
    matching
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .and_then(|p| p.variant.as_deref())
                .is_none_or(|v| v.is_empty() || v == base_variant)
        })
        .or(matching.first())
        .map(|e| e.digest.clone())
}

/// A client for one endpoint.
pub struct Remote {
    client: oci_client::Client,
    reference: oci_client::Reference,
    auth: RegistryAuth,
    pub endpoint: Endpoint,
}

/// What a manifest resolves to.
pub struct Resolved {
    pub manifest: OciImageManifest,
    /// The digest of the reference's top-level manifest (an index when the tag names one).
    pub repo_digest: String,
    /// The digest of the platform's image manifest.
    pub manifest_digest: String,
    pub config: Vec<u8>,
}

impl Remote {
    pub fn new(
        reference: &Reference,
        endpoint: Endpoint,
        ca_files: &[PathBuf],
        auth: RegistryAuth,
        connect_timeout: Duration,
    ) -> Result<Remote, ImageError> {
        let mut extra_root_certificates = Vec::new();
        for path in ca_files {
            let data = std::fs::read(path).map_err(|source| ImageError::Io {
                op: "read the CA file",
                path: path.clone(),
                source: source.into(),
            })?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        // TLS is rustls with ring (no C toolchain for aws-lc); reqwest needs the provider before a client exists.
        // Installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates,
            platform_resolver: Some(Box::new(resolve_platform)),
            connect_timeout: Some(connect_timeout),
            ..ClientConfig::default()
        };
        let mut r = match (&reference.tag, &reference.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                reference.registry.clone(),
                reference.repository.clone(),
                d.clone(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                reference.registry.clone(),
                reference.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let auth = if endpoint.mirror {
            RegistryAuth::Anonymous
        } else {
            auth
        };
        if endpoint.mirror {
            // The mirror host serves the upstream's repository paths; the reference keeps the upstream name.
            r.set_mirror_registry(endpoint.host.clone());
        }
        Ok(Remote {
            client: oci_client::Client::new(config),
            reference: r,
            auth,
            endpoint,
        })
    }

    /// Fetches the manifest (resolving an index to this platform) and the config blob, verified.
    pub async fn resolve(&self, name: &str) -> Result<Resolved, ImageError> {
        let (manifest, digest, config, list_digest) = self
            .client
            .pull_manifest_and_config_and_list_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| classify(name, &self.endpoint.host, e))?;
        let config = config.into_bytes();
        super::content::verify_bytes(&manifest.config.digest, &config)?;
        Ok(Resolved {
            manifest,
            repo_digest: list_digest.unwrap_or_else(|| digest.clone()),
            manifest_digest: digest,
            config,
        })
    }

    /// The byte stream of one blob.
    pub async fn blob(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, ImageError>
    {
        let s = self
            .client
            .pull_blob_stream(&self.reference, digest)
            .await
            .map_err(|e| classify(name, &self.endpoint.host, e))?;
        Ok(s.stream)
    }
}

/// Sorts a registry failure into what the caller can act on.
pub fn classify(reference: &str, host: &str, e: OciDistributionError) -> ImageError {
    let message = e.to_string();
    match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ImageError::Unauthenticated {
            host: host.into(),
            message,
        },
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound {
            reference: reference.into(),
            message,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown,
                ) => ImageError::NotFound {
                    reference: reference.into(),
                    message,
                },
                Some(OciErrorCode::Unauthorized) => ImageError::Unauthenticated {
                    host: host.into(),
                    message,
                },
                Some(OciErrorCode::Denied) => ImageError::Denied {
                    host: host.into(),
                    message,
                },
                _ => ImageError::Registry {
                    host: host.into(),
                    source: std::sync::Arc::new(e),
                },
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            401 => ImageError::Unauthenticated {
                host: host.into(),
                message,
            },
            403 => ImageError::Denied {
                host: host.into(),
                message,
            },
            404 => ImageError::NotFound {
                reference: reference.into(),
                message,
            },
            _ => ImageError::Registry {
                host: host.into(),
                source: std::sync::Arc::new(e),
            },
        },
        OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
            ImageError::Unavailable {
                host: host.into(),
                source: std::sync::Arc::new(e),
            }
        }
        _ => ImageError::Registry {
            host: host.into(),
            source: std::sync::Arc::new(e),
        },
    }
}

/// Whether an AuthConfig's `server_address` names `registry` (a normalised reference host such as `docker.io` or
/// `127.0.0.1:5000`). kubelet sets it to the registry its credentials are for; credentials for another registry
/// must not be sent (containerd CVE-2020-15157), so the pull then goes anonymously, as containerd does. An empty
/// address matches (the credentials came without one).
pub fn server_address_matches(server_address: &str, registry: &str) -> bool {
    let addr = server_address.trim();
    if addr.is_empty() {
        return true;
    }
    let without_scheme = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let hub = |h: &str| {
        matches!(
            h,
            "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
        )
    };
    let registry = registry.to_ascii_lowercase();
    host == registry || (hub(&host) && hub(&registry))
}

#[cfg(test)]
mod tests {

    #[test]
    fn server_address_must_name_the_registry() {
        for (addr, registry, ok) in [
            ("", "docker.io", true),
            ("127.0.0.1:5000", "127.0.0.1:5000", true),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000", true),
            ("https://index.docker.io/v1/", "docker.io", true),
            ("docker.io", "docker.io", true),
            ("Registry.K8s.io", "registry.k8s.io", true),
            ("127.0.0.1:5001", "127.0.0.1:5000", false),
            ("evil.example.com", "docker.io", false),
            ("https://docker.io.evil.example/", "docker.io", false),
            ("127.0.0.1", "127.0.0.1:5000", false),
        ] {
            assert_eq!(
                super::server_address_matches(addr, registry),
                ok,
                "{addr} for {registry}"
            );
        }
    }
    use super::*;

    #[test]
    fn local_hosts() {
        assert!(is_local("localhost:5000"));
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("127.3.4.5"));
        assert!(is_local("[::1]:5000"));
        assert!(!is_local("registry.k8s.io"));
        assert!(!is_local("10.0.0.1:5000"));
        assert!(!is_local("localhost.example.com"));
    }

    #[test]
    fn endpoints_are_mirrors_then_upstream() {
        let cfg: BTreeMap<String, RegistryConfig> = toml::from_str(
            "[\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\", \"m.example\"]\n\
             [\"r.example\"]\ninsecure = true\n",
        )
        .unwrap();
        let e = endpoints(&cfg, "registry.k8s.io").unwrap();
        let got: Vec<(&str, bool, bool)> = e
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.mirror))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:5000", true, true),
                ("m.example", false, true),
                ("registry.k8s.io", false, false)
            ]
        );
        assert!(endpoints(&cfg, "r.example").unwrap()[0].plain_http);
        assert!(endpoints(&cfg, "localhost:5000").unwrap()[0].plain_http);
        assert!(!endpoints(&cfg, "docker.io").unwrap()[0].plain_http);
        assert!(parse_endpoint("ftp://x", false).is_err());
        assert!(parse_endpoint("http://x/path", false).is_err());
    }

    #[test]
    fn credentials_map_to_auth() {
        let c = Credentials {
            auth: "dXNlcjpwYXNz".into(), // user:pass
            ..Default::default()
        };
        assert_eq!(
            c.to_registry_auth().unwrap(),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        let c = Credentials {
            registry_token: "tok".into(),
            username: "u".into(),
            ..Default::default()
        };
        assert_eq!(
            c.to_registry_auth().unwrap(),
            RegistryAuth::Bearer("tok".into())
        );
        assert_eq!(
            Credentials::default().to_registry_auth().unwrap(),
            RegistryAuth::Anonymous
        );
        let c = Credentials {
            auth: "bm9jb2xvbg==".into(), // "nocolon"
            ..Default::default()
        };
        assert!(c.to_registry_auth().is_err());
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn credentials_never_go_to_a_mirror() {
        let reference = Reference::parse("registry.k8s.io/pause:3.9").unwrap();
        let auth = RegistryAuth::Basic("u".into(), "p".into());
        let cfg: BTreeMap<String, RegistryConfig> =
            toml::from_str("[\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n")
                .unwrap();
        let eps = endpoints(&cfg, "registry.k8s.io").unwrap();
        let mirror = Remote::new(
            &reference,
            eps[0].clone(),
            &[],
            auth.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(mirror.auth, RegistryAuth::Anonymous);
        assert_eq!(mirror.reference.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(mirror.reference.repository(), "pause");
        let upstream = Remote::new(
            &reference,
            eps[1].clone(),
            &[],
            auth.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(upstream.auth, auth);
        assert_eq!(upstream.reference.resolve_registry(), "registry.k8s.io");
    }

    #[test]
    fn platform_choice() {
        let entries: Vec<ImageIndexEntry> = serde_json::from_value(serde_json::json!([
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:arm", "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:v3", "size": 1,
             "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:amd", "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]))
        .unwrap();
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(resolve_platform(&entries).as_deref(), Some("sha256:amd"));
            assert_eq!(
                resolve_platform(&entries[..2]).as_deref(),
                Some("sha256:v3")
            );
            assert_eq!(resolve_platform(&entries[..1]), None);
        }
    }
}
