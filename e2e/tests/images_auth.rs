//! End-to-end tests of registry credentials: the bearer-token flow against a real `docker-registry` (its `silly`
//! access controller) and a [`TokenServer`], a registry token used as is, and a mirror that never receives the
//! request's credentials. What went over the wire is read from [`FaultProxy`]'s recorded requests and the token
//! server's. Each test ends by checking that nothing was left under `<root>/images/tmp` and that crius leaked
//! nothing.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use crius_e2e::images::{ALL_MANIFEST_TYPES, Compression, Image, ImageBuilder, LayerBuilder};
use crius_e2e::registry::{
    FaultProxy, RecordedRequest, Registry, TOKEN_SERVICE, TokenServer, basic_authorization,
};
use crius_e2e::v1::{AuthConfig, ImageSpec, ListImagesRequest, PullImageRequest};
use crius_e2e::{Crius, Options};
use tonic::Code;

const USER: &str = "tester";
const PASSWORD: &str = "s3cret-7d1c";

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

fn basic(user: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    }
}

async fn pull_with(c: &Crius, image: &str, auth: AuthConfig) -> Result<String, tonic::Status> {
    c.images()
        .pull_image(PullImageRequest {
            image: spec(image),
            auth: Some(auth),
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn list(c: &Crius) -> Vec<crius_e2e::v1::Image> {
    c.images()
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

fn images_dir(c: &Crius) -> PathBuf {
    c.paths().root.join("images")
}

fn dir_entries(dir: PathBuf) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn crius_log(c: &Crius) -> String {
    std::fs::read_to_string(&c.paths().crius_log).unwrap()
}

/// No temp file or dir left, no leak of any kind.
async fn assert_clean(c: &Crius) {
    let tmp = dir_entries(images_dir(c).join("tmp"));
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
        .build()
}

/// The content requests (manifests, blobs) a proxy saw; panics unless the manifest `tag`, the config and
/// every layer of `image` are among them, so a check over them cannot pass vacuously.
fn content_requests(proxy: &FaultProxy, tag: &str, image: &Image) -> Vec<RecordedRequest> {
    let content: Vec<RecordedRequest> = proxy
        .recorded()
        .into_iter()
        .filter(RecordedRequest::is_content)
        .collect();
    let seen = |needle: &str| content.iter().any(|r| r.target.contains(needle));
    assert!(
        seen(&format!("/manifests/{tag}")),
        "no manifest request for {tag}: {:?}",
        proxy.requests()
    );
    for digest in image
        .layers
        .iter()
        .map(|l| l.blob.digest.as_str())
        .chain([image.id()])
    {
        assert!(
            seen(&format!("/blobs/{digest}")),
            "blob {digest} was not fetched: {:?}",
            proxy.requests()
        );
    }
    content
}

/// Mirrors are pulled from anonymously: not one request to them may carry an Authorization header.
fn assert_no_authorization(mirrors: &[&FaultProxy]) {
    for mirror in mirrors {
        for r in mirror.recorded() {
            assert_eq!(
                r.authorization(),
                None,
                "mirror {} got credentials: {r:?}",
                mirror.host()
            );
        }
    }
}

/// The fixture itself: the silly-auth registry challenges with the token realm, lets any Authorization
/// through; the token server grants the right credentials only. (The crius tests below rely on both.)
#[test]
fn token_auth_fixture_challenges_and_grants() {
    let tokens = TokenServer::start(USER, PASSWORD);
    let registry = Registry::start_with_token_auth(&tokens.realm());
    let image = small_image("fixture");
    image.push(&registry, "team/app", "1").unwrap();

    let anonymous = registry
        .get_anonymous("/v2/team/app/manifests/1", ALL_MANIFEST_TYPES)
        .unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\",scope=\"repository:team/app:pull\"",
                tokens.realm()
            )
            .as_str()
        )
    );
    assert_eq!(
        registry
            .get("/v2/team/app/manifests/1", ALL_MANIFEST_TYPES)
            .unwrap()
            .status,
        200
    );

    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent();
    let url = format!(
        "{}?scope=repository%3Ateam%2Fapp%3Apull&service={TOKEN_SERVICE}",
        tokens.realm()
    );
    let ask = |authorization: Option<String>| {
        let mut request = http.get(&url);
        if let Some(a) = authorization {
            request = request.header("Authorization", a);
        }
        let mut response = request.call().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    };
    let (status, body) = ask(Some(basic_authorization(USER, PASSWORD)));
    assert_eq!(status, 200, "{body}");
    let granted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = granted["token"].as_str().unwrap();
    assert_eq!(token.len(), 32);
    assert_eq!(granted["access_token"], token);
    assert_eq!(granted["expires_in"], 300);
    assert_eq!(ask(Some(basic_authorization(USER, "wrong"))).0, 401);
    assert_eq!(ask(None).0, 401);
    let (status, body) = ask(Some(basic_authorization(USER, PASSWORD)));
    assert_eq!(status, 200);
    assert!(!body.contains(token), "a second grant has a new token");

    let seen = tokens.requests();
    assert_eq!(
        seen.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 401, 401, 200]
    );
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path(), "/token");
    assert_eq!(
        seen[0].query("scope").as_deref(),
        Some("repository:team/app:pull")
    );
    assert_eq!(seen[0].query("service").as_deref(), Some(TOKEN_SERVICE));
    assert_eq!(seen[2].authorization, None);
    assert_eq!(tokens.issued().len(), 2);
    assert_eq!(tokens.issued()[0], token);

    let open = TokenServer::start_allowing_anonymous(USER, PASSWORD);
    let url = format!("{}?scope=x", open.realm());
    assert_eq!(http.get(&url).call().unwrap().status(), 200);
    let wrong = http
        .get(&url)
        .header("Authorization", basic_authorization(USER, "wrong"))
        .call()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let addr = open.addr();
    drop(open);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the token server still listens on {addr}"
    );
}

