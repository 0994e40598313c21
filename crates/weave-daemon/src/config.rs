//! The daemon's config file (`config.toml` in the config directory): this
//! device, its peers and its folders. The commands `weave peer add`,
//! `weave folder add` and `weave folder share` edit it, so nobody has to;
//! a running daemon reads it again when it changes.

use crate::id::DeviceId;
use crate::DaemonError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;
use weave_core::PolicySpec;

pub const CONFIG_FILE: &str = "config.toml";
/// The port a daemon listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 22100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: Device,
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, rename = "folder", skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<Folder>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// A name for people (logs, status); peers know this device by id.
    pub name: String,
    /// Where the daemon accepts its peers (host:port).
    pub listen: String,
    /// Where the status API listens (127.0.0.1 only; port 0 picks one,
    /// which the daemon writes to the config directory).
    #[serde(default = "default_api")]
    pub api: String,
    /// The UDP port of LAN discovery (announcements of this device, and
    /// of others, by broadcast); 0 turns it off.
    #[serde(default = "default_discovery")]
    pub discovery: u16,
}

fn default_api() -> String {
    "127.0.0.1:0".to_string()
}

/// The UDP port of LAN discovery, unless the config says another.
pub const DEFAULT_DISCOVERY: u16 = 22027;

fn default_discovery() -> u16 {
    DEFAULT_DISCOVERY
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    pub id: DeviceId,
    /// host:port addresses to dial; none means the peer dials us.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Paused: not dialled, its connections refused, until resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Changes flow both ways.
    #[default]
    TwoWay,
    /// Local changes go out; remote changes are never taken in.
    SendOnly,
    /// Remote changes are taken in; local changes never go out.
    ReceiveOnly,
    /// This device is untrusted with the folder: it keeps the encrypted
    /// bucket its peers (which mark it untrusted) sync through, and can
    /// read none of it.
    ReceiveEncrypted,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::TwoWay => "two-way",
            Mode::SendOnly => "send-only",
            Mode::ReceiveOnly => "receive-only",
            Mode::ReceiveEncrypted => "receive-encrypted",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = ConfigProblem;
    fn from_str(s: &str) -> Result<Mode, ConfigProblem> {
        match s {
            "two-way" => Ok(Mode::TwoWay),
            "send-only" => Ok(Mode::SendOnly),
            "receive-only" => Ok(Mode::ReceiveOnly),
            "receive-encrypted" => Ok(Mode::ReceiveEncrypted),
            _ => Err(ConfigProblem::UnknownMode(s.to_string())),
        }
    }
}

/// A folder's conflict policy: keep-both or newest (the one type of
/// [`weave_core::policy`]; prefer= names a replica of a one-shot sync,
/// and a folder has no such list).
pub fn folder_policy(s: &str) -> Result<PolicySpec, ConfigProblem> {
    match s.parse::<PolicySpec>() {
        Ok(p @ (PolicySpec::KeepBoth | PolicySpec::Newest)) => Ok(p),
        _ => Err(ConfigProblem::UnknownConflict(s.to_string())),
    }
}

