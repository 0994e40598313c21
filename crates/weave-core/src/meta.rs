//! Metadata beyond permission bits and mtime: a path's owner and its
//! extended attributes (POSIX ACLs are extended attributes too). Most
//! entries have none ([`Entry::meta`](crate::Entry) is then `None`), so an
//! entry stays small.
//!
//! A replica keeps what its settings and its powers allow (see
//! [`MetaScope`]); what it does not keep, it passes on unchanged from the
//! version it had ([`Meta::observed_over`]), so that a replica that cannot
//! set owners never makes the others lose theirs.

use serde::{Deserialize, Serialize};

/// The longest attribute name Linux allows (`XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// The largest attribute value Linux allows (`XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// At most this many attributes on one path ...
pub const XATTRS_MAX: usize = 1024;
/// ... and this many bytes of names and values together.
pub const XATTRS_BYTES_MAX: usize = 256 * 1024;
/// File capabilities: kept only when asked for by name (see
/// [`MetaScope::keeps_xattr`]).
pub const CAPABILITY_XATTR: &str = "security.capability";
/// The longest path a hard link names.
pub const LINK_MAX: usize = 4096;
/// The longest user or group name kept.
pub const NAME_MAX: usize = 255;

/// A path's owner: ids, and the names they had where they were read
/// (mapped back to ids by name where the names exist, as rsync does).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

/// Owner, extended attributes and hard links of one version of a path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meta {
    pub owner: Option<Owner>,
    /// Sorted by name, each name once.
    pub xattrs: Vec<Xattr>,
    /// For a file with other names in its replica (hard links): the first
    /// of its names in path order (this path itself, for that one).
    pub link: Option<String>,
}

/// What a replica keeps of [`Meta`]: the owner, and the extended
/// attributes in the namespaces it names (`user`, `trusted`, `security`,
/// `system`: the part of the name before the first dot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaScope {
    pub owner: bool,
    /// Map owners by their numeric ids only, never by name.
    pub numeric_ids: bool,
    pub namespaces: Vec<String>,
    /// Hard links: the names of one file are kept as one file.
    pub links: bool,
}

impl MetaScope {
    /// Whether attributes named `name` are kept. A file's capabilities
    /// (`security.capability`, which give a program root's powers as
    /// setuid does) only when the scope names `capability` itself: a peer
    /// must not hand this machine a privileged program by default.
    pub fn keeps_xattr(&self, name: &str) -> bool {
        if name == CAPABILITY_XATTR {
            return self.namespaces.iter().any(|n| n == "capability");
        }
        let ns = name.split('.').next().unwrap_or("");
        self.namespaces.iter().any(|n| n == ns)
    }

    /// Whether anything at all is kept.
    pub fn any(&self) -> bool {
        self.owner || self.links || !self.namespaces.is_empty()
    }

    /// The scope as a number a replica records, to notice when it
    /// changes: bit 0 owner, bit 1 numeric ids, then one bit per
    /// namespace of [`NAMESPACES`].
    pub fn bits(&self) -> u64 {
        let mut b = u64::from(self.owner) | u64::from(self.numeric_ids) << 1;
        for (i, ns) in NAMESPACES.iter().enumerate() {
            if self.namespaces.iter().any(|n| n == ns) {
                b |= 1 << (2 + i);
            }
        }
        b | u64::from(self.links) << LINKS_BIT
    }

    /// What this scope keeps that one recorded as `before` (see
    /// [`MetaScope::bits`]; None: unknown, nothing) did not.
    pub fn widened_from(&self, before: Option<u64>) -> MetaScope {
        let was = before.unwrap_or(0);
        MetaScope {
            owner: self.owner && was & 1 == 0,
            links: self.links && was & (1 << LINKS_BIT) == 0,
            numeric_ids: self.numeric_ids,
            namespaces: NAMESPACES
                .iter()
                .enumerate()
                .filter(|(i, ns)| {
                    was & (1 << (2 + i)) == 0 && self.namespaces.iter().any(|n| n == *ns)
                })
                .map(|(_, ns)| ns.to_string())
                .collect(),
        }
    }
}

/// The namespaces a scope can name (`capability`: `security.capability`
/// alone). Their order is part of [`MetaScope::bits`].
pub const NAMESPACES: [&str; 5] = ["user", "trusted", "security", "system", "capability"];
/// The bit of [`MetaScope::bits`] that says hard links are kept.
const LINKS_BIT: u32 = 2 + NAMESPACES.len() as u32;

