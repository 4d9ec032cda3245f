//! CNI spec versions: which ones this client speaks and what each one allows.

/// The spec versions this client speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// A `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(u32, u32, u32);

impl Version {
    pub(crate) const V0_3_0: Version = Version(0, 3, 0);
    /// CHECK, and prevResult on DEL.
    pub(crate) const V0_4_0: Version = Version(0, 4, 0);
    /// STATUS and GC.
    pub(crate) const V1_1_0: Version = Version(1, 1, 0);

    pub(crate) fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }

    pub(crate) fn supported(self) -> bool {
        SUPPORTED_VERSIONS
            .iter()
            .any(|s| Version::parse(s) == Some(self))
    }
}

/// The version to use for a list: the highest supported entry of `cniVersions` when given
/// (spec 1.1), else `cniVersion`, which must then be present and supported.
pub(crate) fn pick_version(declared: Option<&str>, versions: &[String]) -> Result<String, String> {
    if !versions.is_empty() {
        let best = versions
            .iter()
            .filter_map(|s| Version::parse(s).filter(|v| v.supported()).map(|v| (v, s)))
            .max();
        return match best {
            Some((_, s)) => Ok(s.clone()),
            None => Err(format!(
                "none of cniVersions {versions:?} is supported (supported: {SUPPORTED_VERSIONS:?})"
            )),
        };
    }
    let Some(declared) = declared else {
        return Err("\"cniVersion\" is missing".into());
    };
    match Version::parse(declared) {
        Some(v) if v.supported() => Ok(declared.to_owned()),
        _ => Err(format!(
            "cniVersion {declared:?} is unsupported (supported: {SUPPORTED_VERSIONS:?})"
        )),
    }
}

/// The version of a string known to be valid (a parsed list's); unknown text counts as the newest.
pub(crate) fn of(s: &str) -> Version {
    Version::parse(s).unwrap_or(Version::V1_1_0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse("1.0.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(Version::parse("a.b.c"), None);
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert!(Version::parse("0.10.0").unwrap() > Version::V0_4_0);
        assert!(!Version::parse("0.10.0").unwrap().supported());
    }

    #[test]
    fn pick() {
        assert_eq!(pick_version(Some("0.3.1"), &[]).unwrap(), "0.3.1");
        assert!(pick_version(Some("2.0.0"), &[]).is_err());
        assert!(pick_version(None, &[]).is_err());
        let vs = ["1.0.0".to_owned(), "0.4.0".to_owned(), "3.0.0".to_owned()];
        assert_eq!(pick_version(Some("0.3.1"), &vs).unwrap(), "1.0.0");
        assert!(pick_version(Some("1.0.0"), &["3.0.0".to_owned()]).is_err());
    }
}
