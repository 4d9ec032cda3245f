//! The image-test fixtures against a real `docker-registry`: every kind of test image pushes and reads back
//! byte for byte, the fault proxy corrupts and stalls exactly what it is told to, the htpasswd registry refuses
//! anonymous pulls, and dropping a registry leaves no process and no directory.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crius_e2e::images::{
    ALL_MANIFEST_TYPES, Compression, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Group, Image,
    ImageBuilder, Index, LayerBuilder, OCI_INDEX, OCI_MANIFEST, User, decompress,
};
use crius_e2e::registry::{Fault, FaultProxy, Registry, sha256_digest};
use serde_json::Value;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

/// Fetches the manifest of `repository:reference` and every blob it names, and checks all of it against
/// `image`: bytes, digests, sizes, media types, and the config's diff_ids against the decompressed layers.
fn assert_round_trip(registry: &Registry, repository: &str, reference: &str, image: &Image) {
    let reply = registry
        .get(
            &format!("/v2/{repository}/manifests/{reference}"),
            ALL_MANIFEST_TYPES,
        )
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.body, image.manifest.bytes);
    assert_eq!(
        reply.header("content-type"),
        Some(image.manifest.media_type.as_str())
    );
    assert_eq!(reply.header("docker-content-digest"), Some(image.digest()));

    let manifest = json(&reply.body);
    assert_eq!(manifest["mediaType"], image.manifest.media_type.as_str());
    assert_eq!(manifest["config"]["digest"], image.id());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), image.layers.len());
    let config = registry
        .get(&format!("/v2/{repository}/blobs/{}", image.id()), &[])
        .unwrap();
    assert_eq!(config.status, 200);
    assert_eq!(sha256_digest(&config.body), image.id());
    let config = json(&config.body);
    for (i, (descriptor, layer)) in layers.iter().zip(&image.layers).enumerate() {
        assert_eq!(descriptor["digest"], layer.blob.digest.as_str());
        assert_eq!(descriptor["size"], layer.blob.size());
        assert_eq!(descriptor["mediaType"], layer.blob.media_type.as_str());
        let path = format!("/v2/{repository}/blobs/{}", layer.blob.digest);
        let head = registry.head(&path).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-length"),
            Some(layer.blob.size().to_string().as_str())
        );
        let blob = registry.get(&path, &[]).unwrap();
        assert_eq!(sha256_digest(&blob.body), layer.blob.digest);
        let tar = decompress(&blob.body, layer.compression).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][i],
            sha256_digest(&tar).as_str()
        );
    }
}

#[test]
fn busybox_image_round_trips_and_has_a_usable_root() {
    let registry = Registry::start();
    let layer = LayerBuilder::busybox().build(Compression::Gzip);
    let image = ImageBuilder::new()
        .layer(layer.clone())
        .user("nobody")
        .env("GREETING=hello")
        .cmd(&["sleep", "3600"])
        .working_dir("/tmp")
        .build();
    let digest = image.push(&registry, "busybox", "latest").unwrap();
    assert_eq!(digest, image.digest());
    assert_round_trip(&registry, "busybox", "latest", &image);
    assert_round_trip(&registry, "busybox", image.digest(), &image);

    let config = json(&image.config.bytes);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["User"], "nobody");
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["sleep", "3600"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/tmp");
    assert_eq!(config["config"]["Env"][1], "GREETING=hello");

    // The layer is a real root: busybox from this machine, applets linked to it, /etc/passwd. GNU tar (an
    // independent reader) lists it too.
    let names = tar_names(&layer.tar);
    for name in [
        "bin/busybox",
        "bin/sh",
        "bin/sleep",
        "etc/passwd",
        "etc/group",
        "tmp",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layer.tar"), &layer.tar).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(dir.path().join("layer.tar"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains("bin/sh -> busybox"), "{listing}");
    assert!(listing.contains("drwxrwxrwt"), "tmp is 1777: {listing}");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut archive = tar::Archive::new(&layer.tar[..]);
    let mut entry = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path_bytes().as_ref() == b"bin/busybox")
        .unwrap();
    let mut contents = Vec::new();
    entry.read_to_end(&mut contents).unwrap();
    assert!(contents == busybox, "bin/busybox differs from /bin/busybox");
}

