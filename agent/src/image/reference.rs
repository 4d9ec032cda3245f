//! Image references: parsing and Docker-style normalisation.
//!
//! The grammar is the one of the distribution project's `reference` package (written out below); the
//! normalisation is Docker's: a name without a registry host lives on `docker.io`, a single-component name on
//! Docker Hub lives under `library/`, `index.docker.io` is `docker.io`, and a reference with neither tag nor
//! digest means the tag `latest`.
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [ domain "/" ] path
//! domain           := host [ ":" port ]
//! host             := domain-name | IPv4address | "[" IPv6address "]"
//! domain-name      := domain-component ( "." domain-component )*
//! domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! port             := [0-9]+
//! path             := path-component ( "/" path-component )*
//! path-component   := [a-z0-9]+ ( separator [a-z0-9]+ )*
//! separator        := "." | "_" | "__" | "-"+
//! tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest           := algorithm ":" hex     (sha256/64, sha384/96, sha512/128 lowercase hex digits)
//! ```
//!
//! The first `/`-separated part of a name is a registry host when it contains a `.` or a `:`, is `localhost`,
//! or has an upper-case letter (as in the upstream package); otherwise the whole name is a Docker Hub path.

use std::fmt;

/// The registry a name without a host refers to.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy host name, normalised to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The namespace of Docker Hub's official images (`busybox` is `library/busybox`).
const OFFICIAL_NAMESPACE: &str = "library";
/// The tag a reference without tag and digest means.
pub const DEFAULT_TAG: &str = "latest";
/// Longest `registry/repository` accepted (the distribution project's limit).
pub const NAME_MAX: usize = 255;
/// Longest tag accepted.
pub const TAG_MAX: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with the port if one was given: `docker.io`, `localhost:5000`, `registry.k8s.io`.
    pub registry: String,
    /// Repository path inside the registry: `library/busybox`.
    pub repository: String,
    /// The tag; `None` only when the reference is pinned by digest alone.
    pub tag: Option<String>,
    /// The manifest digest, `sha256:<64 hex>`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {reference:?} contains whitespace or a control character")]
    Whitespace { reference: String },
    #[error(
        "image reference {reference:?} is a 64-character hexadecimal string, which is an image id, not a repository name"
    )]
    LooksLikeId { reference: String },
    #[error("repository name {repository:?} in image reference {reference:?} must be lowercase")]
    Uppercase {
        reference: String,
        repository: String,
    },
    #[error("invalid registry host {host:?} in image reference {reference:?}: {reason}")]
    InvalidRegistry {
        reference: String,
        host: String,
        reason: &'static str,
    },
    #[error("invalid repository name {repository:?} in image reference {reference:?}: {reason}")]
    InvalidRepository {
        reference: String,
        repository: String,
        reason: String,
    },
    #[error("repository name {name:?} is {len} characters long, more than the limit of {NAME_MAX}")]
    NameTooLong { name: String, len: usize },
    #[error("invalid tag {tag:?} in image reference {reference:?}: {reason}")]
    InvalidTag {
        reference: String,
        tag: String,
        reason: &'static str,
    },
    #[error("invalid digest {digest:?} in image reference {reference:?}: {problem}")]
    InvalidDigest {
        reference: String,
        digest: String,
        problem: DigestProblem,
    },
}

/// What is wrong with a digest string (also used on digests read from manifests, see [`validate_digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestProblem {
    /// Nothing follows the `@`.
    Missing,
    /// No `:` between algorithm and hex.
    NoSeparator,
    UnknownAlgorithm(String),
    WrongLength {
        algorithm: &'static str,
        expected: usize,
        actual: usize,
    },
    /// The hex part has a character that is not a lowercase hexadecimal digit.
    NotLowercaseHex,
}

impl fmt::Display for DigestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestProblem::Missing => f.write_str("'@' is not followed by a digest"),
            DigestProblem::NoSeparator => {
                f.write_str("a digest is <algorithm>:<hex>, and the ':' is missing")
            }
            DigestProblem::UnknownAlgorithm(a) => write!(
                f,
                "unsupported digest algorithm {a:?} (supported: sha256, sha384, sha512)"
            ),
            DigestProblem::WrongLength {
                algorithm,
                expected,
                actual,
            } => write!(
                f,
                "a {algorithm} digest has {expected} hex digits, this one has {actual}"
            ),
            DigestProblem::NotLowercaseHex => {
                f.write_str("the digest value must be lowercase hexadecimal (0-9, a-f)")
            }
        }
    }
}

/// Checks `algorithm:hex` against the algorithms crius can verify.
pub fn validate_digest(digest: &str) -> Result<(), DigestProblem> {
    if digest.is_empty() {
        return Err(DigestProblem::Missing);
    }
    let (algorithm, hex) = digest.split_once(':').ok_or(DigestProblem::NoSeparator)?;
    let (algorithm, expected) = match algorithm {
        "sha256" => ("sha256", 64),
        "sha384" => ("sha384", 96),
        "sha512" => ("sha512", 128),
        other => return Err(DigestProblem::UnknownAlgorithm(other.to_string())),
    };
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(DigestProblem::NotLowercaseHex);
    }
    if hex.len() != expected {
        return Err(DigestProblem::WrongLength {
            algorithm,
            expected,
            actual: hex.len(),
        });
    }
    Ok(())
}

