use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn parse(s: &str) -> Reference {
    Reference::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn err(s: &str) -> ReferenceError {
    match Reference::parse(s) {
        Ok(r) => panic!("{s:?} should be rejected, parsed as {r:?}"),
        Err(e) => e,
    }
}

/// input, registry, repository, tag, digest, normalised form.
type Row = (
    String,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    String,
);

#[test]
fn normalisation_table() {
    let d = D;
    let cases: Vec<Row> = vec![
        (
            "busybox".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
        ),
        (
            "busybox:1.36".into(),
            "docker.io",
            "library/busybox",
            Some("1.36"),
            None,
            "docker.io/library/busybox:1.36".into(),
        ),
        (
            format!("busybox@{d}"),
            "docker.io",
            "library/busybox",
            None,
            Some(d),
            format!("docker.io/library/busybox@{d}"),
        ),
        (
            format!("busybox:1.36@{d}"),
            "docker.io",
            "library/busybox",
            Some("1.36"),
            Some(d),
            format!("docker.io/library/busybox:1.36@{d}"),
        ),
        (
            "library/busybox".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
        ),
        (
            "docker.io/busybox".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
        ),
        (
            "docker.io/library/busybox:latest".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
        ),
        (
            "index.docker.io/busybox".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "docker.io/library/busybox:latest".into(),
        ),
        (
            "index.docker.io/foo/bar:v1".into(),
            "docker.io",
            "foo/bar",
            Some("v1"),
            None,
            "docker.io/foo/bar:v1".into(),
        ),
        (
            "foo/bar".into(),
            "docker.io",
            "foo/bar",
            Some("latest"),
            None,
            "docker.io/foo/bar:latest".into(),
        ),
        (
            "foo/bar/baz".into(),
            "docker.io",
            "foo/bar/baz",
            Some("latest"),
            None,
            "docker.io/foo/bar/baz:latest".into(),
        ),
        (
            "registry.k8s.io/pause:3.9".into(),
            "registry.k8s.io",
            "pause",
            Some("3.9"),
            None,
            "registry.k8s.io/pause:3.9".into(),
        ),
        (
            "quay.io/coreos/etcd:v3.5.0".into(),
            "quay.io",
            "coreos/etcd",
            Some("v3.5.0"),
            None,
            "quay.io/coreos/etcd:v3.5.0".into(),
        ),
        (
            "localhost/busybox".into(),
            "localhost",
            "busybox",
            Some("latest"),
            None,
            "localhost/busybox:latest".into(),
        ),
        (
            "localhost:5000/busybox".into(),
            "localhost:5000",
            "busybox",
            Some("latest"),
            None,
            "localhost:5000/busybox:latest".into(),
        ),
        (
            "localhost:5000/a/b:t".into(),
            "localhost:5000",
            "a/b",
            Some("t"),
            None,
            "localhost:5000/a/b:t".into(),
        ),
        (
            format!("localhost:5000/a/b:t@{d}"),
            "localhost:5000",
            "a/b",
            Some("t"),
            Some(d),
            format!("localhost:5000/a/b:t@{d}"),
        ),
        (
            "127.0.0.1:5000/busybox:x".into(),
            "127.0.0.1:5000",
            "busybox",
            Some("x"),
            None,
            "127.0.0.1:5000/busybox:x".into(),
        ),
        (
            "10.0.0.1/team/app".into(),
            "10.0.0.1",
            "team/app",
            Some("latest"),
            None,
            "10.0.0.1/team/app:latest".into(),
        ),
        (
            "[::1]:5000/busybox".into(),
            "[::1]:5000",
            "busybox",
            Some("latest"),
            None,
            "[::1]:5000/busybox:latest".into(),
        ),
        (
            "[fe80::1]/busybox".into(),
            "[fe80::1]",
            "busybox",
            Some("latest"),
            None,
            "[fe80::1]/busybox:latest".into(),
        ),
        (
            "myhost:5000/x".into(),
            "myhost:5000",
            "x",
            Some("latest"),
            None,
            "myhost:5000/x:latest".into(),
        ),
        (
            "My-Registry.example/x".into(),
            "My-Registry.example",
            "x",
            Some("latest"),
            None,
            "My-Registry.example/x:latest".into(),
        ),
        (
            "ab/c.d_e__f-g---h".into(),
            "docker.io",
            "ab/c.d_e__f-g---h",
            Some("latest"),
            None,
            "docker.io/ab/c.d_e__f-g---h:latest".into(),
        ),
        (
            "busybox:_T.a-g".into(),
            "docker.io",
            "library/busybox",
            Some("_T.a-g"),
            None,
            "docker.io/library/busybox:_T.a-g".into(),
        ),
        // A bare "host:port" is a Docker Hub name with a tag, as in Docker.
        (
            "localhost:5000".into(),
            "docker.io",
            "library/localhost",
            Some("5000"),
            None,
            "docker.io/library/localhost:5000".into(),
        ),
    ];
    for (input, registry, repository, tag, digest, display) in cases {
        let r = parse(&input);
        assert_eq!(r.registry, registry, "registry of {input:?}");
        assert_eq!(r.repository, repository, "repository of {input:?}");
        assert_eq!(r.tag.as_deref(), tag, "tag of {input:?}");
        assert_eq!(r.digest.as_deref(), digest, "digest of {input:?}");
        assert_eq!(r.to_string(), display, "display of {input:?}");
        assert_eq!(r.name(), format!("{registry}/{repository}"));
        // The normalised form is a fixed point.
        assert_eq!(parse(&display), r, "reparse of {display:?}");
    }
}

#[test]
fn digest_alone_has_no_tag_and_other_algorithms_parse() {
    let r = parse(&format!("busybox@{D}"));
    assert_eq!(r.tag, None);
    assert_eq!(r.manifest_reference(), D);
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    assert_eq!(
        parse(&format!("x@{sha512}")).digest.as_deref(),
        Some(sha512.as_str())
    );
    let sha384 = format!("sha384:{}", "cd".repeat(48));
    assert_eq!(
        parse(&format!("x@{sha384}")).digest.as_deref(),
        Some(sha384.as_str())
    );
}

#[test]
fn with_digest_and_manifest_reference() {
    let r = parse("registry.k8s.io/pause:3.9");
    assert_eq!(r.manifest_reference(), "3.9");
    let pinned = r.with_digest(D);
    assert_eq!(pinned.to_string(), format!("registry.k8s.io/pause@{D}"));
    assert_eq!(pinned.manifest_reference(), D);
    assert_eq!(pinned.name(), r.name());
    // Digest wins over the tag when both are given.
    assert_eq!(parse(&format!("a:b@{D}")).manifest_reference(), D);
    assert_eq!(
        "busybox".parse::<Reference>().unwrap().to_string(),
        "docker.io/library/busybox:latest"
    );
}

#[test]
fn empty_and_whitespace() {
    assert_eq!(err(""), ReferenceError::Empty);
    for s in [
        " ",
        "busy box",
        "busybox ",
        "\tbusybox",
        "busybox:la test",
        "busy\nbox",
        "busy\u{0}box",
    ] {
        assert!(matches!(err(s), ReferenceError::Whitespace { .. }), "{s:?}");
    }
}

#[test]
fn uppercase_repository() {
    for s in [
        "Busybox",
        "library/Busybox",
        "localhost:5000/Foo",
        "docker.io/library/BUSYBOX:latest",
    ] {
        let e = err(s);
        assert!(
            matches!(e, ReferenceError::Uppercase { .. }),
            "{s:?}: {e:?}"
        );
        assert!(e.to_string().contains("must be lowercase"), "{e}");
    }
    // An upper-case first component is a registry host (as upstream), and host names may be mixed case.
    assert_eq!(parse("Foo/bar").registry, "Foo");
}

#[test]
fn sixty_four_hex_is_an_id() {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let e = err(id);
    assert!(matches!(e, ReferenceError::LooksLikeId { .. }), "{e:?}");
    assert!(e.to_string().contains("image id"));
    // 63 or 65 hex characters are ordinary names.
    assert_eq!(parse(&id[1..]).repository, format!("library/{}", &id[1..]));
}

#[test]
fn bad_tags() {
    let cases = [
        ("busybox:", "nothing follows"),
        ("localhost:5000/busybox:", "nothing follows"),
        ("busybox:.x", "starts with"),
        ("busybox:-x", "starts with"),
        ("busybox:a:b", "only letters"),
        ("busybox:a+b", "only letters"),
    ];
    for (s, why) in cases {
        let e = err(s);
        assert!(
            matches!(
                e,
                ReferenceError::InvalidTag { .. } | ReferenceError::InvalidRepository { .. }
            ),
            "{s:?}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{s:?}: {e}");
    }
    let long = format!("busybox:{}", "t".repeat(129));
    assert!(err(&long).to_string().contains("at most 128"));
    assert_eq!(
        parse(&format!("busybox:{}", "t".repeat(128)))
            .tag
            .unwrap()
            .len(),
        128
    );
}

#[test]
fn bad_digests() {
    let hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let cases = [
        ("busybox@".to_string(), DigestProblem::Missing),
        ("busybox:1@".to_string(), DigestProblem::Missing),
        (format!("busybox@{hex64}"), DigestProblem::NoSeparator),
        (
            "busybox@sha256:abc".to_string(),
            DigestProblem::WrongLength {
                algorithm: "sha256",
                expected: 64,
                actual: 3,
            },
        ),
        (
            format!("busybox@sha256:{hex64}0"),
            DigestProblem::WrongLength {
                algorithm: "sha256",
                expected: 64,
                actual: 65,
            },
        ),
        (
            format!("busybox@md5:{hex64}"),
            DigestProblem::UnknownAlgorithm("md5".into()),
        ),
        (
            format!("busybox@SHA256:{hex64}"),
            DigestProblem::UnknownAlgorithm("SHA256".into()),
        ),
        (
            format!("busybox@:{hex64}"),
            DigestProblem::UnknownAlgorithm(String::new()),
        ),
        (
            format!("busybox@sha256:{}", hex64.to_uppercase()),
            DigestProblem::NotLowercaseHex,
        ),
        (
            format!("busybox@sha256:{}g", &hex64[1..]),
            DigestProblem::NotLowercaseHex,
        ),
        (
            format!("busybox@sha256:{hex64}@sha256:{hex64}"),
            DigestProblem::NotLowercaseHex,
        ),
    ];
    for (s, problem) in cases {
        match err(&s) {
            ReferenceError::InvalidDigest { problem: p, .. } => assert_eq!(p, problem, "{s:?}"),
            e => panic!("{s:?}: expected a digest error, got {e:?}"),
        }
    }
    // The messages name the problem.
    assert!(
        err("busybox@")
            .to_string()
            .contains("'@' is not followed by a digest")
    );
    assert!(
        err("busybox@sha256:abc")
            .to_string()
            .contains("64 hex digits, this one has 3")
    );
    assert!(
        err(&format!("busybox@md5:{hex64}"))
            .to_string()
            .contains("unsupported digest algorithm \"md5\"")
    );
}

#[test]
fn validate_digest_on_its_own() {
    assert_eq!(validate_digest(D), Ok(()));
    assert_eq!(validate_digest(""), Err(DigestProblem::Missing));
    assert_eq!(validate_digest("sha256"), Err(DigestProblem::NoSeparator));
}

#[test]
fn bad_repository_paths() {
    let cases = [
        ("/busybox", "empty path component"),
        ("foo//bar", "empty path component"),
        ("foo/", "empty path component"),
        ("localhost/", "repository name is empty"),
        ("localhost:5000/", "repository name is empty"),
        (
            "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "repository name is empty",
        ),
        (":latest", "repository name is empty"),
        (".busybox", "\".busybox\" must start with"),
        ("foo/.hidden", "\".hidden\" must start with"),
        ("-busybox", "must start with"),
        ("_busybox", "must start with"),
        ("foo/-bar", "must start with"),
        ("busybox-", "must end with"),
        ("busybox.", "must end with"),
        ("foo/bar_", "must end with"),
        ("a..b", "separator other than"),
        ("a___b", "separator other than"),
        ("a.-b", "separator other than"),
        ("a_-b", "separator other than"),
        ("a+b", "character other than"),
        ("foo/b%r", "character other than"),
        ("foo/ba\u{e9}r", "character other than"),
        ("localhost/..", "must start with"),
        ("foo/../bar", "must start with"),
    ];
    for (s, why) in cases {
        let e = err(s);
        assert!(
            matches!(e, ReferenceError::InvalidRepository { .. }),
            "{s:?}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{s:?}: {e}");
    }
}

#[test]
fn bad_registry_hosts() {
    let cases = [
        ("localhost:/busybox", "port must be a number"),
        // A ':' before a '/' is a port, not a tag.
        ("busybox:a/b", "port must be a number"),
        ("localhost:50a0/busybox", "port must be a number"),
        ("-host.io/busybox", "neither starts nor ends"),
        ("host-.io/busybox", "neither starts nor ends"),
        ("host..io/busybox", "empty host name component"),
        (".io/busybox", "empty host name component"),
        ("ho_st.io/busybox", "only letters"),
        ("[::1/busybox", "without a closing"),
        ("[zz::1]:5000/busybox", "not an IPv6 address"),
        ("[::1]x/busybox", "only ':<port>'"),
        ("[::1]:/busybox", "port must be a number"),
    ];
    for (s, why) in cases {
        let e = err(s);
        assert!(
            matches!(e, ReferenceError::InvalidRegistry { .. }),
            "{s:?}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{s:?}: {e}");
    }
}

#[test]
fn name_length_limit() {
    // docker.io/library/ is 18 characters; 237 more make exactly 255.
    let at_limit = "a".repeat(255 - "docker.io/library/".len());
    assert_eq!(parse(&at_limit).name().len(), 255);
    let over = "a".repeat(256 - "docker.io/library/".len());
    let e = err(&over);
    assert!(
        matches!(e, ReferenceError::NameTooLong { len: 256, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("more than the limit of 255"));
    // The limit counts the registry host too.
    let path = format!("{}/{}", "b".repeat(120), "c".repeat(120));
    assert!(matches!(
        err(&format!("registry.example.com:5000/{path}")),
        ReferenceError::NameTooLong { .. }
    ));
}
