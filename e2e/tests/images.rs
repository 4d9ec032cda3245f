//! End-to-end tests of the ImageService against a real local `docker-registry`: images built in the test from
//! busybox-static, pulled by a real `crius serve`, checked through the CRI socket and on disk. Each test ends by
//! checking that nothing was left under `<root>/images/tmp` and that crius leaked nothing.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_e2e::images::{Compression, Image, ImageBuilder, Index, LayerBuilder};
use crius_e2e::registry::{Fault, FaultProxy, Registry};
use crius_e2e::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use crius_e2e::{Crius, Options};
use tonic::Code;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull_with(
    c: &Crius,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    c.images()
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn pull(c: &Crius, image: &str) -> String {
    pull_with(c, image, None)
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"))
}

async fn status(c: &Crius, image: &str) -> crius_e2e::v1::ImageStatusResponse {
    c.images()
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list(c: &Crius, filter: Option<&str>) -> Vec<crius_e2e::v1::Image> {
    c.images()
        .list_images(ListImagesRequest {
            filter: filter.map(|f| ImageFilter { image: spec(f) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(c: &Crius, image: &str) {
    c.images()
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap_or_else(|e| panic!("remove {image}: {e:?}"));
}

fn images_dir(c: &Crius) -> PathBuf {
    c.paths().root.join("images")
}

fn layer_dirs(c: &Crius) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(images_dir(c).join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn chain_ids(info: &crius_e2e::v1::ImageStatusResponse) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&info.info["info"]).unwrap();
    v["chainIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().trim_start_matches("sha256:").to_owned())
        .collect()
}

/// No temp file or dir left, no leak of any kind.
async fn assert_clean(c: &Crius) {
    let tmp: Vec<_> = std::fs::read_dir(images_dir(c).join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    c.assert_no_leaks().await;
}

fn small_image(marker: &str) -> Image {
    ImageBuilder::new()
        .layer(LayerBuilder::busybox().build(Compression::Gzip))
        .layer(
            LayerBuilder::new()
                .dir("etc")
                .file("etc/marker", marker)
                .build(Compression::Zstd),
        )
        .user("1000:1000")
        .build()
}

#[tokio::test]
async fn pull_by_tag_and_digest_list_status_remove() {
    let registry = Registry::start();
    let c = Crius::start(Options::new()).await;
    let image = small_image("one");
    let digest = image.push(&registry, "app", "v1").unwrap();
    image.push(&registry, "app", "v2").unwrap();
    let name = format!("{}/app", registry.host());

    let id = pull(&c, &format!("{name}:v1")).await;
    assert_eq!(id, image.id());
    let by_digest = pull(&c, &format!("{name}@{digest}")).await;
    assert_eq!(by_digest, id);
    pull(&c, &format!("{name}:v2")).await;

    let all = list(&c, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let img = &all[0];
    assert_eq!(img.id, image.id());
    let mut tags = img.repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec![format!("{name}:v1"), format!("{name}:v2")]);
    assert_eq!(img.repo_digests, vec![format!("{name}@{digest}")]);
    assert_eq!(img.uid.as_ref().map(|u| u.value), Some(1000));
    let tar_sizes: u64 = image.layers.iter().map(|l| l.tar.len() as u64).sum();
    assert_eq!(img.size, tar_sizes);
    assert_eq!(list(&c, Some(&format!("{name}:v2"))).await.len(), 1);
    assert!(list(&c, Some(&format!("{name}:nope"))).await.is_empty());

    for key in [id.clone(), format!("{name}@{digest}"), format!("{name}:v1")] {
        let s = status(&c, &key).await;
        assert_eq!(
            s.image.as_ref().map(|i| i.id.as_str()),
            Some(id.as_str()),
            "{key}"
        );
    }
    let s = status(&c, &id).await;
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(info["config"]["config"]["User"], "1000:1000");
    let chains = chain_ids(&s);
    assert_eq!(chains.len(), 2);
    assert_eq!(layer_dirs(&c), {
        let mut c = chains.clone();
        c.sort();
        c
    });
    let marker = images_dir(&c)
        .join("layers")
        .join(&chains[1])
        .join("etc/marker");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "one");
    assert!(
        images_dir(&c)
            .join("layers")
            .join(&chains[0])
            .join("bin/busybox")
            .is_file()
    );

    // One tag of two: only the tag goes.
    remove(&c, &format!("{name}:v1")).await;
    let s = status(&c, &id).await;
    assert_eq!(s.image.unwrap().repo_tags, vec![format!("{name}:v2")]);
    assert!(status(&c, &format!("{name}:v1")).await.image.is_none());
    // By digest: the image and its layers go.
    remove(&c, &format!("{name}@{digest}")).await;
    assert!(status(&c, &id).await.image.is_none());
    assert!(list(&c, None).await.is_empty());
    assert!(layer_dirs(&c).is_empty());
    // Idempotent.
    remove(&c, &id).await;
    remove(&c, &format!("{name}:v2")).await;

    // By id removes every tag.
    pull(&c, &format!("{name}:v1")).await;
    pull(&c, &format!("{name}:v2")).await;
    remove(&c, &id).await;
    assert!(list(&c, None).await.is_empty());
    assert!(layer_dirs(&c).is_empty());

    let fs = c
        .images()
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let img_fs = &fs.image_filesystems[0];
    assert_eq!(
        img_fs.fs_id.as_ref().unwrap().mountpoint,
        images_dir(&c).display().to_string()
    );
    assert!(img_fs.used_bytes.as_ref().unwrap().value > 0);
    assert!(img_fs.inodes_used.as_ref().unwrap().value >= 3);
    assert!(img_fs.timestamp > 0);
    assert_clean(&c).await;
}

#[tokio::test]
async fn shared_layers_are_downloaded_once_and_kept_while_used() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(&registry, vec![]);
    let c = Crius::start(Options::new()).await;
    let a = small_image("a");
    let b = small_image("b");
    assert_eq!(a.layers[0].blob.digest, b.layers[0].blob.digest);
    a.push(&registry, "a", "1").unwrap();
    b.push(&registry, "b", "1").unwrap();
    let base = a.layers[0].blob.digest.clone();

    pull(&c, &format!("{}/a:1", proxy.host())).await;
    pull(&c, &format!("{}/b:1", proxy.host())).await;
    assert_eq!(proxy.count("GET", &base), 1, "{:?}", proxy.requests());
    assert_eq!(layer_dirs(&c).len(), 3);
    remove(&c, &format!("{}/a:1", proxy.host())).await;
    let b_chains = chain_ids(&status(&c, b.id()).await);
    let mut want = b_chains.clone();
    want.sort();
    assert_eq!(layer_dirs(&c), want, "b's layers stay, a's top layer goes");
    remove(&c, b.id()).await;
    assert!(layer_dirs(&c).is_empty());
    assert_clean(&c).await;
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys\ntry: print(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False).decode())\nexcept OSError: pass",
        ])
        .arg(path)
        .arg(name)
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    (!s.is_empty()).then_some(s)
}

#[tokio::test]
async fn docker_image_with_whiteouts_unpacks_to_overlay_form() {
    let registry = Registry::start();
    let c = Crius::start(Options::new()).await;
    let base = LayerBuilder::busybox()
        .dir("data")
        .file("data/a", "a")
        .file("data/b", "b")
        .dir("var")
        .dir("var/cache")
        .file("var/cache/old", "o");
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
        .layer(
            LayerBuilder::new()
                .dir("etc")
                .file("etc/x", "x")
                .build(Compression::None),
        )
        .layer(top.build(Compression::Zstd))
        .user("alice")
        .build();
    image.push(&registry, "multi", "v1").unwrap();
    let id = pull(&c, &format!("{}/multi:v1", registry.host())).await;
    assert_eq!(id, image.id());
    let s = status(&c, &id).await;
    assert_eq!(s.image.as_ref().unwrap().username, "alice");
    assert!(s.image.as_ref().unwrap().uid.is_none());
    let chains = chain_ids(&s);
    let top_dir = images_dir(&c).join("layers").join(&chains[2]);
    let wh = std::fs::symlink_metadata(top_dir.join("data/a")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is a 0:0 char device"
    );
    assert_eq!(wh.rdev(), 0);
    assert!(!top_dir.join("data/.wh.a").exists());
    assert_eq!(
        xattr(&top_dir.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some("y")
    );
    assert_eq!(
        std::fs::read_to_string(top_dir.join("var/cache/new")).unwrap(),
        "n"
    );
    let base_dir = images_dir(&c).join("layers").join(&chains[0]);
    assert_eq!(
        std::fs::read_to_string(base_dir.join("data/a")).unwrap(),
        "a"
    );
    assert!(base_dir.join("var/cache/old").is_file());
    assert_clean(&c).await;
}

#[tokio::test]
async fn multi_platform_index_picks_this_platform() {
    let registry = Registry::start();
    let c = Crius::start(Options::new()).await;
    let layer = LayerBuilder::busybox().build(Compression::Gzip);
    let build = |arch: &str, variant: Option<&str>| {
        ImageBuilder::new()
            .layer(layer.clone())
            .platform(arch, variant)
            .build()
    };
    let index = Index::new(vec![
        build("arm64", Some("v8")),
        build("amd64", None),
        build("arm", Some("v7")),
    ]);
    let digest = index.push(&registry, "multi", "latest").unwrap();
    let name = format!("{}/multi", registry.host());
    let id = pull(&c, &name).await;
    assert_eq!(id, index.image("amd64", None).unwrap().id());
    let img = status(&c, &id).await.image.unwrap();
    assert_eq!(img.repo_digests, vec![format!("{name}@{digest}")]);
    assert_eq!(img.repo_tags, vec![format!("{name}:latest")]);
    assert_clean(&c).await;
}

fn spawn_pulls(
    c: &Crius,
    reference: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<String, tonic::Status>>> {
    (0..n)
        .map(|_| {
            let mut client = c.images();
            let r = reference.to_owned();
            tokio::spawn(async move {
                client
                    .pull_image(PullImageRequest {
                        image: spec(&r),
                        auth: None,
                        sandbox_config: None,
                    })
                    .await
                    .map(|r| r.into_inner().image_ref)
            })
        })
        .collect()
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_one_download() {
    let registry = Registry::start();
    let image = small_image("c");
    image.push(&registry, "conc", "1").unwrap();
    let c = Crius::start(Options::new().set("image_pull_progress_timeout", "\"3s\"")).await;

    // A stalled layer holds the first pull for 3 s: the others arrive while it runs and must join it, so the
    // registry sees one manifest request and one blob request, and every caller gets the same failure.
    let stalled = FaultProxy::start(
        &registry,
        vec![Fault::Stall(image.layers[0].blob.digest.clone())],
    );
    for t in spawn_pulls(&c, &format!("{}/conc:1", stalled.host()), 4) {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    assert_eq!(
        stalled.count("GET", "/manifests/"),
        1,
        "{:?}",
        stalled.requests()
    );
    assert_eq!(
        stalled.count("GET", &image.layers[0].blob.digest),
        1,
        "{:?}",
        stalled.requests()
    );
    drop(stalled);

    let proxy = FaultProxy::start(&registry, vec![]);
    for t in spawn_pulls(&c, &format!("{}/conc:1", proxy.host()), 4) {
        assert_eq!(t.await.unwrap().unwrap(), image.id());
    }
    for l in &image.layers {
        assert_eq!(
            proxy.count("GET", &l.blob.digest),
            1,
            "{:?}",
            proxy.requests()
        );
    }
    assert_clean(&c).await;
}

#[tokio::test]
async fn a_client_that_gives_up_cancels_the_download() {
    let registry = Registry::start();
    let image = small_image("x");
    image.push(&registry, "cancel", "1").unwrap();
    // The top layer stalls; the base layer arrives and is unpacked, and must go again when the pull is cancelled.
    let proxy = FaultProxy::start(
        &registry,
        vec![Fault::Stall(image.layers[1].blob.digest.clone())],
    );
    let c = Crius::start(Options::new()).await;
    let mut req = tonic::Request::new(PullImageRequest {
        image: spec(&format!("{}/cancel:1", proxy.host())),
        auth: None,
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let err = c.images().pull_image(req).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // crius gives the download up (default progress timeout: 5 minutes, so only the cancel can end it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&c.paths().crius_log).unwrap();
        let tmp_empty = std::fs::read_dir(images_dir(&c).join("tmp"))
            .unwrap()
            .next()
            .is_none();
        if log.contains("pull cancelled") && tmp_empty && layer_dirs(&c).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pull was not cancelled:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&c.paths().crius_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("layer unpacked")
                && l.contains(image.layers[0].blob.digest.as_str())),
        "the base layer was never unpacked, so its cleanup is untested:\n{log}"
    );
    assert!(list(&c, None).await.is_empty());
    assert_clean(&c).await;
}

#[tokio::test]
async fn a_blob_with_a_wrong_digest_is_rejected_and_nothing_is_stored() {
    let registry = Registry::start();
    let image = small_image("w");
    image.push(&registry, "bad", "1").unwrap();
    let proxy = FaultProxy::start(
        &registry,
        vec![Fault::Corrupt(image.layers[1].blob.digest.clone())],
    );
    let c = Crius::start(Options::new()).await;
    let err = pull_with(&c, &format!("{}/bad:1", proxy.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(
        err.message().contains("does not match its digest"),
        "{err:?}"
    );
    assert!(list(&c, None).await.is_empty());
    // Neither the corrupt layer nor the good one that came with it stays.
    assert!(layer_dirs(&c).is_empty(), "{:?}", layer_dirs(&c));
    assert_clean(&c).await;
}

#[tokio::test]
async fn a_stalled_blob_fails_the_pull_after_the_progress_timeout() {
    let registry = Registry::start();
    let image = small_image("s");
    image.push(&registry, "stall", "1").unwrap();
    let proxy = FaultProxy::start(
        &registry,
        vec![Fault::Stall(image.layers[0].blob.digest.clone())],
    );
    let c = Crius::start(Options::new().set("image_pull_progress_timeout", "\"2s\"")).await;
    let start = Instant::now();
    let err = pull_with(&c, &format!("{}/stall:1", proxy.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("no progress"), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(list(&c, None).await.is_empty());
    assert_clean(&c).await;
}

#[tokio::test]
async fn registry_errors_have_their_codes() {
    let registry = Registry::start();
    let c = Crius::start(Options::new()).await;
    let err = pull_with(&c, &format!("{}/nothing:here", registry.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = Instant::now();
    let err = pull_with(&c, &format!("127.0.0.1:{port}/x:1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let err = pull_with(&c, "Bad Name", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_clean(&c).await;
}

#[tokio::test]
async fn htpasswd_registry_needs_the_request_credentials() {
    let registry = Registry::start_with_htpasswd("tester", "s3cret");
    let image = small_image("auth");
    image.push(&registry, "private", "1").unwrap();
    let c = Crius::start(Options::new()).await;
    let reference = format!("{}/private:1", registry.host());
    let err = pull_with(&c, &reference, None).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    let wrong = AuthConfig {
        username: "tester".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull_with(&c, &reference, Some(wrong)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    assert!(
        !err.message().contains("wrong"),
        "the password is in the error: {err:?}"
    );
    let good = AuthConfig {
        username: "tester".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&c, &reference, Some(good)).await.unwrap(),
        image.id()
    );
    remove(&c, image.id()).await;
    // The same credentials as `auth` (base64 of user:password).
    let encoded = AuthConfig {
        auth: "dGVzdGVyOnMzY3JldA==".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&c, &reference, Some(encoded)).await.unwrap(),
        image.id()
    );
    let log = std::fs::read_to_string(&c.paths().crius_log).unwrap();
    assert!(!log.contains("s3cret"), "a password reached the log");
    assert_clean(&c).await;
}

#[tokio::test]
async fn restart_keeps_images() {
    let registry = Registry::start();
    let mut c = Crius::start(Options::new()).await;
    let image = small_image("r");
    image.push(&registry, "keep", "1").unwrap();
    let reference = format!("{}/keep:1", registry.host());
    pull(&c, &reference).await;
    let before = layer_dirs(&c);
    c.stop();
    c.launch().await.unwrap();
    let s = status(&c, &reference).await;
    assert_eq!(s.image.unwrap().id, image.id());
    assert_eq!(layer_dirs(&c), before);
    assert_clean(&c).await;
}

#[tokio::test]
async fn mirrors_serve_public_names() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(&registry, vec![]);
    let mirrors = format!(
        "{{ \"registry.k8s.io\" = {{ mirrors = [\"http://{0}\"] }}, \"docker.io\" = {{ mirrors = [\"http://{0}\"] }} }}",
        proxy.host()
    );
    let c = Crius::start(Options::new().set("registries", &mirrors)).await;
    let pause = small_image("pause");
    pause.push(&registry, "pause", "3.9").unwrap();
    let busybox = small_image("busybox");
    busybox
        .push(&registry, "library/busybox", "latest")
        .unwrap();

    assert_eq!(pull(&c, "registry.k8s.io/pause:3.9").await, pause.id());
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/pause/manifests/3.9")),
        "{:?}",
        proxy.requests()
    );
    assert_eq!(pull(&c, "busybox").await, busybox.id());
    let tags: Vec<Vec<String>> = list(&c, None)
        .await
        .into_iter()
        .map(|i| i.repo_tags)
        .collect();
    assert!(
        tags.contains(&vec!["registry.k8s.io/pause:3.9".to_string()]),
        "{tags:?}"
    );
    assert!(
        tags.contains(&vec!["docker.io/library/busybox:latest".to_string()]),
        "{tags:?}"
    );
    assert_eq!(
        status(&c, "registry.k8s.io/pause:3.9")
            .await
            .image
            .unwrap()
            .id,
        pause.id()
    );
    assert_clean(&c).await;
}

#[tokio::test]
async fn a_dead_mirror_falls_back_to_the_registry() {
    let registry = Registry::start();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mirrors = format!(
        "{{ \"{}\" = {{ mirrors = [\"http://127.0.0.1:{dead}\"] }} }}",
        registry.host()
    );
    let c = Crius::start(Options::new().set("registries", &mirrors)).await;
    let image = small_image("fallback");
    image.push(&registry, "fb", "1").unwrap();
    let reference = format!("{}/fb:1", registry.host());
    assert_eq!(pull(&c, &reference).await, image.id());
    let log = std::fs::read_to_string(&c.paths().crius_log).unwrap();
    assert!(log.contains("mirror failed"), "{log}");
    assert_eq!(list(&c, None).await[0].repo_tags, vec![reference]);
    assert_clean(&c).await;
}

#[tokio::test]
async fn restart_clears_half_done_pulls_and_orphan_layers() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(&registry, vec![]);
    let mut c = Crius::start(Options::new()).await;
    let image = small_image("kept");
    image.push(&registry, "kept", "1").unwrap();
    let reference = format!("{}/kept:1", proxy.host());
    pull(&c, &reference).await;
    let chains = chain_ids(&status(&c, &reference).await);
    let before = layer_dirs(&c);
    assert_eq!(before.len(), 2, "{before:?}");
    c.stop();

    // What a crash mid-pull leaves: a partial blob and a half-unpacked layer in tmp/, and a layer under its
    // chain id that no image record names (the crash came before the image was recorded).
    let tmp = images_dir(&c).join("tmp");
    std::fs::write(tmp.join("blob-999999-0"), b"half a blob").unwrap();
    std::fs::create_dir_all(tmp.join("layer-999999-1/usr/bin")).unwrap();
    std::fs::write(tmp.join("layer-999999-1/usr/bin/half"), b"x").unwrap();
    let orphan_id = crius_e2e::registry::sha256_digest(b"a layer no image uses");
    let orphan = images_dir(&c)
        .join("layers")
        .join(orphan_id.trim_start_matches("sha256:"));
    assert!(!before.contains(&orphan.file_name().unwrap().to_string_lossy().into_owned()));
    std::fs::create_dir_all(orphan.join("etc")).unwrap();
    std::fs::write(orphan.join("etc/orphan"), b"o").unwrap();

    c.launch().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "tmp/ was not emptied at startup: {left:?}");
    assert!(!orphan.exists(), "the orphan layer survived the restart");
    assert_eq!(layer_dirs(&c), before, "the image's layers are kept");
    let img = status(&c, &reference).await.image.unwrap();
    assert_eq!(img.id, image.id());
    assert_eq!(img.repo_tags, vec![reference.clone()]);
    assert_eq!(list(&c, None).await.len(), 1);
    let layers = images_dir(&c).join("layers");
    assert_eq!(
        std::fs::read_to_string(layers.join(&chains[1]).join("etc/marker")).unwrap(),
        "kept"
    );
    assert!(layers.join(&chains[0]).join("bin/busybox").is_file());
    // The layer records survived too: pulling again downloads no layer.
    pull(&c, &reference).await;
    for l in &image.layers {
        assert_eq!(
            proxy.count("GET", &l.blob.digest),
            1,
            "{:?}",
            proxy.requests()
        );
    }
    assert_clean(&c).await;
}