impl Reference {
    /// Parses and normalises `s` (`busybox` → `docker.io/library/busybox:latest`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Whitespace {
                reference: s.to_string(),
            });
        }
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::LooksLikeId {
                reference: s.to_string(),
            });
        }

        let (name_tag, digest) = match s.split_once('@') {
            Some((name_tag, digest)) => (name_tag, Some(digest)),
            None => (s, None),
        };
        if let Some(digest) = digest {
            validate_digest(digest).map_err(|problem| ReferenceError::InvalidDigest {
                reference: s.to_string(),
                digest: digest.to_string(),
                problem,
            })?;
        }

        // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(s, tag)?;
        }

        let (registry, path) = split_registry(name);
        let registry = match registry {
            Some(host) => {
                check_registry(s, host)?;
                if host == DOCKER_HUB_LEGACY {
                    DOCKER_HUB
                } else {
                    host
                }
            }
            None => DOCKER_HUB,
        };
        check_repository(s, path)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_string()
        };

        let full = format!("{registry}/{repository}");
        if full.len() > NAME_MAX {
            return Err(ReferenceError::NameTooLong {
                len: full.len(),
                name: full,
            });
        }

        let tag = match (tag, digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `registry/repository`, without tag or digest: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest`, without a tag: the form of a CRI repo digest
    /// (`docker.io/library/busybox@sha256:…`). `digest` must be one crius computed or validated
    /// (see [`validate_digest`]).
    pub fn with_digest(&self, digest: impl Into<String>) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.into()),
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

/// Splits `name` into an optional registry host and the repository path.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_tag(reference: &str, tag: &str) -> Result<(), ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidTag {
        reference: reference.to_string(),
        tag: tag.to_string(),
        reason,
    };
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [] => Err(invalid("nothing follows the ':'")),
        _ if tag.len() > TAG_MAX => Err(invalid("a tag has at most 128 characters")),
        [first, ..] if !word(*first) => Err(invalid(
            "a tag starts with a letter, a digit or an underscore",
        )),
        [_, rest @ ..] if !rest.iter().all(|&b| word(b) || b == b'.' || b == b'-') => {
            Err(invalid("a tag has only letters, digits, '_', '.' and '-'"))
        }
        _ => Ok(()),
    }
}

fn check_registry(reference: &str, host: &str) -> Result<(), ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidRegistry {
        reference: reference.to_string(),
        host: host.to_string(),
        reason,
    };
    let (hostname, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("'[' without a closing ']'"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("not an IPv6 address inside '[ ]'"));
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(invalid("only ':<port>' may follow ']'")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid("the port must be a number"));
    }
    if let Some(hostname) = hostname {
        for component in hostname.split('.') {
            let bytes = component.as_bytes();
            if bytes.is_empty() {
                return Err(invalid("empty host name component"));
            }
            if !bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(invalid("a host name has only letters, digits, '-' and '.'"));
            }
            if bytes.first() == Some(&b'-') || bytes.last() == Some(&b'-') {
                return Err(invalid(
                    "a host name component neither starts nor ends with '-'",
                ));
            }
        }
    }
    Ok(())
}

fn check_repository(reference: &str, path: &str) -> Result<(), ReferenceError> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase {
            reference: reference.to_string(),
            repository: path.to_string(),
        });
    }
    let invalid = |reason: String| ReferenceError::InvalidRepository {
        reference: reference.to_string(),
        repository: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("the repository name is empty".to_string()));
    }
    for component in path.split('/') {
        check_path_component(component).map_err(|why| {
            if component.is_empty() {
                invalid(why.to_string())
            } else {
                invalid(format!("path component {component:?} {why}"))
            }
        })?;
    }
    Ok(())
}

/// One `/`-separated part of a repository: lowercase alphanumeric runs joined by `.`, `_`, `__` or dashes.
fn check_path_component(component: &str) -> Result<(), &'static str> {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (None, _) => {
            return Err(
                "the repository name has an empty path component ('//' or a '/' at an end)",
            );
        }
        (Some(&first), _) if !alnum(first) => {
            return Err("must start with a lowercase letter or a digit");
        }
        (_, Some(&last)) if !alnum(last) => {
            return Err("must end with a lowercase letter or a digit");
        }
        _ => {}
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        let run = rest.iter().take_while(|&&b| !alnum(b)).count();
        let separator = &rest[..run];
        let ok = match separator {
            [] | b"." | b"_" | b"__" => true,
            dashes => dashes.iter().all(|&b| b == b'-'),
        };
        if !ok {
            return Err(if separator.iter().all(|b| b"._-".contains(b)) {
                "has a separator other than '.', '_', '__' or a run of '-'"
            } else {
                "has a character other than lowercase letters, digits, '.', '_' and '-'"
            });
        }
        rest = &rest[run..];
        let word = rest.iter().take_while(|&&b| alnum(b)).count();
        rest = &rest[word..];
    }
    Ok(())
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
