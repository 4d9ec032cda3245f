//! CRI image messages to domain types and back. Field names in errors are the protobuf paths.

use std::collections::HashMap;
use std::time::SystemTime;

use crius_proto::v1;

use crate::error::{Error, Result};
use crate::image::registry::server_address_matches;
use crate::image::service::Usage;
use crate::image::{Credentials, ImageRecord, Reference};

/// The image a request names; `field` is its protobuf path.
pub fn image_spec(spec: Option<&v1::ImageSpec>, field: &str) -> Result<String> {
    let image = spec.map(|s| s.image.trim()).unwrap_or_default();
    if image.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Ok(image.to_owned())
}

/// PullImage's reference and credentials.
pub fn pull(req: &v1::PullImageRequest) -> Result<(Reference, Credentials)> {
    let image = image_spec(req.image.as_ref(), "image.image")?;
    let reference = Reference::parse(&image)
        .map_err(|e| Error::invalid("image.image", crate::error::chain(&e)))?;
    let credentials = req
        .auth
        .as_ref()
        .filter(|a| {
            let matches = server_address_matches(&a.server_address, &reference.registry);
            if !matches {
                tracing::warn!(image = %reference, server_address = %a.server_address, "credentials are for another registry; pulling anonymously");
            }
            matches
        })
        .map(|a| Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            auth: a.auth.clone(),
            identity_token: a.identity_token.clone(),
            registry_token: a.registry_token.clone(),
        })
        .unwrap_or_default();
    Ok((reference, credentials))
}

/// The filter of ListImages, if any.
pub fn list_filter(req: &v1::ListImagesRequest) -> Option<String> {
    req.filter
        .as_ref()
        .and_then(|f| f.image.as_ref())
        .map(|s| s.image.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The config's User as CRI wants it: a numeric uid, or a user name (a group after ':' is not CRI's business).
fn user(user: &str) -> (Option<v1::Int64Value>, String) {
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) if uid >= 0 => (Some(v1::Int64Value { value: uid }), String::new()),
        // A negative number is no uid and no name: the image's User is unusable, so report none.
        Ok(_) => (None, String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

pub fn image(rec: &ImageRecord) -> v1::Image {
    let (uid, username) = user(&rec.user);
    v1::Image {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(v1::ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// ImageStatus' verbose info: the config and the layers.
pub fn image_info(rec: &ImageRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "id": rec.id,
        "manifestDigest": rec.manifest_digest,
        "chainIds": rec.chain_ids,
        "config": rec.config,
    });
    [("info".to_owned(), info.to_string())]
        .into_iter()
        .collect()
}

pub fn fs_usage(mountpoint: &std::path::Path, usage: Usage) -> v1::FilesystemUsage {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    v1::FilesystemUsage {
        timestamp,
        fs_id: Some(v1::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(v1::UInt64Value { value: usage.bytes }),
        inodes_used: Some(v1::UInt64Value {
            value: usage.inodes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(
            user("1000"),
            (Some(v1::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(
            user("1000:100"),
            (Some(v1::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(user("nobody:nogroup"), (None, "nobody".to_string()));
        assert_eq!(user(""), (None, String::new()));
        assert_eq!(user("-1"), (None, String::new()));
    }

    #[test]
    fn credentials_for_another_registry_are_not_used() {
        let req = |server_address: &str| v1::PullImageRequest {
            image: Some(v1::ImageSpec {
                image: "127.0.0.1:5000/app:1".into(),
                ..Default::default()
            }),
            auth: Some(v1::AuthConfig {
                username: "u".into(),
                password: "p".into(),
                server_address: server_address.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pull(&req("127.0.0.1:5000")).unwrap().1.username, "u");
        assert_eq!(pull(&req("")).unwrap().1.username, "u");
        let (_, c) = pull(&req("registry.example.com")).unwrap();
        assert!(c.username.is_empty() && c.password.is_empty(), "{c:?}");
    }

    #[test]
    fn pull_requires_a_valid_image() {
        let req = v1::PullImageRequest::default();
        assert!(pull(&req).unwrap_err().to_string().contains("image.image"));
        let req = v1::PullImageRequest {
            image: Some(v1::ImageSpec {
                image: "Bad Name".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(pull(&req), Err(Error::InvalidArgument { .. })));
        let req = v1::PullImageRequest {
            image: Some(v1::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            auth: Some(v1::AuthConfig {
                username: "u".into(),
                password: "p".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (r, c) = pull(&req).unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(c.username, "u");
    }
}
