//! The container process: args, environment, working directory, user and capabilities.

use std::collections::BTreeSet;

use oci_spec::runtime::{Process, User};

use super::image::ImageConfig;
use super::{Host, SpecInputs};
use crate::container::caps::{self, CapSets};
use crate::container::config::{ContainerConfig, EnvVar};
use crate::container::user::{self, UserRequest};
use crate::error::{Error, Result};
use crate::image::ImageError;
use crate::pod::spec::NsMode;

/// containerd's (and runc's) PATH when neither the image nor the request sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const CAPS_FIELD: &str = "config.linux.security_context.capabilities";

/// The process of the spec; `caps` are the container's capability sets (computed first: seccomp needs them too).
pub(super) fn process(
    inputs: &SpecInputs,
    image: &ImageConfig,
    caps: &CapSets,
    host: &dyn Host,
) -> Result<Process> {
    let config = inputs.config;
    let sc = &config.security;
    let resolved = user::resolve(
        &UserRequest {
            run_as_user: sc.run_as_user,
            run_as_group: sc.run_as_group,
            run_as_username: sc.run_as_username.as_deref(),
            image_user: image.user.as_deref().unwrap_or(""),
            supplemental_groups: &sc.supplemental_groups,
            policy: sc.supplemental_groups_policy,
        },
        inputs.users,
    )?;
    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    user.set_additional_gids(Some(resolved.additional_gids));
    user.set_umask(None);
    user.set_username(None);

    // Process::default() carries youki's defaults (sh, TERM, an RLIMIT_NOFILE of 1024, ...): every field is set.
    let mut p = Process::default();
    p.set_terminal(Some(config.tty));
    p.set_console_size(None);
    p.set_user(user);
    p.set_args(Some(args(config, image)?));
    p.set_command_line(None);
    p.set_env(Some(env(config, image, &pod_hostname(inputs, host))?));
    p.set_cwd(cwd(config, image)?.into());
    p.set_capabilities(Some(caps.to_oci()));
    // No rlimits: the container keeps the monitor's (containerd 2.0 dropped its RLIMIT_NOFILE default as well).
    p.set_rlimits(None);
    p.set_no_new_privileges(Some(sc.no_new_privs));
    // These hosts have neither AppArmor nor SELinux; requests for profiles were refused in the conversion.
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);
    // The wanted value; the executor clamps it to the agent's own when the host forbids lowering it.
    p.set_oom_score_adj(config.resources.as_ref().map(|r| r.oom_score_adj as i32));
    p.set_io_priority(None);
    p.set_scheduler(None);
    p.set_exec_cpu_affinity(None);
    Ok(p)
}

/// The capability sets: the CRI changes over containerd's defaults, limited to what the agent holds. A capability
/// that the request names explicitly but the agent does not hold is an error (the executor could not grant it).
pub(super) fn capabilities(config: &ContainerConfig, host: &dyn Host) -> Result<CapSets> {
    let available = host.capabilities();
    let sc = &config.security;
    let mut sets = CapSets::compute(&sc.capabilities, sc.privileged, &available);
    if !sc.privileged {
        for (list, name) in [
            (&sc.capabilities.add, "add_capabilities"),
            (&sc.capabilities.add_ambient, "add_ambient_capabilities"),
        ] {
            for (i, c) in list.iter().enumerate() {
                let held = c == caps::ALL || available.contains(c.as_str());
                if !held && sets.main.contains(c.as_str()) {
                    return Err(Error::FailedPrecondition(format!(
                        "{CAPS_FIELD}.{name}[{i}]: {c} is not held by crius on this host, so no container can have it"
                    )));
                }
            }
        }
    }
    let unheld: BTreeSet<&'static str> = sets.main.difference(&available).copied().collect();
    if !unheld.is_empty() {
        // Only defaults get here (explicit requests were refused above).
        tracing::debug!(
            ?unheld,
            "default capabilities the agent does not hold are left out"
        );
        sets.main.retain(|c| !unheld.contains(c));
        sets.ambient.retain(|c| !unheld.contains(c));
    }
    Ok(sets)
}

