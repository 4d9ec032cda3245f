//! Localhost profile files: the Docker/moby seccomp JSON format, which is a superset of the OCI
//! `LinuxSeccomp` JSON, resolved for this machine into a plain `LinuxSeccomp`.
//!
//! On top of OCI, a Docker profile may say `name` instead of `names`, give `archMap` (the
//! architectures to list, per native architecture) instead of `architectures`, and gate each
//! syscall entry with `includes` / `excludes` on capabilities, architectures (Go names: "amd64",
//! "arm64", ...) and `minKernel`. As in moby, an entry is dropped when the native architecture
//! or any of the capabilities in `excludes` is present or the kernel is at least its
//! `excludes.minKernel`, and kept only when the native architecture is among `includes.arches`
//! (if given), all `includes.caps` are present, and the kernel is at least `includes.minKernel`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

use super::syscalls::NativeArch;
use super::{SeccompError, has_capability, oci_arg};

const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// Parses a Localhost profile (Docker or OCI format) and resolves its `includes`/`excludes`
/// against `capabilities` (the container's effective ones, "CAP_XXX") and this machine.
pub fn parse_profile(json: &[u8], capabilities: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    let arch = NativeArch::current().ok_or(SeccompError::UnsupportedArch)?;
    let mut kernel = running_kernel;
    parse_for(json, capabilities, arch, &mut kernel)
}

