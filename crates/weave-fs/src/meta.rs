//! Owners and extended attributes on disk: read for a path the scan found
//! changed ([`read`]), and given to what the executor writes ([`apply`]),
//! within what the replica keeps ([`MetaScope`]).
//!
//! Owners are kept by name where the name exists here, else by number, as
//! rsync does (`numeric_ids`: by number only). A file system without
//! extended attributes keeps none: what a path had of them elsewhere passes
//! through this replica unchanged, and is not set here.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use weave_core::{Meta, MetaScope, Owner, Xattr};

/// What the process running this replica may keep: owners as root only
/// (as `rsync -a`: a user cannot give files away), and extended
/// attributes in the `user` namespace; as root also `trusted`, `security`
/// (SELinux labels, capabilities) and `system` (POSIX ACLs).
pub fn default_scope() -> MetaScope {
    let root = rustix::process::geteuid().is_root();
    let mut namespaces = vec!["user".to_string()];
    if root {
        namespaces.extend(["trusted", "security", "system"].map(String::from));
    }
    MetaScope {
        owner: root,
        numeric_ids: false,
        namespaces,
        links: false,
    }
}

static SCOPE: std::sync::OnceLock<MetaScope> = std::sync::OnceLock::new();

/// Sets what the replicas of this process keep (the command line's
/// choice), once, before any is opened. False if it was set already.
pub fn set_scope(scope: MetaScope) -> bool {
    SCOPE.set(scope).is_ok()
}

/// What the replicas of this process keep: as set, else [`default_scope`].
pub fn scope() -> &'static MetaScope {
    SCOPE.get_or_init(default_scope)
}

/// User and group names by id and ids by name, looked up once each.
#[derive(Default)]
pub struct Names {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
    uids: Mutex<HashMap<String, Option<u32>>>,
    gids: Mutex<HashMap<String, Option<u32>>>,
    /// (device, namespace, extended attributes kept there): a few rows,
    /// looked up for every path read (no key made per lookup).
    support: Mutex<Vec<(u64, String, bool)>>,
}

impl Names {
    fn user(&self, uid: u32) -> Option<String> {
        let mut m = self.users.lock().unwrap();
        m.entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid).and_then(|u| u.name().to_str().map(String::from))
            })
            .clone()
    }

    fn group(&self, gid: u32) -> Option<String> {
        let mut m = self.groups.lock().unwrap();
        m.entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid).and_then(|g| g.name().to_str().map(String::from))
            })
            .clone()
    }

    fn uid(&self, name: &str) -> Option<u32> {
        let mut m = self.uids.lock().unwrap();
        *m.entry(name.to_string())
            .or_insert_with(|| uzers::get_user_by_name(name).map(|u| u.uid()))
    }

    fn gid(&self, name: &str) -> Option<u32> {
        let mut m = self.gids.lock().unwrap();
        *m.entry(name.to_string())
            .or_insert_with(|| uzers::get_group_by_name(name).map(|g| g.gid()))
    }

    /// Whether the file system of `path` (device `dev`) keeps extended
    /// attributes in namespace `ns`, asked once per device: reading a name
    /// that is not there says "no such attribute" where it does, "not
    /// supported" where it does not (a listing is empty either way).
    fn supports(&self, path: &Path, dev: u64, ns: &str) -> bool {
        let mut m = self.support.lock().unwrap();
        if let Some(&(_, _, known)) = m.iter().find(|(d, n, _)| *d == dev && n == ns) {
            return known;
        }
        let probe = match ns {
            "system" => "system.posix_acl_access".to_string(),
            "capability" => "security.weave-probe".to_string(),
            _ => format!("{ns}.weave-probe"),
        };
        let kept = !matches!(
            rustix::fs::lgetxattr_query(path, probe.as_str()),
            Err(rustix::io::Errno::OPNOTSUPP)
        );
        m.push((dev, ns.to_string(), kept));
        kept
    }

    /// The ids `o` has here: by name where the name exists (unless
    /// `numeric`), else its numbers.
    pub fn ids_of(&self, o: &Owner, numeric: bool) -> (u32, u32) {
        let by_name = |n: &Option<String>, f: &dyn Fn(&str) -> Option<u32>| {
            n.as_deref().filter(|_| !numeric).and_then(f)
        };
        (
            by_name(&o.user, &|n| self.uid(n)).unwrap_or(o.uid),
            by_name(&o.group, &|n| self.gid(n)).unwrap_or(o.gid),
        )
    }
}

