//! `weave init`, `id`, `peer`, `folder`, `daemon`, `status` and
//! `conflicts`: the live mode (weave-daemon).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weave_daemon::config::{folder_policy, Mode, DEFAULT_PORT};
use weave_daemon::status::{FolderAction, PeerState};
use weave_daemon::{Config, DeviceId, Folder, Peer};
use weave_engine::PolicySpec;

#[derive(Args, Clone)]
pub struct ConfigDir {
    /// Where this device's identity and config live (default:
    /// $XDG_CONFIG_HOME/weave, or ~/.config/weave).
    #[arg(long, global = true, value_name = "DIR", env = "WEAVE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
}

impl ConfigDir {
    fn dir(&self) -> Result<PathBuf> {
        match &self.config_dir {
            Some(d) => Ok(d.clone()),
            None => weave_daemon::default_config_dir()
                .context("no config directory: HOME is not set; give one with --config-dir DIR"),
        }
    }
}

#[derive(Args)]
pub struct InitArgs {
    /// Where the daemon accepts its peers.
    #[arg(long, value_name = "ADDR", default_value_t = format!("0.0.0.0:{DEFAULT_PORT}"))]
    pub listen: String,
    /// A name for this device, for people (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The UDP port of LAN discovery: this device announces its id there
    /// by broadcast, and finds peers added by id alone; 0 turns it off.
    #[arg(long, value_name = "PORT", default_value_t = weave_daemon::config::DEFAULT_DISCOVERY)]
    pub discovery: u16,
}