/// Kubernetes' rules for CRI command/args over the image's Entrypoint/Cmd:
/// - command given: command + args, the image's Entrypoint and Cmd ignored;
/// - only args: the image's Entrypoint + args;
/// - neither: Entrypoint + Cmd (an Entrypoint of `[""]` counts as none, as in Docker and containerd).
pub(super) fn args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut out: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else {
        let entrypoint = image
            .entrypoint
            .clone()
            .filter(|e| !(e.len() == 1 && e[0].is_empty()))
            .unwrap_or_default();
        let rest = if config.args.is_empty() {
            image.cmd.clone().unwrap_or_default()
        } else {
            config.args.clone()
        };
        entrypoint.into_iter().chain(rest).collect()
    };
    if out.is_empty() {
        return Err(Error::invalid(
            "config.command",
            "no command given and the image has neither Entrypoint nor Cmd",
        ));
    }
    if out[0].is_empty() {
        return Err(Error::invalid(
            "config.command",
            "the program to run is an empty string",
        ));
    }
    if out.iter().any(|a| a.contains('\0')) {
        return Err(bad_image("its Entrypoint or Cmd contains a NUL byte"));
    }
    out.shrink_to_fit();
    Ok(out)
}

/// The environment: [`DEFAULT_PATH`] and `HOSTNAME`, then the image's Env, then the request's envs; a later entry
/// with the same key replaces the earlier one where it stands (containerd's `WithEnv`), so the CRI wins and the
/// order is kept.
pub(super) fn env(
    config: &ContainerConfig,
    image: &ImageConfig,
    hostname: &str,
) -> Result<Vec<String>> {
    let mut out = vec![DEFAULT_PATH.to_owned(), format!("HOSTNAME={hostname}")];
    for e in image.env.iter().flatten() {
        if e.is_empty() || e.starts_with('=') || e.contains('\0') {
            return Err(bad_image(&format!("its Env has the malformed entry {e:?}")));
        }
        set_env(&mut out, e.clone());
    }
    for EnvVar { key, value } in &config.envs {
        set_env(&mut out, format!("{key}={value}"));
    }
    Ok(out)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

fn set_env(list: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_owned();
    match list.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = entry,
        None => list.push(entry),
    }
}