/// (a) The request's username/password go to the token realm the registry names (one GET, with the service
/// and the repository's pull scope); the token it grants is what every manifest and blob request carries.
#[tokio::test]
async fn bearer_token_flow_uses_the_request_credentials_at_the_realm() {
    let tokens = TokenServer::start(USER, PASSWORD);
    let registry = Registry::start_with_token_auth(&tokens.realm());
    let proxy = FaultProxy::start(&registry, vec![]);
    let image = small_image("token");
    image.push(&registry, "team/app", "1").unwrap();
    let c = Crius::start(Options::new()).await;
    let reference = format!("{}/team/app:1", proxy.host());

    let id = pull_with(&c, &reference, basic(USER, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e:?}"));
    assert_eq!(id, image.id());

    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "one token for the whole pull: {asked:?}");
    let t = &asked[0];
    assert_eq!(
        (t.method.as_str(), t.path(), t.status),
        ("GET", "/token", 200)
    );
    assert_eq!(t.query("service").as_deref(), Some(TOKEN_SERVICE), "{t:?}");
    assert_eq!(
        t.query("scope").as_deref(),
        Some("repository:team/app:pull"),
        "{t:?}"
    );
    assert_eq!(
        t.authorization.as_deref(),
        Some(basic_authorization(USER, PASSWORD).as_str())
    );
    let bearer = format!("Bearer {}", t.token.as_deref().unwrap());
    for r in content_requests(&proxy, "1", &image) {
        assert_eq!(r.authorization(), Some(bearer.as_str()), "{r:?}");
    }

    let images = list(&c).await;
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].repo_tags, vec![reference]);
    let log = crius_log(&c);
    assert!(!log.contains(PASSWORD), "the password reached the log");
    assert!(
        !log.contains(t.token.as_deref().unwrap()),
        "the token reached the log"
    );
    assert_clean(&c).await;
}

/// (b) A token server that refuses the credentials fails the pull as an auth failure, before any layer is
/// stored; the same crius then pulls with the right password (the failure was the password, and left
/// nothing in the way).
#[tokio::test]
async fn a_token_server_refusing_the_credentials_fails_the_pull() {
    let tokens = TokenServer::start(USER, PASSWORD);
    let registry = Registry::start_with_token_auth(&tokens.realm());
    let proxy = FaultProxy::start(&registry, vec![]);
    let image = small_image("refused");
    image.push(&registry, "app", "1").unwrap();
    let c = Crius::start(Options::new()).await;
    let reference = format!("{}/app:1", proxy.host());

    let wrong = "not-the-password-41e2";
    let err = pull_with(&c, &reference, basic(USER, wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    assert!(!err.message().contains(wrong), "the password is in {err:?}");
    let asked = tokens.requests();
    assert!(!asked.is_empty(), "the token server was never asked");
    for t in &asked {
        assert_eq!(
            t.authorization.as_deref(),
            Some(basic_authorization(USER, wrong).as_str())
        );
        assert_eq!(t.status, 401, "{t:?}");
    }
    assert!(tokens.issued().is_empty());
    assert_eq!(proxy.count("GET", "/blobs/"), 0, "{:?}", proxy.requests());
    assert!(list(&c).await.is_empty());
    let layers = dir_entries(images_dir(&c).join("layers"));
    assert!(layers.is_empty(), "layers left: {layers:?}");
    assert!(
        !crius_log(&c).contains(wrong),
        "the password reached the log"
    );

    assert_eq!(
        pull_with(&c, &reference, basic(USER, PASSWORD))
            .await
            .unwrap(),
        image.id()
    );
    assert_eq!(tokens.issued().len(), 1);
    assert_clean(&c).await;
}

/// (c) An AuthConfig registry_token is the bearer token itself: every manifest and blob request carries it and
/// the token server (which would refuse an anonymous or a wrong request) is never called.
#[tokio::test]
async fn a_registry_token_goes_to_the_registry_as_is() {
    let tokens = TokenServer::start(USER, PASSWORD);
    let registry = Registry::start_with_token_auth(&tokens.realm());
    let proxy = FaultProxy::start(&registry, vec![]);
    let image = small_image("registry-token");
    image.push(&registry, "app", "1").unwrap();
    let c = Crius::start(Options::new()).await;
    let reference = format!("{}/app:1", proxy.host());

    let token = "crius-e2e-registry-token-5a0f93";
    let auth = AuthConfig {
        registry_token: token.into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&c, &reference, auth)
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e:?}")),
        image.id()
    );
    let asked = tokens.requests();
    assert!(asked.is_empty(), "the token server was called: {asked:?}");
    let bearer = format!("Bearer {token}");
    for r in content_requests(&proxy, "1", &image) {
        assert_eq!(r.authorization(), Some(bearer.as_str()), "{r:?}");
    }
    assert!(!crius_log(&c).contains(token), "the token reached the log");
    assert_clean(&c).await;
}