#[derive(Subcommand)]
pub enum PeerCommand {
    /// Add a device this one syncs with (its id is what `weave id` prints
    /// there; its addresses are host:port to dial).
    Add {
        name: String,
        #[arg(value_name = "DEVICE-ID")]
        id: String,
        #[arg(value_name = "ADDR")]
        addresses: Vec<String>,
    },
    /// Give a peer more addresses to dial (host:port).
    AddAddress {
        name: String,
        #[arg(value_name = "ADDR", required = true)]
        addresses: Vec<String>,
    },
    /// Stop dialling a peer at these addresses (with none left, it dials
    /// this device).
    RemoveAddress {
        name: String,
        #[arg(value_name = "ADDR", required = true)]
        addresses: Vec<String>,
    },
    /// Forget a device (it is refused from then on).
    Remove { name: String },
    /// List the peers.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum FolderCommand {
    /// Add a folder to keep in sync (created if missing). Every device
    /// that shares it gives it the same ID.
    Add(FolderAddArgs),
    /// Share a folder with one more peer.
    Share {
        id: String,
        peer: String,
        /// The peer keeps the folder encrypted only (its folder is
        /// receive-encrypted): it is sent nothing in clear.
        #[arg(long)]
        untrusted: bool,
    },
    /// Stop sharing a folder with a peer.
    Unshare { id: String, peer: String },
    /// Stop syncing a folder (its files stay where they are).
    Remove { id: String },
    /// Receive-only folder: drop its local changes (edits, new files,
    /// deletions) and take the peers' versions again. What it replaces or
    /// removes is kept in the folder's version history. Asks the running
    /// daemon, and waits until it is done.
    Revert { id: String },
    /// Send-only folder: undo the peers' changes to it, so that every peer
    /// holds this device's versions again (their replaced files go to
    /// their version history). Asks the running daemon, and waits until it
    /// is done.
    Override { id: String },
    /// List the folders.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct FolderAddArgs {
    id: String,
    path: PathBuf,
    /// A peer to share it with (repeatable).
    #[arg(long = "peer", value_name = "NAME")]
    peers: Vec<String>,
    /// A peer untrusted with the folder (repeatable; it is shared with
    /// it too): it keeps the folder's encrypted bucket (its folder is
    /// receive-encrypted) and is sent nothing in clear. Needs a
    /// passphrase, as a --remote does.
    #[arg(long = "untrusted", value_name = "NAME")]
    untrusted: Vec<String>,
    /// two-way, send-only (sends its changes, takes none), receive-only,
    /// or receive-encrypted (this device is untrusted with the folder:
    /// it keeps its peers' encrypted data, and can read none of it).
    #[arg(long, default_value = "two-way")]
    mode: Mode,
    /// keep-both (the older version becomes a conflict copy) or newest.
    #[arg(long, default_value = "keep-both", value_parser = folder_policy)]
    conflict: PolicySpec,
    /// An ignore pattern (gitignore syntax; repeatable).
    #[arg(long = "ignore", value_name = "PATTERN")]
    ignore: Vec<String>,
    /// Milliseconds to gather changes before a sync (0: at once).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    watch_delay: u64,
    /// Seconds between full rescans.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    rescan: u64,
    /// An encrypted bucket replica to sync with besides the peers
    /// (s3://BUCKET/PREFIX or file:///DIR): after each local change, and
    /// every --poll seconds for other devices' changes.
    #[arg(long, value_name = "ADDRESS")]
    remote: Option<String>,
    /// Seconds between looks at the remote (and untrusted peers) for
    /// other devices' changes (default 60).
    #[arg(long, value_name = "SECS")]
    poll: Option<u64>,
    /// The passphrase of the remote and of the untrusted peers' copies is
    /// the first line of FILE (else the daemon's WEAVE_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

fn load(dir: &Path) -> Result<(DeviceId, Config)> {
    let me = weave_daemon::identity::load(dir)?;
    let cfg = Config::load(dir, me.id)?;
    Ok((me.id, cfg))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weave".to_string())
}

pub fn init(cd: &ConfigDir, a: InitArgs) -> Result<bool> {
    let dir = cd.dir()?;
    let name = a.name.unwrap_or_else(hostname);
    let mut cfg = Config::new(&name, &a.listen);
    cfg.device.discovery = a.discovery;
    // Check the config before making the identity, so a bad --listen
    // leaves nothing behind.
    let probe = DeviceId::from_public_key(b"");
    cfg.check(probe).map_err(|e| anyhow::anyhow!("{e}"))?;
    let me = weave_daemon::identity::create(&dir)?;
    cfg.save(&dir, me.id)?;
    weave_daemon::status::token(&dir)?;
    eprintln!(
        "weave: device {name:?} initialised in {}; it listens on {} once `weave daemon` runs",
        dir.display(),
        a.listen
    );
    eprintln!(
        "weave: give this device id to its peers (`weave peer add {name} ID ADDRESS` there):"
    );
    println!("{}", me.id);
    Ok(true)
}

pub fn id(cd: &ConfigDir) -> Result<bool> {
    let me = weave_daemon::identity::load(&cd.dir()?)?;
    println!("{}", me.id);
    Ok(true)
}

pub fn peer(cd: &ConfigDir, c: PeerCommand) -> Result<bool> {
    let dir = cd.dir()?;
    let (me, mut cfg) = load(&dir)?;
    match c {
        PeerCommand::Add {
            name,
            id,
            addresses,
        } => {
            let id = DeviceId::parse(&id)?;
            if let Some(p) = cfg.peer(&name) {
                bail!(
                    "a peer named {name:?} exists already (device {}, addresses: {}); change its addresses with `weave peer add-address {name} ADDR` or `weave peer remove-address {name} ADDR`, or remove it first with `weave peer remove {name}`",
                    p.id,
                    shown(&p.addresses)
                );
            }
            cfg.peers.push(Peer {
                name: name.clone(),
                id,
                addresses,
                paused: false,
            });
            cfg.save(&dir, me)?;
            eprintln!("weave: peer {name} added; share folders with it with `weave folder share FOLDER {name}`");
        }
        PeerCommand::AddAddress { name, addresses } => {
            let p = peer_mut(&mut cfg, &name)?;
            for a in addresses {
                if !p.addresses.contains(&a) {
                    p.addresses.push(a);
                }
            }
            let now = shown(&p.addresses);
            cfg.save(&dir, me)?;
            eprintln!("weave: peer {name}: addresses now {now}");
        }
        PeerCommand::RemoveAddress { name, addresses } => {
            let p = peer_mut(&mut cfg, &name)?;
            if let Some(a) = addresses.iter().find(|a| !p.addresses.contains(a)) {
                bail!(
                    "peer {name:?} has no address {a:?} (its addresses: {}); nothing was changed",
                    shown(&p.addresses)
                );
            }
            p.addresses.retain(|a| !addresses.contains(a));
            let now = shown(&p.addresses);
            cfg.save(&dir, me)?;
            eprintln!("weave: peer {name}: addresses now {now}");
        }
        PeerCommand::Remove { name } => {
            if cfg.peer(&name).is_none() {
                bail!("no peer is named {name:?} (`weave peer list` lists them)");
            }
            cfg.peers.retain(|p| p.name != name);
            for f in &mut cfg.folders {
                f.peers.retain(|p| p != &name);
                f.untrusted.retain(|p| p != &name);
            }
            cfg.save(&dir, me)?;
            eprintln!("weave: peer {name} removed");
        }
        PeerCommand::List { json } => {
            // The short ids conflict copies' names carry, by folder, as
            // the running daemon learnt them (none when it is not running).
            let ids = replica_ids(&dir);
            let of = |name: &str| ids.get(name).cloned().unwrap_or_default();
            if json {
                let mut list = Vec::new();
                for p in &cfg.peers {
                    let mut v = serde_json::to_value(p)?;
                    v["replicas"] = serde_json::to_value(of(&p.name))?;
                    list.push(v);
                }
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for p in &cfg.peers {
                    let known: Vec<String> = of(&p.name)
                        .iter()
                        .map(|(f, id)| format!("{f}:{id}"))
                        .collect();
                    println!(
                        "{}\t{}\t{}\t{}",
                        p.name,
                        p.id,
                        p.addresses.join(" "),
                        known.join(" ")
                    );
                }
            }
        }
    }
    Ok(true)
}

/// Device name → (folder → the short id of its replica of it), from the
/// status of the daemon running on config directory `dir`; empty when
/// none runs.
fn replica_ids(dir: &std::path::Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut ids: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Ok(s) = weave_daemon::status::fetch(dir) {
        for f in s.folders {
            for (device, id) in f.replicas {
                ids.entry(device).or_default().insert(f.id.clone(), id);
            }
        }
    }
    ids
}

/// A peer's addresses as shown in messages.
fn shown(addresses: &[String]) -> String {
    if addresses.is_empty() {
        "none (it dials this device)".into()
    } else {
        addresses.join(" ")
    }
}

fn peer_mut<'a>(cfg: &'a mut Config, name: &str) -> Result<&'a mut Peer> {
    cfg.peers
        .iter_mut()
        .find(|p| p.name == name)
        .with_context(|| format!("no peer is named {name:?} (`weave peer list` lists them)"))
}