#[test]
fn multi_layer_docker_image_with_whiteouts_and_every_compression() {
    let registry = Registry::start();
    let base = LayerBuilder::busybox()
        .dir("data")
        .file("data/a", "a")
        .file("data/b", "b");
    let users = LayerBuilder::new().dir("etc").users(
        &[
            User::new("root", 0, 0),
            User::new("alice", 1000, 1000),
            User::new("bob", 1001, 100),
        ],
        &[
            Group::new("root", 0, &[]),
            Group::new("alice", 1000, &[]),
            Group::new("users", 100, &["alice", "bob"]),
        ],
    );
    let top = LayerBuilder::new()
        .dir("data")
        .whiteout("data/a")
        .dir("var")
        .dir("var/cache")
        .opaque("var/cache")
        .file("var/cache/new", "n");
    let image = ImageBuilder::new()
        .docker()
        .layer(base.build(Compression::Gzip))
        .layer(users.build(Compression::None))
        .layer(top.build(Compression::Zstd))
        .user("alice")
        .build();
    image.push(&registry, "team/multi", "v1").unwrap();
    assert_eq!(image.manifest.media_type, DOCKER_MANIFEST);
    assert_round_trip(&registry, "team/multi", "v1", &image);
    let manifest = json(&image.manifest.bytes);
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ]
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    let names = tar_names(&image.layers[2].tar);
    assert!(names.contains(&"data/.wh.a".to_string()), "{names:?}");
    assert!(
        names.contains(&"var/cache/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    let mut passwd = String::new();
    tar::Archive::new(&image.layers[1].tar[..])
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path_bytes().as_ref() == b"etc/passwd")
        .unwrap()
        .read_to_string(&mut passwd)
        .unwrap();
    assert!(
        passwd.contains("alice:x:1000:1000:alice:/home/alice:/bin/sh\n"),
        "{passwd}"
    );

    // A second image sharing the base layer: the registry already has it, the digests are equal.
    let other = ImageBuilder::new()
        .layer(base.build(Compression::Gzip))
        .build();
    assert_eq!(other.layers[0].blob.digest, image.layers[0].blob.digest);
    other.push(&registry, "team/multi", "v2").unwrap();
    assert_round_trip(&registry, "team/multi", "v2", &other);
}

#[test]
fn multi_platform_index_and_manifest_list() {
    let registry = Registry::start();
    let layer = LayerBuilder::busybox().build(Compression::Gzip);
    for (docker, repository) in [(false, "multi/oci"), (true, "multi/docker")] {
        let builder = |arch: &str, variant: Option<&str>| {
            let b = ImageBuilder::new()
                .layer(layer.clone())
                .platform(arch, variant);
            if docker {
                b.docker().build()
            } else {
                b.build()
            }
        };
        let index = Index::new(vec![
            builder("amd64", None),
            builder("arm64", Some("v8")),
            builder("arm", Some("v7")),
        ]);
        let digest = index.push(&registry, repository, "latest").unwrap();
        assert_eq!(digest, index.digest());
        let reply = registry
            .get(
                &format!("/v2/{repository}/manifests/latest"),
                ALL_MANIFEST_TYPES,
            )
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, index.manifest.bytes);
        let expected_type = if docker {
            DOCKER_MANIFEST_LIST
        } else {
            OCI_INDEX
        };
        assert_eq!(reply.header("content-type"), Some(expected_type));
        let parsed = json(&reply.body);
        let entries = parsed["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0]["platform"],
            serde_json::json!({"os": "linux", "architecture": "amd64"})
        );
        assert_eq!(
            entries[1]["platform"],
            serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        );
        for image in &index.images {
            assert_round_trip(&registry, repository, image.digest(), image);
        }
        // arm64 reuses the amd64 layer with its own config.
        let amd64 = index.image("amd64", None).unwrap();
        let arm64 = index.image("arm64", Some("v8")).unwrap();
        assert_eq!(amd64.layers[0].blob.digest, arm64.layers[0].blob.digest);
        assert_ne!(amd64.id(), arm64.id());
        assert_eq!(json(&arm64.config.bytes)["variant"], "v8");
        if !docker {
            assert_eq!(amd64.manifest.media_type, OCI_MANIFEST);
        }
    }
}