/// [`parse_profile`] for `arch`, asking `kernel` for the running kernel's version (only if an
/// entry has a `minKernel`).
pub(super) fn parse_for(
    json: &[u8],
    capabilities: &[String],
    arch: NativeArch,
    kernel: &mut dyn FnMut() -> Result<KernelVersion, SeccompError>,
) -> Result<LinuxSeccomp, SeccompError> {
    let file: File = serde_json::from_slice(json).map_err(SeccompError::Json)?;
    let default_action = file.default_action.ok_or(SeccompError::NoDefaultAction)?;

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(action(&default_action, "defaultAction")?)
        .set_default_errno_ret(file.default_errno_ret)
        .set_architectures(architectures(file.architectures, file.arch_map, arch)?)
        .set_flags(flags(file.flags)?)
        .set_listener_path(file.listener_path)
        .set_listener_metadata(file.listener_metadata);

    let mut machine = Machine {
        arch,
        capabilities,
        kernel,
        version: None,
    };
    let mut syscalls = Vec::new();
    for (index, entry) in file.syscalls.unwrap_or_default().into_iter().enumerate() {
        let at = format!("syscalls[{index}]");
        let names = match (entry.name, entry.names) {
            (Some(name), Some(names)) if !name.is_empty() && !names.is_empty() => {
                return Err(SeccompError::NameAndNames { at });
            }
            (Some(name), _) if !name.is_empty() => vec![name],
            (_, Some(names)) if !names.is_empty() => names,
            _ => return Err(SeccompError::NoSyscallName { at }),
        };
        let at = format!("{at} ({})", names[0]);
        let action = action(&entry.action, &at)?;
        let args = entry
            .args
            .map(|args| {
                args.into_iter()
                    .map(|a| a.into_oci(&at))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        if !machine.wants(entry.includes.as_ref(), entry.excludes.as_ref(), &at)? {
            continue;
        }
        let mut syscall = LinuxSyscall::default();
        syscall
            .set_names(names)
            .set_action(action)
            .set_errno_ret(entry.errno_ret)
            .set_args(args);
        syscalls.push(syscall);
    }
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// The file as written; strings where we want errors that say which entry is wrong.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    default_action: Option<String>,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<ArchMap>>,
    flags: Option<Vec<String>>,
    listener_path: Option<PathBuf>,
    listener_metadata: Option<String>,
    syscalls: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<Arg>>,
    includes: Option<Filter>,
    excludes: Option<Filter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: String,
}

impl Arg {
    fn into_oci(self, at: &str) -> Result<LinuxSeccompArg, SeccompError> {
        let op = LinuxSeccompOperator::from_str(&self.op).map_err(|_| {
            SeccompError::UnknownOperator {
                at: at.to_owned(),
                op: self.op.clone(),
            }
        })?;
        Ok(oci_arg(self.index, op, self.value, self.value_two))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

fn action(action: &str, at: &str) -> Result<LinuxSeccompAction, SeccompError> {
    LinuxSeccompAction::from_str(action).map_err(|_| SeccompError::UnknownAction {
        at: at.to_owned(),
        action: action.to_owned(),
    })
}

fn arch(name: &str, at: &str) -> Result<Arch, SeccompError> {
    Arch::from_str(name).map_err(|_| SeccompError::UnknownArch {
        at: at.to_owned(),
        arch: name.to_owned(),
    })
}

/// `architectures` as given, or from `archMap` the entry for `native` with its sub-architectures.
fn architectures(
    listed: Option<Vec<String>>,
    arch_map: Option<Vec<ArchMap>>,
    native: NativeArch,
) -> Result<Option<Vec<Arch>>, SeccompError> {
    let listed = listed.unwrap_or_default();
    let arch_map = arch_map.unwrap_or_default();
    if !listed.is_empty() && !arch_map.is_empty() {
        return Err(SeccompError::ArchitecturesAndArchMap);
    }
    if arch_map.is_empty() {
        let arches = listed
            .iter()
            .map(|name| arch(name, "architectures"))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((!arches.is_empty()).then_some(arches));
    }
    let mut chosen = None;
    for (index, entry) in arch_map.iter().enumerate() {
        let at = format!("archMap[{index}]");
        let main = arch(&entry.architecture, &at)?;
        let subs = entry
            .sub_architectures
            .iter()
            .flatten()
            .map(|name| arch(name, &at));
        let subs = subs.collect::<Result<Vec<_>, _>>()?;
        if main == native.oci() && chosen.is_none() {
            chosen = Some(std::iter::once(main).chain(subs).collect());
        }
    }
    Ok(chosen)
}

fn flags(flags: Option<Vec<String>>) -> Result<Option<Vec<LinuxSeccompFilterFlag>>, SeccompError> {
    flags
        .map(|flags| {
            flags
                .iter()
                .map(|flag| {
                    LinuxSeccompFilterFlag::from_str(flag).map_err(|_| SeccompError::UnknownFlag {
                        at: "flags".to_owned(),
                        flag: flag.clone(),
                    })
                })
                .collect()
        })
        .transpose()
}

/// What `includes`/`excludes` are evaluated against.
struct Machine<'a> {
    arch: NativeArch,
    capabilities: &'a [String],
    kernel: &'a mut dyn FnMut() -> Result<KernelVersion, SeccompError>,
    version: Option<KernelVersion>,
}

impl Machine<'_> {
    fn wants(
        &mut self,
        includes: Option<&Filter>,
        excludes: Option<&Filter>,
        at: &str,
    ) -> Result<bool, SeccompError> {
        if let Some(excludes) = excludes {
            let arch = excludes
                .arches
                .iter()
                .flatten()
                .any(|a| a == self.arch.docker());
            let cap = excludes
                .caps
                .iter()
                .flatten()
                .any(|c| has_capability(self.capabilities, c));
            if arch || cap || self.at_least(excludes.min_kernel.as_deref(), at)? == Some(true) {
                return Ok(false);
            }
        }
        if let Some(includes) = includes {
            let arches = includes.arches.as_deref().unwrap_or_default();
            if !arches.is_empty() && !arches.iter().any(|a| a == self.arch.docker()) {
                return Ok(false);
            }
            if !includes
                .caps
                .iter()
                .flatten()
                .all(|c| has_capability(self.capabilities, c))
            {
                return Ok(false);
            }
            if self.at_least(includes.min_kernel.as_deref(), at)? == Some(false) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the running kernel is at least `min`; `None` when there is no `min`.
    fn at_least(&mut self, min: Option<&str>, at: &str) -> Result<Option<bool>, SeccompError> {
        let Some(min) = min else { return Ok(None) };
        let min = KernelVersion::parse(min).ok_or_else(|| SeccompError::BadMinKernel {
            at: at.to_owned(),
            version: min.to_owned(),
        })?;
        let running = match self.version {
            Some(version) => version,
            None => *self.version.insert((self.kernel)()?),
        };
        Ok(Some(running >= min))
    }
}

/// A kernel release as major.minor.patch, compared in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct KernelVersion(pub u32, pub u32, pub u32);

impl KernelVersion {
    /// "4.8", "6.1.0-18-amd64", "6.18.44-fc-v1045": the leading numbers; at least major.minor.
    fn parse(release: &str) -> Option<KernelVersion> {
        let end = release
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(release.len());
        let mut parts = release[..end].split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(patch) => patch.ok()?,
            None => 0,
        };
        Some(KernelVersion(major, minor, patch))
    }
}

fn running_kernel() -> Result<KernelVersion, SeccompError> {
    let path = Path::new(OSRELEASE);
    let release = std::fs::read_to_string(path).map_err(|source| SeccompError::KernelVersion {
        path: path.to_owned(),
        source,
    })?;
    KernelVersion::parse(release.trim()).ok_or_else(|| SeccompError::KernelVersion {
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("release {release:?}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::bpf_vm::{self, Verdict};
    use super::super::compile::compile_for;
    use super::*;

    fn parse(
        value: serde_json::Value,
        caps: &[&str],
        arch: NativeArch,
        kernel: KernelVersion,
    ) -> LinuxSeccomp {
        try_parse(value, caps, arch, kernel).unwrap()
    }

    fn try_parse(
        value: serde_json::Value,
        caps: &[&str],
        arch: NativeArch,
        kernel: KernelVersion,
    ) -> Result<LinuxSeccomp, SeccompError> {
        let caps: Vec<String> = caps.iter().map(|c| (*c).to_owned()).collect();
        let json = serde_json::to_vec(&value).unwrap();
        parse_for(&json, &caps, arch, &mut || Ok(kernel))
    }

    fn names(profile: &LinuxSeccomp) -> Vec<&str> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect()
    }

    const LINUX_6_1: KernelVersion = KernelVersion(6, 1, 0);

    /// A Docker-format profile in the style of moby's default.json.
    fn docker_profile() -> serde_json::Value {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null},
            ],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "plain"},
                {"name": "openat", "action": "SCMP_ACT_ALLOW", "args": []},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["kexec_load"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
                {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
                    "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                    "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["uselib"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}},
            ],
        })
    }

    #[test]
    fn docker_profile_without_capabilities() {
        let p = parse(docker_profile(), &[], NativeArch::X86_64, LINUX_6_1);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(
            names(&p),
            [
                "read",
                "write",
                "openat",
                "ptrace",
                "arch_prctl",
                "clone",
                "clone3"
            ]
        );
        let clone3 = &p.syscalls().as_ref().unwrap()[5];
        assert_eq!(clone3.errno_ret(), Some(38));
        let clone = &p.syscalls().as_ref().unwrap()[4];
        let mask = clone.args().as_ref().unwrap()[0];
        assert_eq!(
            (mask.value(), mask.value_two(), mask.op()),
            (2114060288, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
    }

    #[test]
    fn docker_profile_with_capabilities_and_on_arm64() {
        let p = parse(
            docker_profile(),
            &["CAP_SYS_ADMIN"],
            NativeArch::X86_64,
            LINUX_6_1,
        );
        assert_eq!(
            names(&p),
            ["read", "write", "openat", "ptrace", "arch_prctl", "mount"]
        );
        let p = parse(
            docker_profile(),
            &["CAP_SYS_ADMIN", "CAP_BPF"],
            NativeArch::Aarch64,
            LINUX_6_1,
        );
        assert_eq!(
            names(&p),
            [
                "read",
                "write",
                "openat",
                "ptrace",
                "cacheflush",
                "mount",
                "bpf"
            ]
        );
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        // An old kernel keeps the excludes.minKernel entry and drops the includes.minKernel one.
        let p = parse(
            docker_profile(),
            &[],
            NativeArch::X86_64,
            KernelVersion(4, 4, 0),
        );
        assert_eq!(
            names(&p),
            [
                "read",
                "write",
                "openat",
                "arch_prctl",
                "clone",
                "clone3",
                "uselib"
            ]
        );
    }

    #[test]
    fn the_kernel_is_asked_only_when_a_min_kernel_is_given() {
        let json = serde_json::to_vec(&json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}))
        .unwrap();
        let mut asked = 0;
        parse_for(&json, &[], NativeArch::X86_64, &mut || {
            asked += 1;
            Ok(LINUX_6_1)
        })
        .unwrap();
        assert_eq!(asked, 0);
        let json = serde_json::to_vec(&docker_profile()).unwrap();
        parse_for(&json, &[], NativeArch::X86_64, &mut || {
            asked += 1;
            Ok(LINUX_6_1)
        })
        .unwrap();
        assert_eq!(asked, 1);
    }

    #[test]
    fn an_oci_profile_parses_as_it_is() {
        let oci = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]}],
        });
        let p = parse(oci.clone(), &[], NativeArch::X86_64, LINUX_6_1);
        let typed: LinuxSeccomp = serde_json::from_value(oci).unwrap();
        assert_eq!(p, typed);
    }

    #[test]
    fn a_parsed_profile_compiles_and_behaves() {
        let p = parse(docker_profile(), &[], NativeArch::X86_64, LINUX_6_1);
        let program = compile_for(&p, NativeArch::X86_64).unwrap();
        let run = |name, args: &[u64]| bpf_vm::call(&program.bpf, NativeArch::X86_64, name, args);
        assert_eq!(run("read", &[]), Verdict::Allow);
        assert_eq!(run("mount", &[]), Verdict::Errno(1));
        assert_eq!(run("clone3", &[]), Verdict::Errno(38));
        assert_eq!(
            run("clone", &[u64::from(libc::SIGCHLD as u32)]),
            Verdict::Allow
        );
    }

    #[test]
    fn parse_errors_say_what_and_where() {
        let err = |value| try_parse(value, &[], NativeArch::X86_64, LINUX_6_1).unwrap_err();
        let cases = [
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}]}),
                "syscalls[0] (mkdir): unknown action \"SCMP_ACT_NOPE\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["lseek"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_ABOUT"}]}]}),
                "syscalls[0] (lseek): unknown operator \"SCMP_CMP_ABOUT\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ERRNO"}]}),
                "syscalls[0]: sets both name and names",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}),
                "syscalls[0]: names no syscall",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]}),
                "seccomp profile sets both architectures and archMap",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}),
                "architectures: unknown architecture \"SCMP_ARCH_VAX\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}),
                "flags: unknown seccomp flag \"SECCOMP_FILTER_FLAG_FAST\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                "includes": {"minKernel": "four"}}]}),
                "syscalls[0] (ptrace): minKernel \"four\" is not a kernel version",
            ),
            (
                json!({"syscalls": []}),
                "seccomp profile has no defaultAction",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(err(value).to_string(), message);
        }
        let not_json = parse_for(
            b"{\"defaultAction\": ",
            &[],
            NativeArch::X86_64,
            &mut || Ok(LINUX_6_1),
        );
        assert!(
            matches!(not_json, Err(SeccompError::Json(_))),
            "{not_json:?}"
        );
    }

    #[test]
    fn kernel_versions_parse_and_order() {
        assert_eq!(KernelVersion::parse("4.8"), Some(KernelVersion(4, 8, 0)));
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v1045"),
            Some(KernelVersion(6, 18, 44))
        );
        assert_eq!(
            KernelVersion::parse("6.1.0-18-amd64"),
            Some(KernelVersion(6, 1, 0))
        );
        assert_eq!(KernelVersion::parse("5"), None);
        assert_eq!(KernelVersion::parse("x.y"), None);
        assert!(KernelVersion(4, 10, 0) > KernelVersion(4, 8, 0));
        assert!(running_kernel().unwrap() >= KernelVersion(4, 8, 0));
    }

    #[test]
    fn the_public_entry_point_reads_this_machine() {
        let json = serde_json::to_vec(&docker_profile()).unwrap();
        let p = parse_profile(&json, &["CAP_SYS_ADMIN".to_owned()]).unwrap();
        assert!(names(&p).contains(&"mount"));
    }
}