pub fn folder(cd: &ConfigDir, c: FolderCommand) -> Result<bool> {
    let dir = cd.dir()?;

    let (me, mut cfg) = load(&dir)?;
    let find = |cfg: &Config, id: &str| -> Result<usize> {
        cfg.folders
            .iter()
            .position(|f| f.id == id)
            .with_context(|| {
                format!("no folder has the id {id:?} (`weave folder list` lists them)")
            })
    };
    let known_peer = |cfg: &Config, p: &str| -> Result<()> {
        if cfg.peer(p).is_none() {
            bail!("{p:?} is not a peer; add it first with `weave peer add {p} DEVICE-ID ADDRESS`");
        }
        Ok(())
    };
    match c {
        FolderCommand::Add(a) => {
            weave_daemon::config::check_folder_id(&a.id).map_err(|e| anyhow::anyhow!("{e}"))?;
            if cfg.folder(&a.id).is_some() {
                bail!(
                    "a folder with the id {:?} exists; share it with `weave folder share {} PEER`",
                    a.id,
                    a.id
                );
            }
            for p in a.peers.iter().chain(&a.untrusted) {
                known_peer(&cfg, p)?;
            }
            let encrypted_remote = a.remote.is_some() || !a.untrusted.is_empty();
            if !encrypted_remote && (a.poll.is_some() || a.passphrase_file.is_some()) {
                bail!("--poll and --passphrase-file go with --remote ADDRESS or --untrusted PEER");
            }
            let mut f = Folder::new(&a.id, a.path.clone());
            f.peers = a.peers;
            for p in &a.untrusted {
                if !f.peers.contains(p) {
                    f.peers.push(p.clone());
                }
                if !f.untrusted.contains(p) {
                    f.untrusted.push(p.clone());
                }
            }
            f.mode = a.mode;
            f.conflict = a.conflict;
            f.ignore = a.ignore;
            f.watch_delay_ms = a.watch_delay;
            f.rescan_secs = a.rescan;
            f.remote = a.remote;
            f.poll_secs = a.poll.unwrap_or(f.poll_secs);
            f.passphrase_file = match a.passphrase_file {
                Some(p) => Some(std::fs::canonicalize(&p).with_context(|| {
                    format!("--passphrase-file {}: cannot find it", p.display())
                })?),
                None => None,
            };
            // Checked before the directory is made: a refused folder
            // leaves nothing behind.
            weave_daemon::config::check_folder_settings(&f).map_err(|e| anyhow::anyhow!("{e}"))?;
            if f.mode == Mode::ReceiveEncrypted {
                encrypted_dir_ok(&a.path)?;
            }
            std::fs::create_dir_all(&a.path)
                .with_context(|| format!("cannot create the folder {}", a.path.display()))?;
            let path = std::fs::canonicalize(&a.path)
                .with_context(|| format!("cannot resolve {}", a.path.display()))?;
            f.path = path.clone();
            cfg.folders.push(f);
            cfg.save(&dir, me)?;
            eprintln!("weave: folder {} at {} added", a.id, path.display());
        }
        FolderCommand::Share {
            id,
            peer,
            untrusted,
        } => {
            known_peer(&cfg, &peer)?;
            let i = find(&cfg, &id)?;
            let f = &mut cfg.folders[i];
            if !f.peers.contains(&peer) {
                f.peers.push(peer.clone());
            }
            if untrusted && !f.untrusted.contains(&peer) {
                f.untrusted.push(peer.clone());
            }
            weave_daemon::config::check_folder_settings(f).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.save(&dir, me)?;
            eprintln!(
                "weave: folder {id} shared with {peer}{}",
                if untrusted {
                    " (untrusted: encrypted only)"
                } else {
                    ""
                }
            );
        }
        FolderCommand::Unshare { id, peer } => {
            let i = find(&cfg, &id)?;
            if !cfg.folders[i].peers.contains(&peer) {
                bail!(
                    "folder {id} is not shared with {peer:?} (its peers: {}); nothing was changed",
                    if cfg.folders[i].peers.is_empty() {
                        "none".into()
                    } else {
                        cfg.folders[i].peers.join(", ")
                    }
                );
            }
            cfg.folders[i].peers.retain(|p| p != &peer);
            cfg.folders[i].untrusted.retain(|p| p != &peer);
            cfg.save(&dir, me)?;
            eprintln!("weave: folder {id} no longer shared with {peer}");
        }
        FolderCommand::Remove { id } => {
            let i = find(&cfg, &id)?;
            cfg.folders.remove(i);
            cfg.save(&dir, me)?;
            eprintln!("weave: folder {id} removed (its files stay where they are)");
        }
        FolderCommand::Revert { id } => return ask(&dir, &id, FolderAction::Revert),
        FolderCommand::Override { id } => return ask(&dir, &id, FolderAction::Override),
        FolderCommand::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&cfg.folders)?);
            } else {
                for f in &cfg.folders {
                    let peers: Vec<String> = f
                        .peers
                        .iter()
                        .map(|p| match f.untrusted.contains(p) {
                            true => format!("{p} (untrusted)"),
                            false => p.clone(),
                        })
                        .collect();
                    println!(
                        "{}\t{}\t{}\t{}",
                        f.id,
                        f.path.display(),
                        f.mode,
                        peers.join(",")
                    );
                }
            }
        }
    }
    Ok(true)
}

