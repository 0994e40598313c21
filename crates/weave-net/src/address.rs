//! Where a replica is: the replica arguments of `weave sync`, parsed by
//! one function, [`Address::parse`].
//!
//! Another kind of address (a new scheme) is a variant of [`Address`],
//! its arm in [`Address::parse`] and its arm in the opener
//! ([`crate::open`]).

use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where a replica of a sync is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A directory on this machine, as given.
    Local(PathBuf),
    /// A directory on another machine, reached over ssh (or the command
    /// given with --rsh).
    Ssh(SshAddress),
    /// An encrypted bucket replica: `s3://bucket/prefix`, `file:///dir`.
    Bucket(weave_bucket::BucketAddress),
}

/// `[user@]host:path` or `ssh://[user@]host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAddress {
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    /// As the user gave it.
    pub display: String,
}

/// A replica argument that names no replica weave can reach.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    #[error("{given}: an ssh:// address needs a path, e.g. ssh://host/home/me/docs")]
    NoPath { given: String },
    #[error("{given}: {port:?} is not a port number")]
    BadPort { given: String, port: String },
    #[error("{given}: no host name")]
    NoHost { given: String },
    #[error("{given}: weave does not know replicas of the form {scheme}:// (yet); give a local directory, host:path, ssh://[user@]host[:port]/path, s3://bucket/prefix or file:///dir")]
    UnknownScheme { given: String, scheme: String },
    /// A bucket address that names no bucket.
    #[error("{0}")]
    Bucket(String),
}

/// A usage error: the sync is refused before anything is opened.
impl From<AddressError> for weave_engine::SyncError {
    fn from(e: AddressError) -> Self {
        weave_engine::SyncError::Usage(e.to_string())
    }
}

impl Address {
    /// Parses a replica argument: `ssh://[user@]host[:port]/path`; a
    /// bucket, `s3://bucket/prefix` or `file:///dir`, unless a path of
    /// that name exists here; else a path that exists here (even with a
    /// colon in it); else
    /// `[user@]host:path` (`host:` alone is the remote home); else a
    /// local path. `scheme://…` with any other scheme is refused, unless
    /// it exists here.
    pub fn parse(given: &str) -> Result<Address, AddressError> {
        if let Some((scheme, rest)) = split_scheme(given) {
            match scheme {
                "ssh" => return SshAddress::from_url(given, rest).map(Address::Ssh),
                "s3" | "file" if !Path::new(given).exists() => {
                    if let Some(b) = weave_bucket::BucketAddress::parse(given) {
                        return b
                            .map(Address::Bucket)
                            .map_err(|e| AddressError::Bucket(e.to_string()));
                    }
                }
                _ if Path::new(given).exists() => {}
                _ => {
                    return Err(AddressError::UnknownScheme {
                        given: given.to_string(),
                        scheme: scheme.to_string(),
                    })
                }
            }
        }
        if Path::new(given).exists() {
            return Ok(Address::Local(PathBuf::from(given)));
        }
        Ok(match SshAddress::from_scp(given) {
            Some(a) => Address::Ssh(a),
            None => Address::Local(PathBuf::from(given)),
        })
    }

    /// The directory, for a replica on this machine.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Address::Local(p) => Some(p),
            _ => None,
        }
    }

    /// Whether `self` and `other` name one replica on another machine
    /// (the same place however it was written).
    pub fn same_remote(&self, other: &Address) -> bool {
        match (self, other) {
            (Address::Ssh(a), Address::Ssh(b)) => {
                a.host == b.host && a.port == b.port && a.path == b.path
            }
            (Address::Bucket(a), Address::Bucket(b)) => a == b,
            _ => false,
        }
    }
}

/// As the user gave it.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Local(p) => write!(f, "{}", p.display()),
            Address::Ssh(a) => f.write_str(&a.display),
            Address::Bucket(b) => write!(f, "{b}"),
        }
    }
}

/// The scheme of `scheme://rest` (letters, then letters, digits, `+`,
/// `-` or `.`) and the rest.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some((scheme, rest))
}