/// Why metadata from elsewhere was refused (I-6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("an extended attribute name is empty, longer than {XATTR_NAME_MAX} bytes, has no namespace or holds a NUL byte")]
    BadName,
    #[error("extended attribute {0:?} has a value over {XATTR_VALUE_MAX} bytes")]
    ValueTooLarge(String),
    #[error("more than {XATTRS_MAX} extended attributes, or more than {XATTRS_BYTES_MAX} bytes of them, on one path")]
    TooMany,
    #[error("extended attributes are not sorted by name, or a name repeats")]
    Unsorted,
    #[error("an owner name is empty, longer than {NAME_MAX} bytes or holds a NUL byte")]
    BadOwnerName,
    #[error("a hard link names a path that is not a plain relative path of the replica")]
    BadLink,
}

impl Meta {
    /// Nothing to keep: `None` in an entry.
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.xattrs.is_empty() && self.link.is_none()
    }

    /// `Some` unless empty.
    pub fn boxed(self) -> Option<Box<Meta>> {
        (!self.is_empty()).then(|| Box::new(self))
    }

    /// The metadata a replica records for a path it read: what it
    /// `observed` of what `scope` keeps, and from `before` (the version it
    /// had) everything else, unchanged.
    pub fn observed_over(observed: Meta, before: Option<&Meta>, scope: &MetaScope) -> Meta {
        let mut m = observed;
        if let Some(b) = before {
            if !scope.owner {
                m.owner = b.owner.clone();
            }
            if !scope.links {
                m.link = b.link.clone();
            }
            m.xattrs.extend(
                b.xattrs
                    .iter()
                    .filter(|x| !scope.keeps_xattr(&x.name))
                    .cloned(),
            );
            m.xattrs.sort();
            m.xattrs.dedup_by(|a, b| a.name == b.name);
        }
        m
    }

    /// The attributes in the namespaces `scope` keeps.
    pub fn kept_xattrs<'a>(&'a self, scope: &'a MetaScope) -> impl Iterator<Item = &'a Xattr> {
        self.xattrs.iter().filter(|x| scope.keeps_xattr(&x.name))
    }

    /// Checks metadata a peer sent: names, sizes, order (I-6).
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.xattrs.len() > XATTRS_MAX {
            return Err(MetaError::TooMany);
        }
        let mut total = 0usize;
        for (i, x) in self.xattrs.iter().enumerate() {
            let n = &x.name;
            if n.is_empty() || n.len() > XATTR_NAME_MAX || n.contains('\0') || !n.contains('.') {
                return Err(MetaError::BadName);
            }
            if x.value.len() > XATTR_VALUE_MAX {
                return Err(MetaError::ValueTooLarge(n.clone()));
            }
            if i > 0 && self.xattrs[i - 1].name >= *n {
                return Err(MetaError::Unsorted);
            }
            total += n.len() + x.value.len();
        }
        if total > XATTRS_BYTES_MAX {
            return Err(MetaError::TooMany);
        }
        if let Some(l) = &self.link {
            if l.len() > LINK_MAX || crate::path::validate(l).is_err() {
                return Err(MetaError::BadLink);
            }
        }
        if let Some(o) = &self.owner {
            for name in [&o.user, &o.group].into_iter().flatten() {
                if name.is_empty() || name.len() > NAME_MAX || name.contains('\0') {
                    return Err(MetaError::BadOwnerName);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(name: &str, value: &[u8]) -> Xattr {
        Xattr {
            name: name.into(),
            value: value.to_vec(),
        }
    }

    fn owner(uid: u32) -> Option<Owner> {
        Some(Owner {
            uid,
            gid: uid,
            user: None,
            group: None,
        })
    }

    #[test]
    fn what_a_replica_does_not_keep_passes_through_unchanged() {
        let user_only = MetaScope {
            owner: false,
            numeric_ids: false,
            namespaces: vec!["user".into()],
            links: false,
        };
        let before = Meta {
            owner: owner(7),
            xattrs: vec![x("security.selinux", b"label"), x("user.a", b"old")],
            link: None,
        };
        let seen = Meta {
            owner: owner(1000),
            xattrs: vec![x("user.b", b"new")],
            link: None,
        };
        let m = Meta::observed_over(seen, Some(&before), &user_only);
        // The owner it cannot keep, and the security label, as before; the
        // user attributes as they are now (user.a was removed).
        assert_eq!(m.owner, owner(7));
        assert_eq!(
            m.xattrs,
            vec![x("security.selinux", b"label"), x("user.b", b"new")]
        );
        assert!(m.validate().is_ok());
        // Nothing before: what was seen.
        let m = Meta::observed_over(Meta::default(), None, &user_only);
        assert!(m.is_empty() && m.boxed().is_none());
    }

    #[test]
    fn a_widened_scope_names_only_what_is_new() {
        let narrow = MetaScope {
            owner: false,
            numeric_ids: false,
            namespaces: vec!["user".into()],
            links: false,
        };
        let wide = MetaScope {
            owner: true,
            numeric_ids: false,
            namespaces: vec!["user".into(), "security".into()],
            links: false,
        };
        let w = wide.widened_from(Some(narrow.bits()));
        assert!(w.owner);
        assert_eq!(w.namespaces, vec!["security".to_string()]);
        assert!(!wide.widened_from(Some(wide.bits())).any());
        assert!(!narrow.widened_from(Some(wide.bits())).any());
        assert_eq!(wide.widened_from(None).namespaces.len(), 2);
        assert_ne!(narrow.bits(), wide.bits());
    }

    #[test]
    fn capabilities_are_kept_only_when_named() {
        let mut s = MetaScope {
            owner: true,
            numeric_ids: false,
            namespaces: vec!["security".into(), "user".into()],
            links: false,
        };
        assert!(s.keeps_xattr("security.selinux") && s.keeps_xattr("user.x"));
        assert!(!s.keeps_xattr(CAPABILITY_XATTR) && !s.keeps_xattr("trusted.x"));
        s.namespaces.push("capability".into());
        assert!(s.keeps_xattr(CAPABILITY_XATTR));
    }

    #[test]
    fn hostile_metadata_is_refused() {
        let ok = Meta {
            owner: None,
            xattrs: vec![x("user.a", b"1"), x("user.b", b"2")],
            link: None,
        };
        assert!(ok.validate().is_ok());
        let bad = |xattrs: Vec<Xattr>| Meta {
            owner: None,
            xattrs,
            link: None,
        };
        assert_eq!(bad(vec![x("", b"")]).validate(), Err(MetaError::BadName));
        assert_eq!(
            bad(vec![x("nodot", b"")]).validate(),
            Err(MetaError::BadName)
        );
        assert_eq!(
            bad(vec![x(&"u.".repeat(200), b"")]).validate(),
            Err(MetaError::BadName)
        );
        assert_eq!(
            bad(vec![x("user.a\0b", b"")]).validate(),
            Err(MetaError::BadName)
        );
        assert!(matches!(
            bad(vec![x("user.a", &vec![0; XATTR_VALUE_MAX + 1])]).validate(),
            Err(MetaError::ValueTooLarge(_))
        ));
        assert_eq!(
            bad(vec![x("user.b", b""), x("user.a", b"")]).validate(),
            Err(MetaError::Unsorted)
        );
        assert_eq!(
            bad(vec![x("user.a", b""), x("user.a", b"")]).validate(),
            Err(MetaError::Unsorted)
        );
        let many: Vec<Xattr> = (0..XATTRS_MAX + 1)
            .map(|i| x(&format!("user.{i:05}"), b""))
            .collect();
        assert_eq!(bad(many).validate(), Err(MetaError::TooMany));
        let big: Vec<Xattr> = (0..5)
            .map(|i| x(&format!("user.{i}"), &vec![1; 60_000]))
            .collect();
        assert_eq!(bad(big).validate(), Err(MetaError::TooMany));
        let named = Meta {
            owner: Some(Owner {
                uid: 0,
                gid: 0,
                user: Some(String::new()),
                group: None,
            }),
            xattrs: vec![],
            link: None,
        };
        assert_eq!(named.validate(), Err(MetaError::BadOwnerName));
        for bad in ["../escape", "/abs", "", "a//b", ".weave/x"] {
            let linked = Meta {
                link: Some(bad.into()),
                ..Meta::default()
            };
            assert_eq!(linked.validate(), Err(MetaError::BadLink), "{bad}");
        }
        let linked = Meta {
            link: Some("d/first".into()),
            ..Meta::default()
        };
        assert!(linked.validate().is_ok());
    }
}