/// Asks the running daemon to do `action` to folder `id`.
fn ask(dir: &Path, id: &str, action: FolderAction) -> Result<bool> {
    let said = weave_daemon::status::act(dir, id, action)?;
    eprintln!("weave: {said}");
    Ok(true)
}

pub fn daemon(cd: &ConfigDir, low_priority: bool) -> Result<bool> {
    let dir = cd.dir()?;
    if low_priority {
        lower_priority();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(weave_daemon::daemon::run(&dir))?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(true)
}

/// The nice value a daemon takes unless told otherwise (Syncthing's).
const LOW_PRIORITY: i32 = 9;

/// Lowers the CPU priority of every thread of this process to
/// [`LOW_PRIORITY`] (on Linux a priority is a thread's; the threads
/// started later inherit it from the ones that start them). Called
/// before the daemon starts its own threads.
fn lower_priority() {
    use rustix::process::{getpriority_process, setpriority_process, Pid};
    let tids: Vec<Option<Pid>> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_else(|_| vec![None]);
    for tid in tids {
        if getpriority_process(tid).unwrap_or(0) >= LOW_PRIORITY {
            continue;
        }
        if let Err(e) = setpriority_process(tid, LOW_PRIORITY) {
            tracing::warn!(
                "cannot lower the daemon's CPU priority ({e}); it runs at the one it has"
            );
            return;
        }
    }
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let s = weave_daemon::status::now_ms().saturating_sub(t) / 1000;
            match s {
                0..=59 => format!("{s}s ago"),
                60..=3599 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        }
    }
}