/// A folder's policy in config.toml, refused as an unknown value of the
/// two a folder takes (the words serde gave when this was an enum).
fn folder_policy_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PolicySpec, D::Error> {
    let s = String::deserialize(d)?;
    folder_policy(&s).map_err(|_| serde::de::Error::unknown_variant(&s, &["keep-both", "newest"]))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Folder {
    /// The same on every device that shares the folder.
    pub id: String,
    pub path: PathBuf,
    /// Names of the peers it is shared with.
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, deserialize_with = "folder_policy_de")]
    pub conflict: PolicySpec,
    /// Extra ignore patterns (gitignore syntax), beside `.weaveignore`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// How long changes are gathered after the first one before a sync
    /// (milliseconds; 0 syncs at once).
    #[serde(default = "default_watch_delay")]
    pub watch_delay_ms: u64,
    /// A full rescan this often (seconds), in case the watcher missed
    /// something.
    #[serde(default = "default_rescan")]
    pub rescan_secs: u64,
    /// An encrypted bucket replica the folder syncs with besides its
    /// peers (`s3://BUCKET/PREFIX`, `file:///DIR`): after each local
    /// change, and every `poll_secs` for other devices' changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// How often the bucket is looked at for other devices' changes.
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// The bucket's passphrase is the first line of this file (else the
    /// daemon's WEAVE_PASSPHRASE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// Peers untrusted with the folder (some of `peers`): they are sent
    /// nothing in clear, only the encrypted bucket they keep for it
    /// (their folder is receive-encrypted), synced with as with a bucket
    /// remote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untrusted: Vec<String>,
    /// Paused: not scanned, synced or served, until resumed (changes on
    /// disk meanwhile are found then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// The longest watch delay a folder takes (10 minutes).
pub const MAX_WATCH_DELAY_MS: u64 = 600_000;
/// The longest interval between full rescans (a year).
pub const MAX_RESCAN_SECS: u64 = 366 * 24 * 3600;

fn default_watch_delay() -> u64 {
    50
}
fn default_rescan() -> u64 {
    3600
}
fn default_poll() -> u64 {
    60
}

impl Folder {
    pub fn new(id: &str, path: PathBuf) -> Folder {
        Folder {
            id: id.to_string(),
            path,
            peers: Vec::new(),
            mode: Mode::TwoWay,
            conflict: PolicySpec::KeepBoth,
            ignore: Vec::new(),
            watch_delay_ms: default_watch_delay(),
            rescan_secs: default_rescan(),
            remote: None,
            poll_secs: default_poll(),
            passphrase_file: None,
            untrusted: Vec::new(),
            paused: false,
        }
    }
}

/// What is wrong with a config (or a value for it), said so that a person
/// can fix it.
#[derive(Debug, Error)]
pub enum ConfigProblem {
    #[error("{0}")]
    Syntax(toml::de::Error),
    #[error("{0}")]
    Unwritable(toml::ser::Error),
    #[error("a peer has an empty name")]
    EmptyPeerName,
    #[error("peer {0:?} has this device's own id; give the other device's id (`weave id` there)")]
    OwnId(String),
    #[error("two peers are named {0:?}; names must differ")]
    SamePeerName(String),
    #[error("peers {0:?} and {1:?} have the same device id; one device is one peer")]
    SamePeerId(String, String),
    #[error("peer {0:?}: {1}")]
    PeerAddress(String, BadAddress),
    #[error("listen: {0}")]
    Listen(BadAddress),
    #[error("folder id {0:?} is not usable: use 1 to 64 letters, digits, `.`, `_` or `-` (the same id on every device that shares the folder)")]
    FolderId(String),
    #[error("folder {folder:?}: its path {} is not absolute", .path.display())]
    RelativePath { folder: String, path: PathBuf },
    #[error("two folders have the id {0:?}")]
    SameFolderId(String),
    #[error("folders {first:?} and {second:?} have the same path {}", .path.display())]
    SamePath {
        first: String,
        second: String,
        path: PathBuf,
    },
    #[error("folder {folder:?} is shared with {peer:?}, which is not a peer; add it with `weave peer add {peer} DEVICE-ID ADDRESS`")]
    NotAPeer { folder: String, peer: String },
    #[error("folder {folder:?}: {problem}; correct it or leave it out (gitignore syntax, as in .weaveignore)")]
    Ignore {
        folder: String,
        problem: weave_core::ignore::IgnoreError,
    },
    #[error("folder {folder:?}: a watch delay of {ms} ms is too long; give at most {MAX_WATCH_DELAY_MS} ms (0 syncs at once)")]
    WatchDelay { folder: String, ms: u64 },
    #[error("folder {folder:?}: a rescan every {secs} s is not usable; give 1 to {MAX_RESCAN_SECS} seconds")]
    Rescan { folder: String, secs: u64 },
    #[error("folder {folder}: its remote: {problem}")]
    Remote { folder: String, problem: String },
    #[error("folder {folder}: {problem}")]
    Untrusted { folder: String, problem: String },
    #[error(
        "unknown folder mode {0:?}: use two-way, send-only, receive-only or receive-encrypted"
    )]
    UnknownMode(String),
    #[error("unknown conflict policy {0:?} for a folder: use keep-both or newest")]
    UnknownConflict(String),
}