/// What `scope` keeps of the path `path` (metadata `m`, not followed if a
/// symlink), and the scope it could be read under: the namespaces the file
/// system has no attributes in (or a symlink's) are left out of it, so
/// that what the replica had of them passes through.
pub fn read(path: &Path, m: &Metadata, scope: &MetaScope, names: &Names) -> (Meta, MetaScope) {
    let owner = scope.owner.then(|| Owner {
        uid: m.uid(),
        gid: m.gid(),
        user: (!scope.numeric_ids).then(|| names.user(m.uid())).flatten(),
        group: (!scope.numeric_ids).then(|| names.group(m.gid())).flatten(),
    });
    let mut read_as = scope.clone();
    let symlink = m.file_type().is_symlink();
    read_as
        .namespaces
        .retain(|ns| !symlink && names.supports(path, m.dev(), ns));
    let xattrs = match read_as.namespaces.is_empty() {
        true => Some(Vec::new()),
        false => read_xattrs(path, &read_as).ok(),
    };
    if xattrs.is_none() {
        read_as.namespaces.clear();
    }
    let xattrs = xattrs.unwrap_or_default();
    (
        Meta {
            owner,
            xattrs,
            link: None,
        },
        read_as,
    )
}

/// The extended attributes of `path` in the namespaces `scope` keeps,
/// sorted by name; names that are not UTF-8 are left out.
fn read_xattrs(path: &Path, scope: &MetaScope) -> io::Result<Vec<Xattr>> {
    let n = rustix::fs::llistxattr_query(path)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut list = vec![0u8; n];
    let n = rustix::fs::llistxattr(path, &mut list[..])?;
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !scope.keeps_xattr(name) {
            continue;
        }
        let len = match rustix::fs::lgetxattr_query(path, name) {
            Ok(len) => len,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut value = vec![0u8; len];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..])?;
        value.truncate(len);
        out.push(Xattr {
            name: name.to_string(),
            value,
        });
    }
    out.sort();
    Ok(out)
}

/// What [`fill_missing`] could not give back: those values stay as they
/// were recorded (a failure must never read as a removal).
#[derive(Debug, Default)]
pub struct Unfilled {
    pub owner: bool,
    pub xattrs: Vec<String>,
}

/// Gives `path` what `widened` keeps of `recorded` and the path lacks:
/// the owner (where its ids differ), and each attribute it has no value
/// for (one it has is its own change, and stays). Says what it could not.
pub fn fill_missing(path: &Path, recorded: &Meta, widened: &MetaScope, names: &Names) -> Unfilled {
    let mut unfilled = Unfilled::default();
    if !widened.any() {
        return unfilled;
    }
    let to = Target::Path(path);
    if let Some(o) = recorded.owner.as_ref().filter(|_| widened.owner) {
        unfilled.owner = give_owner(&to, o, widened.numeric_ids, names).is_err();
    }
    let wanted: Vec<&Xattr> = recorded.kept_xattrs(widened).collect();
    if wanted.is_empty() {
        return unfilled;
    }
    let Ok(have) = list(&to) else {
        unfilled.xattrs = wanted.iter().map(|x| x.name.clone()).collect();
        return unfilled;
    };
    let mut writable = Writable::new(&to);
    for x in wanted.into_iter().filter(|x| !have.contains(&x.name)) {
        if writable.retry(|to| set_xattr(to, x)).is_err() {
            unfilled.xattrs.push(x.name.clone());
        }
    }
    unfilled
}

/// Gives `to` the owner `o` (by name where the name exists here), unless
/// it has those ids already: a change of owner clears a file's setuid and
/// setgid bits and capabilities, even to the same ids. The mode it had
/// (those bits with it) is put back after a change.
fn give_owner(to: &Target, o: &Owner, numeric: bool, names: &Names) -> io::Result<()> {
    let (uid, gid) = names.ids_of(o, numeric);
    let m = match to {
        Target::File(f) => f.metadata()?,
        Target::Path(p) => std::fs::symlink_metadata(p)?,
    };
    if (m.uid(), m.gid()) == (uid, gid) {
        return Ok(());
    }
    match to {
        Target::File(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid))?,
        Target::Path(p) => std::os::unix::fs::lchown(p, Some(uid), Some(gid))?,
    }
    let special = m.mode() & 0o7000;
    if special != 0 && !m.file_type().is_symlink() {
        let mode = std::fs::Permissions::from_mode(m.mode() & 0o7777);
        match to {
            Target::File(f) => f.set_permissions(mode)?,
            Target::Path(p) => std::fs::set_permissions(p, mode)?,
        }
    }
    Ok(())
}