/// ", 3.2 MiB to go at 1.1 MiB/s, 3s left" while a sync copies.
fn to_go(f: &weave_daemon::status::FolderStatus) -> String {
    if f.bytes_to_go == 0 {
        return String::new();
    }
    let mut s = format!(", {} to go", bytes(f.bytes_to_go));
    if f.rate > 0 {
        s += &format!(" at {}/s", bytes(f.rate));
    }
    if let Some(eta) = f.eta_secs {
        s += &match eta {
            0..=59 => format!(", {eta}s left"),
            60..=3599 => format!(", {}m {}s left", eta / 60, eta % 60),
            _ => format!(", {}h {}m left", eta / 3600, eta % 3600 / 60),
        };
    }
    s
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

pub fn status(cd: &ConfigDir, json: bool) -> Result<bool> {
    let s = weave_daemon::status::fetch(&cd.dir()?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(true);
    }
    println!(
        "device {} ({})  listening on {}",
        s.device.name, s.device.id, s.device.listen
    );
    println!();
    for f in &s.folders {
        print_folder(f);
    }
    println!();
    for p in &s.peers {
        println!(
            "peer {}  {}  {}{}  last seen {}  sent {}  received {}",
            p.name,
            p.state,
            p.address.clone().unwrap_or_else(|| p.addresses.join(" ")),
            if p.rate_in + p.rate_out > 0 {
                format!("  ({}/s in, {}/s out)", bytes(p.rate_in), bytes(p.rate_out))
            } else {
                String::new()
            },
            ago(p.last_seen_ms),
            bytes(p.bytes_sent),
            bytes(p.bytes_received)
        );
        if let Some(e) = &p.last_error {
            if p.state != PeerState::Connected {
                println!("    {e}");
            }
        }
    }
    for a in &s.device.unshared_asks {
        println!(
            "{} shares folder {} with this device, which does not share it with {}: `weave folder add {} PATH --peer {}` does",
            a.peer, a.folder, a.peer, a.folder, a.peer
        );
    }
    if !s.device.refused.is_empty() {
        println!();
        println!(
            "refused (not peers of this device): {}",
            s.device.refused.join(", ")
        );
    }
    if !s.recent.is_empty() {
        println!();
        println!("recent:");
        for c in s.recent.iter().take(10) {
            let by = match c.by.is_empty() {
                true => String::new(),
                false => format!(", made on {}", c.by),
            };
            println!(
                "    {}  {} {} {} (with {}{by})",
                ago(Some(c.time_ms)),
                c.folder,
                c.action,
                c.path,
                c.peer
            );
        }
    }
    if !s.errors.is_empty() {
        println!();
        println!("errors:");
        for e in s.errors.iter().take(10) {
            println!(
                "    {}  {}{}",
                ago(Some(e.time_ms)),
                e.folder
                    .as_deref()
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default(),
                e.message
            );
        }
    }
    Ok(true)
}

/// One folder of `weave status`.
fn print_folder(f: &weave_daemon::status::FolderStatus) {
    println!(
        "folder {}  {}  [{}]  {}  {:.0}% in sync{}",
        f.id,
        f.path,
        f.mode,
        f.state,
        f.in_sync_percent,
        to_go(f)
    );
    println!(
        "    peers: {}   in sync with: {}   last sync: {}",
        if f.peers.is_empty() {
            "none".into()
        } else {
            f.peers.join(", ")
        },
        if f.in_sync_with.is_empty() {
            "none".into()
        } else {
            f.in_sync_with.join(", ")
        },
        ago(f.last_sync_ms)
    );
    let remotes: Vec<String> = f
        .remote
        .iter()
        .cloned()
        .chain(f.untrusted.iter().map(|p| format!("{p} (untrusted)")))
        .collect();
    if !remotes.is_empty() {
        println!(
            "    encrypted remotes: {}   last sync with one: {}",
            remotes.join(", "),
            ago(f.remote_synced_ms)
        );
    }
    if let Some(e) = &f.error {
        println!("    error: {e}");
    }
    if !f.replicas.is_empty() {
        let ids: Vec<String> = f
            .replicas
            .iter()
            .map(|(d, id)| format!("{d} {id}"))
            .collect();
        println!(
            "    replica ids (in conflict copies' names): {}",
            ids.join(", ")
        );
    }
    for c in &f.conflicts {
        println!("    conflict copy: {c}{}", made_on(c, &f.replicas));
    }
    for n in f.notices.iter().take(5) {
        println!("    {n}");
    }
    if f.local_changes > 0 {
        let shown: Vec<&str> = f
            .local_change_paths
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        let more = f.local_changes.saturating_sub(shown.len() as u64);
        println!(
            "    changed here: {}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more (`weave status --json` lists 100)")
            } else {
                String::new()
            }
        );
    }
}