/// An address that is not host:port.
#[derive(Debug, Error)]
#[error("{0:?} is not an address: give host:port, e.g. 192.168.1.20:{DEFAULT_PORT}")]
pub struct BadAddress(pub String);

/// A folder id travels to peers and names state: letters, digits, `.`,
/// `_` and `-`.
pub fn check_folder_id(id: &str) -> Result<(), ConfigProblem> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ConfigProblem::FolderId(id.to_string()));
    }
    Ok(())
}

impl Config {
    pub fn new(name: &str, listen: &str) -> Config {
        Config {
            device: Device {
                name: name.to_string(),
                listen: listen.to_string(),
                api: default_api(),
                discovery: default_discovery(),
            },
            peers: Vec::new(),
            folders: Vec::new(),
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CONFIG_FILE)
    }

    /// Reads and checks `dir/config.toml`.
    pub fn load(dir: &Path, me: DeviceId) -> Result<Config, DaemonError> {
        let path = Config::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DaemonError::NotInitialised(dir.to_path_buf()))
            }
            Err(e) => {
                return Err(DaemonError::Io {
                    path,
                    what: "read".into(),
                    why: e,
                })
            }
        };
        let c: Config = toml::from_str(&text).map_err(|e| DaemonError::BadConfig {
            path: path.clone(),
            problem: ConfigProblem::Syntax(e),
        })?;
        c.check(me)
            .map_err(|problem| DaemonError::BadConfig { path, problem })?;
        Ok(c)
    }

    /// Writes `dir/config.toml` (atomically) after checking it.
    pub fn save(&self, dir: &Path, me: DeviceId) -> Result<(), DaemonError> {
        let path = Config::path(dir);
        self.check(me).map_err(|problem| DaemonError::BadConfig {
            path: path.clone(),
            problem,
        })?;
        let text = toml::to_string_pretty(self).map_err(|e| DaemonError::BadConfig {
            path: path.clone(),
            problem: ConfigProblem::Unwritable(e),
        })?;
        crate::identity::write_atomic(&path, text.as_bytes(), false)
    }

    /// What is wrong with it, if anything, said so that a person can fix it.
    pub fn check(&self, me: DeviceId) -> Result<(), ConfigProblem> {
        for (i, p) in self.peers.iter().enumerate() {
            if p.name.is_empty() {
                return Err(ConfigProblem::EmptyPeerName);
            }
            if p.id == me {
                return Err(ConfigProblem::OwnId(p.name.clone()));
            }
            for q in &self.peers[..i] {
                if q.name == p.name {
                    return Err(ConfigProblem::SamePeerName(p.name.clone()));
                }
                if q.id == p.id {
                    return Err(ConfigProblem::SamePeerId(q.name.clone(), p.name.clone()));
                }
            }
            for a in &p.addresses {
                check_address(a).map_err(|e| ConfigProblem::PeerAddress(p.name.clone(), e))?;
            }
        }
        check_address(&self.device.listen).map_err(ConfigProblem::Listen)?;
        for (i, f) in self.folders.iter().enumerate() {
            check_folder_id(&f.id)?;
            if !f.path.is_absolute() {
                return Err(ConfigProblem::RelativePath {
                    folder: f.id.clone(),
                    path: f.path.clone(),
                });
            }
            for q in &self.folders[..i] {
                if q.id == f.id {
                    return Err(ConfigProblem::SameFolderId(f.id.clone()));
                }
                if q.path == f.path {
                    return Err(ConfigProblem::SamePath {
                        first: q.id.clone(),
                        second: f.id.clone(),
                        path: f.path.clone(),
                    });
                }
            }
            check_folder_settings(f)?;
            for p in &f.untrusted {
                if !f.peers.contains(p) {
                    return Err(ConfigProblem::Untrusted {
                        folder: f.id.clone(),
                        problem: format!("untrusted peer {p:?} is not one of its peers; share the folder with it first"),
                    });
                }
            }
            for p in &f.peers {
                if !self.peers.iter().any(|q| &q.name == p) {
                    return Err(ConfigProblem::NotAPeer {
                        folder: f.id.clone(),
                        peer: p.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    pub fn peer_by_id(&self, id: DeviceId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    pub fn folder(&self, id: &str) -> Option<&Folder> {
        self.folders.iter().find(|f| f.id == id)
    }

    /// The folders configured inside `f` (sub-folders), as paths relative
    /// to it: `f` never syncs their content.
    pub fn subfolders(&self, f: &Folder) -> Vec<String> {
        self.folders
            .iter()
            .filter(|g| g.id != f.id)
            .filter_map(|g| g.path.strip_prefix(&f.path).ok())
            .filter(|rel| !rel.as_os_str().is_empty())
            .map(|rel| rel.to_string_lossy().into_owned())
            .collect()
    }
}

/// What `weave pause` and `weave resume` (and the API's routes of the
/// same names) act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pausable {
    Folder(String),
    Peer(String),
}

/// Pauses (or resumes) `what` in the config of directory `dir`, which a
/// running daemon follows at once. Returns what was done, for the user.
pub fn set_paused(
    dir: &Path,
    me: DeviceId,
    what: &Pausable,
    paused: bool,
) -> Result<String, DaemonError> {
    let mut cfg = Config::load(dir, me)?;
    let verb = if paused { "paused" } else { "resumed" };
    let (flag, shown) = match what {
        Pausable::Folder(id) => {
            let f = cfg
                .folders
                .iter_mut()
                .find(|f| &f.id == id)
                .ok_or_else(|| {
                    DaemonError::Refused(format!(
                        "no folder has the id {id:?} (`weave folder list` lists them)"
                    ))
                })?;
            (&mut f.paused, format!("folder {id}"))
        }
        Pausable::Peer(name) => {
            let p = cfg
                .peers
                .iter_mut()
                .find(|p| &p.name == name)
                .ok_or_else(|| {
                    DaemonError::Refused(format!(
                        "no peer is named {name:?} (`weave peer list` lists them)"
                    ))
                })?;
            (&mut p.paused, format!("peer {name}"))
        }
    };
    if *flag == paused {
        return Ok(format!("{shown} is {verb} already"));
    }
    *flag = paused;
    cfg.save(dir, me)?;
    Ok(format!("{shown} {verb}"))
}

/// A folder's own settings: its ignore patterns parse (as a sync will
/// read them), its intervals are in range.
pub fn check_folder_settings(f: &Folder) -> Result<(), ConfigProblem> {
    weave_core::ignore::Matcher::check(&f.ignore, "ignore").map_err(|problem| {
        ConfigProblem::Ignore {
            folder: f.id.clone(),
            problem,
        }
    })?;
    if f.watch_delay_ms > MAX_WATCH_DELAY_MS {
        return Err(ConfigProblem::WatchDelay {
            folder: f.id.clone(),
            ms: f.watch_delay_ms,
        });
    }
    if f.rescan_secs == 0 || f.rescan_secs > MAX_RESCAN_SECS {
        return Err(ConfigProblem::Rescan {
            folder: f.id.clone(),
            secs: f.rescan_secs,
        });
    }
    if f.mode == Mode::ReceiveEncrypted && (f.remote.is_some() || !f.untrusted.is_empty()) {
        return Err(ConfigProblem::Untrusted {
            folder: f.id.clone(),
            problem: "a receive-encrypted folder only keeps its peers' encrypted data; it has no remote and no untrusted peers of its own".into(),
        });
    }
    if let Some(r) = &f.remote {
        match weave_bucket::BucketAddress::parse(r) {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(ConfigProblem::Remote {
                    folder: f.id.clone(),
                    problem: e.to_string(),
                })
            }
            None => {
                return Err(ConfigProblem::Remote {
                    folder: f.id.clone(),
                    problem: format!("{r}: not a bucket; give s3://BUCKET/PREFIX or file:///DIR"),
                })
            }
        }
    }
    if f.remote.is_some() || !f.untrusted.is_empty() {
        if f.passphrase_file.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(ConfigProblem::Remote {
                folder: f.id.clone(),
                problem: "its passphrase_file must be an absolute path".into(),
            });
        }
        if f.poll_secs == 0 || f.poll_secs > MAX_RESCAN_SECS {
            return Err(ConfigProblem::Remote {
                folder: f.id.clone(),
                problem: format!("poll every {} s: give 1 to {MAX_RESCAN_SECS}", f.poll_secs),
            });
        }
    }
    Ok(())
}

fn check_address(a: &str) -> Result<(), BadAddress> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(BadAddress(a.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> DeviceId {
        DeviceId::from_public_key(b"me")
    }

    #[test]
    fn a_config_round_trips_through_its_file() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Config::new("laptop", "127.0.0.1:22100");
        c.peers.push(Peer {
            name: "nas".into(),
            id: DeviceId::from_public_key(b"nas"),
            addresses: vec!["10.0.0.2:22100".into()],
            paused: false,
        });
        let mut f = Folder::new("docs", "/srv/docs".into());
        f.peers.push("nas".into());
        f.mode = Mode::SendOnly;
        c.folders.push(f);
        c.save(d.path(), me()).unwrap();
        assert_eq!(Config::load(d.path(), me()).unwrap(), c);
        let text = std::fs::read_to_string(Config::path(d.path())).unwrap();
        assert!(text.contains("mode = \"send-only\""), "{text}");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let mut c = Config::new("x", "0.0.0.0:1");
        let mut f = Folder::new("docs", "/a".into());
        f.peers.push("ghost".into());
        c.folders.push(f);
        let e = c.check(me()).unwrap_err().to_string();
        assert!(e.contains("ghost") && e.contains("weave peer add"), "{e}");
        c.folders[0].peers.clear();
        c.folders[0].path = "rel".into();
        assert!(c
            .check(me())
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
        c.folders[0].path = "/a".into();
        c.peers.push(Peer {
            name: "self".into(),
            id: me(),
            addresses: vec![],
            paused: false,
        });
        assert!(c.check(me()).unwrap_err().to_string().contains("own id"));
        c.peers.clear();
        c.device.listen = "nowhere".into();
        assert!(c.check(me()).unwrap_err().to_string().contains("host:port"));
        assert!(check_folder_id("a/b").is_err());
    }

    #[test]
    fn a_folders_ignore_patterns_and_intervals_are_checked() {
        let mut c = Config::new("x", "0.0.0.0:1");
        let mut f = Folder::new("docs", "/d".into());
        f.ignore = vec!["*.tmp".into(), "[".into()];
        c.folders.push(f);
        let e = c.check(me()).unwrap_err().to_string();
        assert!(
            e.starts_with("folder \"docs\": bad ignore pattern \"[\" (ignore): ")
                && e.ends_with(
                    "; correct it or leave it out (gitignore syntax, as in .weaveignore)"
                ),
            "{e}"
        );
        c.folders[0].ignore = vec!["*.tmp".into(), "!keep.tmp".into()];
        c.check(me()).unwrap();
        c.folders[0].watch_delay_ms = MAX_WATCH_DELAY_MS + 1;
        let e = c.check(me()).unwrap_err().to_string();
        assert!(
            e.contains("watch delay") && e.contains("at most 600000 ms"),
            "{e}"
        );
        c.folders[0].watch_delay_ms = 0;
        c.check(me()).unwrap();
        for secs in [0, u64::MAX] {
            c.folders[0].rescan_secs = secs;
            let e = c.check(me()).unwrap_err().to_string();
            assert!(
                e.contains("rescan") && e.contains("1 to 31622400 seconds"),
                "{e}"
            );
        }
        // A config file with a bad pattern is refused as it is read.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            Config::path(d.path()),
            "[device]\nname = \"x\"\nlisten = \"0.0.0.0:1\"\n[[folder]]\nid = \"docs\"\npath = \"/d\"\nignore = [\"[\"]\n",
        )
        .unwrap();
        let e = Config::load(d.path(), me()).unwrap_err().to_string();
        assert!(e.contains("bad ignore pattern \"[\""), "{e}");
    }

    #[test]
    fn subfolders_are_found_by_path() {
        let mut c = Config::new("x", "0.0.0.0:1");
        c.folders.push(Folder::new("docs", "/d".into()));
        c.folders.push(Folder::new("private", "/d/private".into()));
        c.folders.push(Folder::new("other", "/dd".into()));
        assert_eq!(c.subfolders(&c.folders[0]), vec!["private".to_string()]);
        assert!(c.subfolders(&c.folders[1]).is_empty());
    }

    #[test]
    fn problems_read_as_they_did() {
        let said = [
            (
                ConfigProblem::Listen(BadAddress("nowhere".into())),
                "listen: \"nowhere\" is not an address: give host:port, e.g. 192.168.1.20:22100",
            ),
            (
                ConfigProblem::RelativePath {
                    folder: "docs".into(),
                    path: "rel".into(),
                },
                "folder \"docs\": its path rel is not absolute",
            ),
            (
                ConfigProblem::SamePath {
                    first: "a".into(),
                    second: "b".into(),
                    path: "/d".into(),
                },
                "folders \"a\" and \"b\" have the same path /d",
            ),
            (
                ConfigProblem::NotAPeer {
                    folder: "docs".into(),
                    peer: "nas".into(),
                },
                "folder \"docs\" is shared with \"nas\", which is not a peer; add it with `weave peer add nas DEVICE-ID ADDRESS`",
            ),
        ];
        for (problem, text) in said {
            assert_eq!(problem.to_string(), text);
        }
        assert_eq!(
            "both".parse::<Mode>().unwrap_err().to_string(),
            "unknown folder mode \"both\": use two-way, send-only, receive-only or receive-encrypted"
        );
    }

    /// A folder's policy is the one conflict-policy type, written as it
    /// is typed; prefer= (a one-shot sync's) is refused for a folder, in
    /// the config file as on the command line.
    #[test]
    fn a_folders_conflict_policy_is_keep_both_or_newest() {
        let folder =
            |conflict: &str| format!("id = \"docs\"\npath = \"/d\"\nconflict = \"{conflict}\"\n");
        let f: Folder = toml::from_str(&folder("newest")).unwrap();
        assert_eq!(f.conflict, PolicySpec::Newest);
        assert!(toml::to_string(&f)
            .unwrap()
            .contains("conflict = \"newest\""));
        let f: Folder = toml::from_str("id = \"docs\"\npath = \"/d\"\n").unwrap();
        assert_eq!(f.conflict, PolicySpec::KeepBoth);
        for bad in ["prefer=/d", "bogus"] {
            let e = toml::from_str::<Folder>(&folder(bad))
                .unwrap_err()
                .to_string();
            let said = format!("unknown variant `{bad}`, expected `keep-both` or `newest`");
            assert!(e.contains(&said), "{e}");
            let e = folder_policy(bad).unwrap_err().to_string();
            assert!(e.contains("for a folder: use keep-both or newest"), "{e}");
        }
    }
}