/// The working directory: the request's (absolute, checked by the conversion), else the image's, else "/".
///
/// A relative image WorkingDir is made absolute against "/" rather than refused: that is what Docker's builder
/// means by it (a WORKDIR is relative to the previous one, which starts at "/"), and since the executor resolves
/// the cwd inside the rootfs there is nothing to gain by failing the container. `..` stops at "/".
pub(super) fn cwd(config: &ContainerConfig, image: &ImageConfig) -> Result<String> {
    if !config.working_dir.is_empty() {
        return Ok(config.working_dir.clone());
    }
    let raw = image.working_dir.as_deref().unwrap_or("").trim();
    if raw.contains('\0') {
        return Err(bad_image("its WorkingDir contains a NUL byte"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `HOSTNAME` for the container: the pod's host name, or the node's for a pod on the host network.
fn pod_hostname(inputs: &SpecInputs, host: &dyn Host) -> String {
    if inputs.sandbox.pod.namespaces.network == NsMode::Node {
        host.hostname()
    } else {
        inputs.sandbox.pod.hostname.clone()
    }
}

fn bad_image(what: &str) -> Error {
    Error::Image(ImageError::BadImage(format!(
        "the image cannot run: {what}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn img(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let v = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        ImageConfig {
            entrypoint: entrypoint.map(v),
            cmd: cmd.map(v),
            ..Default::default()
        }
    }

    #[test]
    fn args_merge_table() {
        let ep = Some(&["/entry", "-x"][..]);
        let cmd = Some(&["serve", "--port=80"][..]);
        // (CRI command, CRI args, image entrypoint, image cmd) -> process.args
        type Row<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            Option<&'a [&'a str]>,
            Option<&'a [&'a str]>,
            &'a [&'a str],
        );
        let rows: Vec<Row> = vec![
            // command given: command + args; the image's Entrypoint and Cmd are ignored.
            (
                &["/bin/sh", "-c"],
                &["echo hi"],
                ep,
                cmd,
                &["/bin/sh", "-c", "echo hi"],
            ),
            (&["/bin/true"], &[], ep, cmd, &["/bin/true"]),
            (&["/bin/true"], &[], None, None, &["/bin/true"]),
            // only args: Entrypoint + args (Cmd ignored).
            (
                &[],
                &["run", "fast"],
                ep,
                cmd,
                &["/entry", "-x", "run", "fast"],
            ),
            (&[], &["/bin/echo", "x"], None, cmd, &["/bin/echo", "x"]),
            // neither: Entrypoint + Cmd.
            (&[], &[], ep, cmd, &["/entry", "-x", "serve", "--port=80"]),
            (&[], &[], ep, None, &["/entry", "-x"]),
            (&[], &[], None, cmd, &["serve", "--port=80"]),
            // Entrypoint [""] means none.
            (&[], &[], Some(&[""]), cmd, &["serve", "--port=80"]),
        ];
        for (command, a, entrypoint, c, want) in rows {
            let got = args(&cfg(command, a), &img(entrypoint, c)).unwrap();
            assert_eq!(
                got, want,
                "command {command:?} args {a:?} entrypoint {entrypoint:?} cmd {c:?}"
            );
        }
    }

    #[test]
    fn no_command_at_all() {
        for (entrypoint, c) in [
            (None, None),
            (Some(&[][..]), Some(&[][..])),
            (Some(&[""][..]), None),
        ] {
            match args(&cfg(&[], &[]), &img(entrypoint, c)) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "config.command"),
                other => panic!("{other:?}"),
            }
        }
        assert!(args(&cfg(&[""], &[]), &img(None, None)).is_err());
        assert!(matches!(
            args(&cfg(&[], &[]), &img(Some(&["/a\0"]), None)),
            Err(Error::Image(ImageError::BadImage(_)))
        ));
    }

    #[test]
    fn env_overrides_and_defaults() {
        let image = ImageConfig {
            env: Some(vec![
                "A=image".into(),
                "PATH=/image/bin".into(),
                "B=image".into(),
                "FLAG".into(),
            ]),
            ..Default::default()
        };
        let mut c = ContainerConfig {
            envs: vec![
                EnvVar {
                    key: "B".into(),
                    value: "cri".into(),
                },
                EnvVar {
                    key: "C".into(),
                    value: "".into(),
                },
                EnvVar {
                    key: "A".into(),
                    value: "x=y".into(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            env(&c, &image, "web-0").unwrap(),
            [
                "PATH=/image/bin",
                "HOSTNAME=web-0",
                "A=x=y",
                "B=cri",
                "FLAG",
                "C="
            ]
        );
        // Neither sets PATH: the default one.
        let e = env(&ContainerConfig::default(), &ImageConfig::default(), "h").unwrap();
        assert_eq!(e, [DEFAULT_PATH, "HOSTNAME=h"]);
        // The request's PATH wins over everything.
        c.envs = vec![EnvVar {
            key: "PATH".into(),
            value: "/cri".into(),
        }];
        assert_eq!(env(&c, &image, "h").unwrap()[0], "PATH=/cri");
        let bad = ImageConfig {
            env: Some(vec!["=x".into()]),
            ..Default::default()
        };
        assert!(env(&ContainerConfig::default(), &bad, "h").is_err());
    }

    #[test]
    fn working_directory() {
        let wd = |cri: &str, image: Option<&str>| {
            let c = ContainerConfig {
                working_dir: cri.into(),
                ..Default::default()
            };
            let i = ImageConfig {
                working_dir: image.map(str::to_owned),
                ..Default::default()
            };
            cwd(&c, &i).unwrap()
        };
        assert_eq!(wd("/cri", Some("/image")), "/cri");
        assert_eq!(wd("", Some("/image")), "/image");
        assert_eq!(wd("", None), "/");
        assert_eq!(wd("", Some("")), "/");
        assert_eq!(wd("", Some("app/src")), "/app/src");
        assert_eq!(wd("", Some("/a/./b/../c/")), "/a/c");
        assert_eq!(wd("", Some("../../x")), "/x");
    }
}