/// A pull with credentials for an htpasswd upstream, through two mirrors: the first demands the very same
/// credentials (so a leak would make it serve), the second is anonymous. No mirror ever sees an Authorization
/// header; an image the anonymous mirror has is served by it and recorded under the upstream's name; one only
/// the upstream (and the refusing mirror) has comes from the upstream, with the credentials.
#[tokio::test]
async fn a_mirror_never_receives_the_request_credentials() {
    let upstream = Registry::start_with_htpasswd(USER, PASSWORD);
    let upstream_proxy = FaultProxy::start(&upstream, vec![]);
    let guarded = Registry::start_with_htpasswd(USER, PASSWORD);
    let guarded_proxy = FaultProxy::start(&guarded, vec![]);
    let open = Registry::start();
    let open_proxy = FaultProxy::start(&open, vec![]);
    let one = small_image("mirrored");
    // No layer in common with `one`, so every blob of it has to be fetched.
    let two = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("only-upstream", "2")
                .build(Compression::Gzip),
        )
        .build();
    for registry in [&upstream, &guarded, &open] {
        one.push(registry, "private", "1").unwrap();
    }
    two.push(&upstream, "private", "2").unwrap();
    two.push(&guarded, "private", "2").unwrap();
    let upstream_host = upstream_proxy.host();
    let mirrors = format!(
        "{{ \"{upstream_host}\" = {{ mirrors = [\"http://{}\", \"http://{}\"] }} }}",
        guarded_proxy.host(),
        open_proxy.host()
    );
    let c = Crius::start(Options::new().set("registries", &mirrors)).await;

    let first = format!("{upstream_host}/private:1");
    assert_eq!(
        pull_with(&c, &first, basic(USER, PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("pull {first}: {e:?}")),
        one.id()
    );
    assert_no_authorization(&[&guarded_proxy, &open_proxy]);
    assert!(
        guarded_proxy.count("GET", "/manifests/1") > 0,
        "the first mirror was not tried: {:?}",
        guarded_proxy.requests()
    );
    content_requests(&open_proxy, "1", &one);
    assert!(
        !upstream_proxy
            .recorded()
            .iter()
            .any(RecordedRequest::is_content),
        "a mirror had the image, yet the upstream was asked: {:?}",
        upstream_proxy.requests()
    );
    let images = list(&c).await;
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].repo_tags, vec![first.clone()]);
    assert_eq!(
        images[0].repo_digests,
        vec![format!("{upstream_host}/private@{}", one.digest())]
    );

    let second = format!("{upstream_host}/private:2");
    assert_eq!(
        pull_with(&c, &second, basic(USER, PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("pull {second}: {e:?}")),
        two.id()
    );
    assert_no_authorization(&[&guarded_proxy, &open_proxy]);
    let credentials = basic_authorization(USER, PASSWORD);
    for r in content_requests(&upstream_proxy, "2", &two) {
        assert_eq!(r.authorization(), Some(credentials.as_str()), "{r:?}");
    }
    let mut tags: Vec<Vec<String>> = list(&c).await.into_iter().map(|i| i.repo_tags).collect();
    tags.sort();
    assert_eq!(tags, vec![vec![first], vec![second]]);
    assert!(crius_log(&c).contains("mirror failed"));
    assert_clean(&c).await;
}