impl SshAddress {
    /// `ssh://[user@]host[:port]/path`, `rest` being what follows `ssh://`
    /// in `given`; `ssh://host/~/docs` is relative to the remote home.
    fn from_url(given: &str, rest: &str) -> Result<SshAddress, AddressError> {
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => {
                return Err(AddressError::NoPath {
                    given: given.to_string(),
                })
            }
        };
        let (host, port) = match auth.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(p.parse::<u16>().map_err(|_| AddressError::BadPort {
                    given: given.to_string(),
                    port: p.to_string(),
                })?),
            ),
            None => (auth, None),
        };
        if host.is_empty() || host.ends_with('@') {
            return Err(AddressError::NoHost {
                given: given.to_string(),
            });
        }
        let path = path
            .strip_prefix("/~")
            .map(|p| format!("~{p}"))
            .unwrap_or(path.to_string());
        Ok(SshAddress {
            host: host.to_string(),
            port,
            path,
            display: given.to_string(),
        })
    }

    /// `[user@]host:path`, as scp and rsync take it (no `/` before the
    /// colon); None when `given` is not of that form.
    fn from_scp(given: &str) -> Option<SshAddress> {
        let (host, path) = given.split_once(':')?;
        if host.is_empty() || host.contains('/') {
            return None;
        }
        Some(SshAddress {
            host: host.to_string(),
            port: None,
            // host: alone is the remote home, as with scp and rsync.
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
            display: given.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(host: &str, port: Option<u16>, path: &str, given: &str) -> Address {
        Address::Ssh(SshAddress {
            host: host.into(),
            port,
            path: path.into(),
            display: given.into(),
        })
    }

    fn parse(s: &str) -> Address {
        Address::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str) -> String {
        Address::parse(s)
            .expect_err(&format!("{s} is refused"))
            .to_string()
    }

    #[test]
    fn local_paths() {
        for s in [
            "docs",
            "/srv/docs",
            "./docs",
            "../a/b",
            "~/docs",
            "/a:b",
            "./x:y",
        ] {
            assert_eq!(parse(s), Address::Local(PathBuf::from(s)), "{s}");
        }
    }

    #[test]
    fn an_existing_path_with_a_colon_is_local() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("x:y");
        std::fs::create_dir(&dir).unwrap();
        let s = dir.to_str().unwrap();
        assert_eq!(parse(s), Address::Local(dir.clone()));
        // A path that exists and looks like scheme://… is a directory
        // (for a relative one, see the cli tests).
        std::fs::create_dir_all(t.path().join("s3:/bucket")).unwrap();
        let given = format!("{}/s3://bucket", t.path().display());
        assert_eq!(parse(&given), Address::Local(PathBuf::from(&given)));
    }

    #[test]
    fn host_and_path() {
        assert_eq!(parse("host:path"), ssh("host", None, "path", "host:path"));
        assert_eq!(
            parse("me@host:/srv/x"),
            ssh("me@host", None, "/srv/x", "me@host:/srv/x")
        );
        assert_eq!(parse("host:~/x"), ssh("host", None, "~/x", "host:~/x"));
        // host: alone is the remote home.
        assert_eq!(parse("host:"), ssh("host", None, ".", "host:"));
        // Only the first colon separates.
        assert_eq!(parse("host:a:b"), ssh("host", None, "a:b", "host:a:b"));
        // Not a scheme (an @ in it): the path starts with //.
        assert_eq!(
            parse("me@host://x"),
            ssh("me@host", None, "//x", "me@host://x")
        );
    }

    #[test]
    fn ssh_urls() {
        assert_eq!(
            parse("ssh://host/srv/x"),
            ssh("host", None, "/srv/x", "ssh://host/srv/x")
        );
        assert_eq!(
            parse("ssh://me@host:2222/srv/x"),
            ssh("me@host", Some(2222), "/srv/x", "ssh://me@host:2222/srv/x")
        );
        assert_eq!(
            parse("ssh://host/~/docs"),
            ssh("host", None, "~/docs", "ssh://host/~/docs")
        );
        assert_eq!(
            parse("ssh://host/~"),
            ssh("host", None, "~", "ssh://host/~")
        );
        assert_eq!(parse("ssh://host/"), ssh("host", None, "/", "ssh://host/"));
    }

    #[test]
    fn bad_ssh_urls_are_explained() {
        assert_eq!(
            refused("ssh://host"),
            "ssh://host: an ssh:// address needs a path, e.g. ssh://host/home/me/docs"
        );
        assert_eq!(
            refused("ssh://host:22x/a"),
            "ssh://host:22x/a: \"22x\" is not a port number"
        );
        assert_eq!(
            refused("ssh://host:70000/a"),
            "ssh://host:70000/a: \"70000\" is not a port number"
        );
        assert_eq!(
            refused("ssh://host:/a"),
            "ssh://host:/a: \"\" is not a port number"
        );
        assert_eq!(refused("ssh:///a"), "ssh:///a: no host name");
        assert_eq!(refused("ssh://:22/a"), "ssh://:22/a: no host name");
        assert_eq!(refused("ssh://me@/a"), "ssh://me@/a: no host name");
    }

    #[test]
    fn other_schemes_are_refused_by_name() {
        for (given, scheme) in [
            ("gs://bucket/docs", "gs"),
            ("https://example.com/x", "https"),
            ("git+ssh://host/x", "git+ssh"),
            ("SSH://host/x", "SSH"),
            ("webdav://host", "webdav"),
        ] {
            let e = Address::parse(given).unwrap_err();
            assert_eq!(
                e,
                AddressError::UnknownScheme {
                    given: given.into(),
                    scheme: scheme.into()
                }
            );
            assert_eq!(
                e.to_string(),
                format!("{given}: weave does not know replicas of the form {scheme}:// (yet); give a local directory, host:path, ssh://[user@]host[:port]/path, s3://bucket/prefix or file:///dir")
            );
        }
        // Buckets are replicas; a bad bucket address says what is wrong.
        assert!(matches!(
            Address::parse("s3://bucket/docs"),
            Ok(Address::Bucket(_))
        ));
        assert!(matches!(
            Address::parse("file:///mnt/usb/docs"),
            Ok(Address::Bucket(_))
        ));
        let e = Address::parse("file://relative").unwrap_err();
        assert!(e.to_string().contains("absolute path"), "{e}");
    }

    #[test]
    fn the_same_remote_however_written() {
        let a = parse("ssh://host/srv/x");
        assert!(a.same_remote(&parse("host:/srv/x")));
        assert!(a.same_remote(&a.clone()));
        assert!(!a.same_remote(&parse("ssh://host:22/srv/x")));
        assert!(!a.same_remote(&parse("other:/srv/x")));
        assert!(!parse("a").same_remote(&parse("a")));
    }

    #[test]
    fn shown_as_given() {
        for s in ["docs", "host:", "ssh://host/~/docs", "me@host:/x"] {
            assert_eq!(parse(s).to_string(), s);
        }
        assert_eq!(parse("host:").local_path(), None);
        assert_eq!(parse("docs").local_path(), Some(Path::new("docs")));
    }
}