/// Lists the conflict copies of every folder; with the daemon down, from
/// the config and the disk directly.
/// " (the losing version was made on DEVICE)" for a conflict copy whose
/// name carries one of `replicas`' short ids, else "".
fn made_on(copy: &str, replicas: &std::collections::BTreeMap<String, String>) -> String {
    replicas
        .iter()
        .find(|(_, id)| copy.contains(&format!("-{id}")))
        .map(|(d, _)| format!(" (the losing version was made on {d})"))
        .unwrap_or_default()
}

pub fn conflicts(cd: &ConfigDir, json: bool) -> Result<bool> {
    let dir = cd.dir()?;
    let (_, cfg) = load(&dir)?;
    // Whose replica each short id is, if a daemon runs and knows.
    let known = weave_daemon::status::fetch(&dir).ok();
    let replicas = |folder: &str| {
        known
            .as_ref()
            .and_then(|s| s.folders.iter().find(|f| f.id == folder))
            .map(|f| f.replicas.clone())
            .unwrap_or_default()
    };
    let mut all = Vec::new();
    for f in &cfg.folders {
        let ids = replicas(&f.id);
        for c in weave_daemon::status::conflicts_in(&f.path, &cfg.subfolders(f)) {
            let by = made_on(&c, &ids);
            all.push((f.id.clone(), f.path.join(&c), c, by));
        }
    }
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(f, full, rel, _)| serde_json::json!({"folder": f, "path": rel, "full_path": full}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (f, full, _, by) in &all {
            println!("{f}\t{}{by}", full.display());
        }
        if all.is_empty() {
            eprintln!("weave: no conflict copies");
        }
    }
    Ok(all.is_empty())
}

/// A receive-encrypted folder's directory is new, empty, or a bucket
/// already: it holds nothing but its peers' encrypted objects.
fn encrypted_dir_ok(path: &Path) -> Result<()> {
    let Ok(mut entries) = std::fs::read_dir(path) else {
        return Ok(());
    };
    if entries.next().is_some() && !path.join(weave_bucket::pool::CONFIG).exists() {
        bail!(
            "{} holds files; a receive-encrypted folder keeps only its peers' encrypted data: give an empty or new directory",
            path.display()
        );
    }
    Ok(())
}

/// What `weave pause` and `weave resume` act on.
#[derive(Args)]
pub struct PauseArgs {
    /// A folder's id (or, with --peer, a peer's name).
    #[arg(value_name = "FOLDER")]
    folder: Option<String>,
    /// A peer instead: not dialled, its connections refused.
    #[arg(long, value_name = "NAME", conflicts_with = "folder")]
    peer: Option<String>,
}

/// `weave pause` (`paused`) or `weave resume`: sets it in the config,
/// which a running daemon follows at once.
pub fn pause(cd: &ConfigDir, a: PauseArgs, paused: bool) -> Result<bool> {
    use weave_daemon::config::Pausable;
    let dir = cd.dir()?;
    let me = weave_daemon::identity::load(&dir)?;
    let what = match (a.folder, a.peer) {
        (Some(id), None) => Pausable::Folder(id),
        (None, Some(name)) => Pausable::Peer(name),
        _ => bail!("give a folder's id, or --peer NAME"),
    };
    let said = weave_daemon::config::set_paused(&dir, me.id, &what, paused)?;
    eprintln!("weave: {said}");
    Ok(true)
}