#[test]
fn corrupt_blobs_keep_their_size_and_only_the_digest_tells() {
    let registry = Registry::start();
    let good = LayerBuilder::new()
        .file("good", "g")
        .build(Compression::Gzip);
    let bad = LayerBuilder::new()
        .file("bad", "b")
        .build(Compression::None);
    let image = ImageBuilder::new()
        .layer(good.clone())
        .layer(bad.clone())
        .build();
    image.push(&registry, "corrupt", "latest").unwrap();

    // Through the proxy: only the named blob changes, in its last byte; the manifest passes untouched.
    let proxy = FaultProxy::start(&registry, vec![Fault::Corrupt(bad.blob.digest.clone())]);
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent();
    let fetch = |path: &str| -> Vec<u8> {
        let mut reply = http
            .get(&proxy.url(path))
            .header("Accept", OCI_MANIFEST)
            .call()
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        reply.body_mut().read_to_vec().unwrap()
    };
    assert_eq!(fetch("/v2/corrupt/manifests/latest"), image.manifest.bytes);
    assert_eq!(
        fetch(&format!("/v2/corrupt/blobs/{}", good.blob.digest)),
        good.blob.bytes
    );
    let served = fetch(&format!("/v2/corrupt/blobs/{}", bad.blob.digest));
    assert_eq!(served.len(), bad.blob.bytes.len());
    assert_ne!(sha256_digest(&served), bad.blob.digest);
    let differing: Vec<usize> = (0..served.len())
        .filter(|&i| served[i] != bad.blob.bytes[i])
        .collect();
    assert_eq!(differing, [served.len() - 1]);
    // An uncompressed layer corrupted in its padding still reads as the same tar.
    assert_eq!(tar_names(&served), tar_names(&bad.tar));
    assert_eq!(proxy.count("GET", &bad.blob.digest), 1);
    assert_eq!(proxy.count("GET", "/manifests/latest"), 1);
    assert_eq!(proxy.requests().len(), 3);
    drop(proxy);

    // Behind the registry's back, on disk: it keeps serving the blob under its digest with the same size.
    registry.corrupt_blob(&good.blob.digest).unwrap();
    let path = format!("/v2/corrupt/blobs/{}", good.blob.digest);
    let head = registry.head(&path).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        Some(good.blob.digest.as_str())
    );
    let served = registry.get(&path, &[]).unwrap();
    assert_eq!(served.body.len(), good.blob.bytes.len());
    assert_ne!(sha256_digest(&served.body), good.blob.digest);
}

#[test]
fn stalled_blob_sends_half_then_nothing() {
    let registry = Registry::start();
    let layer = LayerBuilder::new()
        .file("big", vec![42u8; 100_000])
        .build(Compression::None);
    let image = ImageBuilder::new().layer(layer.clone()).build();
    image.push(&registry, "stall", "latest").unwrap();
    let proxy = FaultProxy::start(&registry, vec![Fault::Stall(layer.blob.digest.clone())]);

    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    write!(
        stream,
        "GET /v2/stall/blobs/{} HTTP/1.1\r\nHost: {}\r\n\r\n",
        layer.blob.digest,
        proxy.host()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 65536];
    let error = loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!("the proxy closed a stalled response"),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{error}"
    );
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", layer.blob.size())),
        "{head}"
    );
    assert_eq!(received.len() - head_end, layer.blob.bytes.len() / 2);
    // Other requests still pass while one is stalled; dropping the proxy ends the stall (Drop joins threads).
    let manifest = ureq::get(&proxy.url("/v2/stall/manifests/latest"))
        .header("Accept", OCI_MANIFEST)
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    assert_eq!(manifest, image.manifest.bytes);
    drop(proxy);
    let mut rest = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "nothing more after the stall: {} bytes",
        rest.len()
    );
}

#[test]
fn htpasswd_registry_refuses_anonymous_pulls() {
    let registry = Registry::start_with_htpasswd("tester", "s3cret");
    assert_eq!(registry.credentials(), Some(("tester", "s3cret")));
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("f", "x").build(Compression::Gzip))
        .build();
    image.push(&registry, "private/app", "v1").unwrap();
    assert_round_trip(&registry, "private/app", "v1", &image);

    for path in ["/v2/", "/v2/private/app/manifests/v1"] {
        let reply = registry.get_anonymous(path, ALL_MANIFEST_TYPES).unwrap();
        assert_eq!(reply.status, 401, "{path}");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Basic realm="),
            "{path}: {challenge:?}"
        );
        assert!(challenge.contains("crius-test-registry"), "{challenge}");
    }
    let reply = registry
        .get_anonymous(&format!("/v2/private/app/blobs/{}", image.id()), &[])
        .unwrap();
    assert_eq!(reply.status, 401);
    // Wrong password: refused too.
    let wrong = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent()
        .get(&registry.url("/v2/private/app/manifests/v1"))
        .header("Authorization", "Basic dGVzdGVyOndyb25n") // tester:wrong
        .call()
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[test]
fn drop_kills_and_reaps_the_registry_and_removes_its_dir() {
    let registry = Registry::start();
    let dir = registry.dir().to_path_buf();
    let addr = registry.addr();
    assert!(dir.join("config.yml").exists());
    let reply = registry.get("/v2/", &[]).unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        registry.log().contains(&addr.to_string()),
        "{}",
        registry.log()
    );
    let pid = registry.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(registry);
    // Reaped, not a zombie: the /proc entry is gone.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry pid {pid} left behind"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        TcpStream::connect(addr).is_err(),
        "something still listens on {addr}"
    );
}