fn set_xattr(to: &Target, x: &Xattr) -> rustix::io::Result<()> {
    let flags = rustix::fs::XattrFlags::empty();
    match to {
        Target::File(f) => rustix::fs::fsetxattr(f, x.name.as_str(), &x.value, flags),
        Target::Path(p) => rustix::fs::lsetxattr(*p, x.name.as_str(), &x.value, flags),
    }
}

/// Where metadata is given: an open file, or a path (not followed).
pub enum Target<'a> {
    File(&'a File),
    Path(&'a Path),
}

/// Gives `to` what `scope` keeps of `meta`: its owner, and exactly its
/// extended attributes in the kept namespaces (others there are removed).
/// A file system without extended attributes is left as it is. Its mode
/// is as before whatever happens (a read-only file is made writable for
/// the change only).
pub fn apply(to: Target, meta: Option<&Meta>, scope: &MetaScope, names: &Names) -> io::Result<()> {
    if let Some(o) = meta.and_then(|m| m.owner.as_ref()).filter(|_| scope.owner) {
        give_owner(&to, o, scope.numeric_ids, names)?;
    }
    if scope.namespaces.is_empty() {
        return Ok(());
    }
    let want: Vec<&Xattr> = meta
        .map(|m| m.kept_xattrs(scope).collect())
        .unwrap_or_default();
    let have = match list(&to) {
        Ok(h) => h,
        Err(e) if unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut writable = Writable::new(&to);
    for name in have.iter().filter(|n| scope.keeps_xattr(n)) {
        if !want.iter().any(|x| &x.name == name) {
            let remove = |to: &Target| match to {
                Target::File(f) => rustix::fs::fremovexattr(f, name.as_str()),
                Target::Path(p) => rustix::fs::lremovexattr(*p, name.as_str()),
            };
            match writable.retry(remove) {
                // A security label is the system's (SELinux refuses to
                // drop one): another machine having none is no error.
                Err(_) if name.starts_with("security.") => {}
                r => r.map_err(|e| named(e, name))?,
            }
        }
    }
    for x in want {
        // What is there already is left alone (setting it again would
        // need write permission, which a read-only file does not give).
        if have.contains(&x.name) && value_of(&to, &x.name).as_deref() == Some(&x.value[..]) {
            continue;
        }
        writable
            .retry(|to| set_xattr(to, x))
            .map_err(|e| named(e, &x.name))?;
    }
    Ok(())
}

/// A file made writable by its owner for a change of its attributes, and
/// given its mode back when done, however that ends.
struct Writable<'a> {
    to: &'a Target<'a>,
    /// The mode it had, once it was made writable.
    was: Option<u32>,
}

impl<'a> Writable<'a> {
    fn new(to: &'a Target<'a>) -> Writable<'a> {
        Writable { to, was: None }
    }

    /// Runs `op`; if the file is not writable, once more after giving its
    /// owner write permission. A namespace the file system does not have
    /// is skipped.
    fn retry(&mut self, op: impl Fn(&Target) -> rustix::io::Result<()>) -> io::Result<()> {
        match op(self.to) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(rustix::io::Errno::ACCESS) if self.was.is_none() => {
                let mode = match self.to {
                    Target::File(f) => f.metadata()?.mode(),
                    Target::Path(p) => std::fs::symlink_metadata(p)?.mode(),
                } & 0o7777;
                set_mode(self.to, mode | 0o200)?;
                self.was = Some(mode);
                match op(self.to) {
                    Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Writable<'_> {
    fn drop(&mut self) {
        if let Some(mode) = self.was {
            let _ = set_mode(self.to, mode);
        }
    }
}

fn set_mode(to: &Target, mode: u32) -> io::Result<()> {
    let p = std::fs::Permissions::from_mode(mode);
    match to {
        Target::File(f) => f.set_permissions(p),
        Target::Path(path) => std::fs::set_permissions(path, p),
    }
}

/// An error about attribute `name`, named.
fn named(e: io::Error, name: &str) -> io::Error {
    io::Error::new(e.kind(), format!("extended attribute {name}: {e}"))
}

/// The value of attribute `name` of `to`, if it can be read.
fn value_of(to: &Target, name: &str) -> Option<Vec<u8>> {
    let len = match to {
        Target::File(f) => rustix::fs::fgetxattr_query(f, name),
        Target::Path(p) => rustix::fs::lgetxattr_query(*p, name),
    }
    .ok()?;
    let mut v = vec![0u8; len];
    let n = match to {
        Target::File(f) => rustix::fs::fgetxattr(f, name, &mut v[..]),
        Target::Path(p) => rustix::fs::lgetxattr(*p, name, &mut v[..]),
    }
    .ok()?;
    v.truncate(n);
    Some(v)
}

fn list(to: &Target) -> io::Result<Vec<String>> {
    let n = match to {
        Target::File(f) => rustix::fs::flistxattr_query(f)?,
        Target::Path(p) => rustix::fs::llistxattr_query(*p)?,
    };
    let mut list = vec![0u8; n];
    let n = match to {
        Target::File(f) => rustix::fs::flistxattr(f, &mut list[..])?,
        Target::Path(p) => rustix::fs::llistxattr(*p, &mut list[..])?,
    };
    Ok(list[..n]
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

/// The file system keeps no extended attributes.
fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_scope() -> MetaScope {
        MetaScope {
            owner: false,
            numeric_ids: false,
            namespaces: vec!["user".into()],
            links: false,
        }
    }

    /// Whether this machine's temporary directory keeps user attributes.
    fn xattrs_here(dir: &Path) -> bool {
        let p = dir.join("probe");
        std::fs::write(&p, b"").unwrap();
        let ok =
            rustix::fs::lsetxattr(&p, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
        std::fs::remove_file(&p).unwrap();
        ok
    }

    #[test]
    fn attributes_are_read_and_given_exactly() {
        let d = tempfile::tempdir().unwrap();
        if !xattrs_here(d.path()) {
            eprintln!("skipped: no user extended attributes here");
            return;
        }
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let flags = rustix::fs::XattrFlags::empty();
        rustix::fs::lsetxattr(&a, "user.color", b"blue", flags).unwrap();
        rustix::fs::lsetxattr(&a, "user.bin", &[0, 255, 7], flags).unwrap();
        rustix::fs::lsetxattr(&b, "user.stale", b"x", flags).unwrap();
        let names = Names::default();
        let scope = user_scope();
        let (m, read_as) = read(&a, &std::fs::symlink_metadata(&a).unwrap(), &scope, &names);
        assert_eq!(read_as, scope, "all of it could be read");
        assert_eq!(m.xattrs.len(), 2);
        assert_eq!(m.xattrs[0].name, "user.bin");
        assert!(m.owner.is_none(), "owners kept only where asked");
        // Given to b: b's own attribute goes, a's arrive.
        apply(Target::Path(&b), Some(&m), &scope, &names).unwrap();
        let (mb, _) = read(&b, &std::fs::symlink_metadata(&b).unwrap(), &scope, &names);
        assert_eq!(
            mb,
            Meta {
                owner: None,
                ..m.clone()
            }
        );
        // And through an open file, to nothing at all.
        let f = File::options().write(true).open(&b).unwrap();
        apply(Target::File(&f), None, &scope, &names).unwrap();
        let (mb, _) = read(&b, &std::fs::symlink_metadata(&b).unwrap(), &scope, &names);
        assert!(mb.is_empty());
    }

    /// An attribute this file system refuses (an NFSv4 ACL from
    /// another machine, here on ext4/tmpfs) must not keep the others from
    /// being set: the names sort "system" < "trusted" < "user".
    #[test]
    fn an_unsupported_attribute_does_not_stop_the_others() {
        let d = tempfile::tempdir().unwrap();
        if !xattrs_here(d.path()) {
            eprintln!("skipped: no user extended attributes here");
            return;
        }
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let scope = MetaScope {
            owner: false,
            numeric_ids: false,
            namespaces: vec!["system".into(), "user".into()],
            links: false,
        };
        let want = Meta {
            owner: None,
            xattrs: vec![
                Xattr {
                    name: "system.nfs4_acl".into(),
                    value: b"\0\0\0\0".to_vec(),
                },
                Xattr {
                    name: "user.color".into(),
                    value: b"blue".to_vec(),
                },
            ],
            link: None,
        };
        let names = Names::default();
        apply(Target::Path(&f), Some(&want), &scope, &names).unwrap();
        let (got, _) = read(
            &f,
            &std::fs::symlink_metadata(&f).unwrap(),
            &user_scope(),
            &names,
        );
        assert_eq!(
            got.xattrs,
            vec![Xattr {
                name: "user.color".into(),
                value: b"blue".to_vec()
            }],
            "user.color was never set"
        );
    }

    #[test]
    fn owners_map_by_name_unless_numeric() {
        let names = Names::default();
        let root = Owner {
            uid: 4242,
            gid: 4343,
            user: Some("root".into()),
            group: Some("root".into()),
        };
        assert_eq!(names.ids_of(&root, false), (0, 0));
        assert_eq!(names.ids_of(&root, true), (4242, 4343));
        let unknown = Owner {
            user: Some("no-such-user-here".into()),
            group: None,
            ..root
        };
        assert_eq!(names.ids_of(&unknown, false), (4242, 4343));
    }
}
