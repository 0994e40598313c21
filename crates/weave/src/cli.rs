use crate::output;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weave_engine::{PolicySpec, SyncOptions};

/// weave keeps directory trees replicated, in both directions, without
/// ever losing anybody's change.
#[derive(Parser)]
#[command(name = "weave", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    config: crate::live::ConfigDir,
}

#[derive(Subcommand)]
enum Command {
    /// Bring two or more directory trees to the same state, in every direction.
    ///
    /// Each directory is a replica with its own state in DIR/.weave (created
    /// on first use). Changes made anywhere since the last sync propagate
    /// everywhere; concurrent changes to the same file follow --conflict.
    ///
    /// Exit status: 0 in sync; 1 finished with conflicts or per-file errors
    /// (listed on stderr); 2 usage or fatal error.
    Sync(SyncArgs),
    /// Serve one replica over stdin/stdout (what `weave sync` starts on a
    /// remote host through ssh; not for interactive use).
    Serve(ServeArgs),
    /// List the old versions of a file, or (with --deleted) the deleted
    /// files that can be restored.
    ///
    /// A sync keeps what it replaces or deletes in the replica's version
    /// store (DIR/.weave/versions), deduplicated by chunk.
    History(HistoryArgs),
    /// Bring back an old version of a file, or a deleted directory's tree.
    ///
    /// Without --to, the version is written in place: a new local change
    /// that the next sync propagates (what it replaces is kept as a version
    /// first). With --to, it is written there instead.
    #[command(disable_version_flag = true)]
    Restore(RestoreArgs),
    /// Apply the retention policy to the version store now (a sync does it
    /// after keeping versions), or check the store for damage; with
    /// --bucket, prune a bucket replica's old versions (two phases: a gc
    /// marks, a gc a grace period later deletes).
    Gc(GcArgs),
    /// Show or set how long a replica keeps old versions.
    ///
    /// The default is staggered for a year: every version for an hour,
    /// then one per hour for a day, one per day for a month, one per week
    /// after that. Rules that are set must all keep a version.
    Retention(RetentionArgs),
    /// Read and write the records of a key/value store (a directory that
    /// `weave sync --kind kv` keeps in sync, like a directory tree).
    #[command(subcommand)]
    Kv(KvCommand),
    /// Create this device's identity and config for the daemon, and print
    /// its device id.
    Init(crate::live::InitArgs),
    /// Print this device's id (what its peers give `weave peer add`).
    Id,
    /// Pause a folder (not scanned, synced or served; changes made
    /// meanwhile are found when it resumes), or a peer (--peer: not
    /// dialled, its connections refused). A running daemon follows at once.
    Pause(crate::live::PauseArgs),
    /// Resume a paused folder, or a peer (--peer).
    Resume(crate::live::PauseArgs),
    /// Print a shell completion script: `weave completions bash >
    /// /etc/bash_completion.d/weave` (zsh: into a directory of $fpath as
    /// `_weave`; fish: `~/.config/fish/completions/weave.fish`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (weave.1, and one per command: weave-sync.1,
    /// weave-folder-add.1, …) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Add, remove or list the devices this one syncs with.
    #[command(subcommand)]
    Peer(crate::live::PeerCommand),
    /// Add, share or list the folders the daemon keeps in sync.
    #[command(subcommand)]
    Folder(crate::live::FolderCommand),
    /// Run in the foreground: watch the folders and keep them in sync with
    /// their peers over TLS. Logs go to stderr (RUST_LOG sets the level);
    /// SIGINT or SIGTERM stops it cleanly. It follows config changes.
    Daemon {
        /// Keep the normal CPU priority. By default the daemon lowers its
        /// own (nice 9, as Syncthing does), so that the work it syncs
        /// (a copy into a folder, say) is not slowed by the syncing.
        #[arg(long)]
        normal_priority: bool,

        /// What every folder keeps besides content, modes and mtimes (as
        /// for `weave sync`).
        #[command(flatten)]
        keep: KeepArgs,
    },
    /// Ask the running daemon what it is doing: folders, peers, recent
    /// changes, conflicts, errors.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List the conflict copies in the daemon's folders (exit 1 if any).
    Conflicts {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Set KEY to VALUE (or to what stdin holds, without VALUE). Creates
    /// the store in STORE (an existing directory) if it has none.
    Put {
        #[arg(value_name = "STORE")]
        store: PathBuf,
        key: String,
        value: Option<String>,
    },
    /// Print KEY's value (exit 1 if there is none).
    Get {
        #[arg(value_name = "STORE")]
        store: PathBuf,
        key: String,
    },
    /// Remove KEY (exit 1 if there was none).
    Del {
        #[arg(value_name = "STORE")]
        store: PathBuf,
        key: String,
    },
    /// List the keys (and, with --values, their values), marking conflict
    /// copies.
    List {
        #[arg(value_name = "STORE")]
        store: PathBuf,
        /// Print each value after its key.
        #[arg(long)]
        values: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A bucket replica whose versions to read instead of a local replica's.
#[derive(clap::Args)]
pub struct BucketArgs {
    /// Work on the versions kept in this bucket replica
    /// (s3://BUCKET/PREFIX or file:///DIR) instead of a local replica's.
    #[arg(long, value_name = "ADDRESS")]
    pub bucket: Option<String>,
    /// The bucket's passphrase, from the first line of FILE (else
    /// WEAVE_PASSPHRASE, else asked on the terminal).
    #[arg(long, value_name = "FILE", requires = "bucket")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct HistoryArgs {
    /// A file (or, with --deleted, a directory) inside a replica; with
    /// --bucket, a path inside the bucket's tree.
    #[arg(value_name = "PATH", default_value = ".")]
    path: PathBuf,
    #[command(flatten)]
    bucket: BucketArgs,
    /// List the files under PATH that were deleted and can be restored.
    #[arg(long)]
    deleted: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The file or directory to restore (inside a replica); with
    /// --bucket, a file inside the bucket's tree.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    #[command(flatten)]
    bucket: BucketArgs,
    /// What it held at this time: "2026-11-21 09:30" (UTC) or an age
    /// such as 90m, 2h, 3d. Default: the newest version.
    #[arg(long, value_name = "TIME", conflicts_with = "version")]
    at: Option<String>,
    /// A version id from `weave history`.
    #[arg(long, value_name = "ID")]
    version: Option<u64>,
    /// Write it here instead of in place (must not exist yet).
    #[arg(long, value_name = "DEST")]
    to: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GcArgs {
    /// The replica (default: the one the current directory is in).
    #[arg(value_name = "REPLICA", conflicts_with = "bucket")]
    replica: Option<PathBuf>,
    /// Read every stored chunk back and list the versions a damaged or
    /// missing one affects, instead of pruning (changes nothing).
    #[arg(long, conflicts_with = "bucket")]
    check: bool,
    #[command(flatten)]
    bucket: BucketArgs,
    #[command(flatten)]
    prune: BucketPruneArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// How `weave gc --bucket` prunes (a bucket keeps its versions until
/// told otherwise).
#[derive(clap::Args)]
pub struct BucketPruneArgs {
    /// With --bucket: keep at most N old versions of each file.
    #[arg(long, value_name = "N", requires = "bucket")]
    pub keep_last: Option<u32>,
    /// With --bucket: drop old versions replaced longer ago than this:
    /// 30d, 12h, 2w...
    #[arg(long, value_name = "AGE", value_parser = parse_age, requires = "bucket")]
    pub max_age: Option<i64>,
    /// With --bucket: thin out old versions on the staggered schedule
    /// (all for an hour, hourly for a day, daily for a month, weekly
    /// after).
    #[arg(long, requires = "bucket")]
    pub staggered: bool,
    /// With --bucket: delete only what a gc at least this long ago marked
    /// (default 1d; 0 deletes at the next gc). Keep it longer than your
    /// longest sync: a sync that read the bucket before a mark and writes
    /// after its sweep leaves out what lost its chunks, but one writing
    /// during the sweep itself is not protected.
    #[arg(long, value_name = "AGE", value_parser = parse_age, requires = "bucket")]
    pub grace: Option<i64>,
    /// With --bucket: say what would be marked and deleted, and write
    /// nothing.
    #[arg(long, requires = "bucket")]
    pub dry_run: bool,
}

impl BucketPruneArgs {
    /// Whether any of them was given.
    fn given(&self) -> bool {
        self.keep_last.is_some()
            || self.max_age.is_some()
            || self.staggered
            || self.grace.is_some()
            || self.dry_run
    }
}

#[derive(clap::Args)]
struct RetentionArgs {
    /// The replica (default: the one the current directory is in).
    #[arg(value_name = "REPLICA", default_value = ".")]
    replica: PathBuf,
    /// Keep at most N versions of each file.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Thin out old versions on the staggered schedule.
    #[arg(long, overrides_with = "no_staggered")]
    staggered: bool,
    /// Do not thin out old versions by age.
    #[arg(long)]
    no_staggered: bool,
    /// Drop versions older than this: 30d, 12h, 2w...
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    max_age: Option<i64>,
    /// Keep the store at most this large: 500M, 10G... (the oldest
    /// versions go first).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Start from "keep every version" instead of the current policy.
    #[arg(long)]
    keep_all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_age(s: &str) -> Result<i64, String> {
    weave_store::retention::parse_duration(s)
        .ok_or_else(|| format!("'{s}' is not an age; use a number with s, m, h, d or w (30d, 12h)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * mult as f64) as u64),
        _ => Err(format!(
            "'{s}' is not a size; use bytes or a number with K, M, G or T (500M, 10G)"
        )),
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Speak weave's protocol on stdin and stdout.
    #[arg(long, required = true)]
    stdio: bool,

    #[command(flatten)]
    keep: KeepArgs,
}

/// What a sync keeps besides content, modes and mtimes.
#[derive(clap::Args, Clone)]
struct KeepArgs {
    /// Extended attributes to keep, by namespace: a comma-separated list
    /// of user, trusted, security (SELinux labels) and system (POSIX
    /// ACLs), or none; add capability to keep file capabilities
    /// (security.capability) too. Default: user; run as root, the four
    /// namespaces, without capabilities.
    #[arg(long, value_name = "NAMESPACES", value_parser = parse_namespaces)]
    xattrs: Option<Namespaces>,

    /// Do not keep owners, even when run as root (as root they are kept
    /// by default, as rsync -a does).
    #[arg(long)]
    no_owner: bool,

    /// Keep owners by their numeric ids, not by user and group name.
    #[arg(long)]
    numeric_ids: bool,

    /// Keep hard links: names of one file in a replica stay one file on
    /// the others (like rsync -H). Off by default.
    #[arg(short = 'H', long)]
    hard_links: bool,
}

impl KeepArgs {
    /// What the replicas of this process keep.
    fn scope(&self) -> weave_core::MetaScope {
        let mut s = weave_fs::meta::default_scope();
        if let Some(ns) = &self.xattrs {
            s.namespaces = ns.0.clone();
        }
        s.owner &= !self.no_owner;
        s.numeric_ids = self.numeric_ids;
        s.links = self.hard_links;
        s
    }

    /// The same choice, for a remote `weave serve` (which applies it
    /// with its own powers: owners only where it runs as root).
    fn serve_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(Namespaces(ns)) = &self.xattrs {
            let list = if ns.is_empty() {
                "none".to_string()
            } else {
                ns.join(",")
            };
            v.push(format!("--xattrs={list}"));
        }
        if self.no_owner {
            v.push("--no-owner".into());
        }
        if self.numeric_ids {
            v.push("--numeric-ids".into());
        }
        if self.hard_links {
            v.push("--hard-links".into());
        }
        v
    }
}

/// Extended attribute namespaces (empty: none).
#[derive(Clone)]
struct Namespaces(Vec<String>);

/// A list of extended attribute namespaces, or "none".
fn parse_namespaces(s: &str) -> Result<Namespaces, String> {
    if s == "none" {
        return Ok(Namespaces(Vec::new()));
    }
    let known = ["user", "trusted", "security", "system", "capability"];
    let mut out: Vec<String> = Vec::new();
    for ns in s.split(',').map(str::trim) {
        if !known.contains(&ns) {
            return Err(format!(
                "unknown namespace {ns:?}: give a comma-separated list of user, trusted, security, system and capability, or none"
            ));
        }
        if !out.iter().any(|n| n == ns) {
            out.push(ns.to_string());
        }
    }
    Ok(Namespaces(out))
}

#[derive(clap::Args)]
struct SyncArgs {
    /// The replicas: local directories, [user@]host:path,
    /// ssh://[user@]host[:port]/path (weave must be installed there too),
    /// or encrypted bucket replicas: s3://BUCKET/PREFIX, file:///DIR.
    #[arg(value_name = "REPLICA", required = true, num_args = 2..)]
    replicas: Vec<String>,

    /// The passphrase of bucket replicas, from the first line of FILE
    /// (else WEAVE_PASSPHRASE, else asked on the terminal).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,

    /// Paths planned and carried out at a time when every path is planned
    /// (0: the default, 4096). For tests: smaller slices take more
    /// rounds and less memory.
    #[arg(long, value_name = "PATHS", default_value_t = 0, hide = true)]
    slice: usize,

    /// The command that runs weave on a remote host (default: ssh), like
    /// rsync -e; it is given the host and the command to run.
    #[arg(long, short = 'e', value_name = "CMD")]
    rsh: Option<String>,

    /// Where weave is on remote hosts (default: weave, found on PATH).
    #[arg(long, value_name = "PATH")]
    remote_weave: Option<String>,

    /// Cap the transfer rate to each remote host: a number of KiB/s, or
    /// with a unit: 500K, 10M, 1G (per second).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,

    /// What the replicas are: files (directory trees, the default) or kv
    /// (key/value stores, see `weave kv`). Every replica of a sync is of
    /// this kind, remote ones too.
    #[arg(long, value_name = "KIND", default_value = "files")]
    kind: String,

    /// What to do when the same file changed on several replicas:
    /// keep-both (default; the older version becomes a conflict copy),
    /// newest (the newer mtime wins), or prefer=PATH (the version held by
    /// the replica at PATH wins).
    #[arg(long, value_name = "POLICY", default_value = "keep-both")]
    conflict: PolicySpec,

    /// Make REPLICA (one of the replicas, as given above) a backup for
    /// this sync: it takes in every change of the others and sends none of
    /// its own. Its own edits, new files and deletions are replaced by the
    /// others' state; what that replaces of a file is kept in its version
    /// history (`weave history`). Repeat for several backups.
    #[arg(long, value_name = "REPLICA")]
    backup: Vec<PathBuf>,

    /// Ignore paths matching PATTERN (gitignore syntax), on every replica,
    /// in addition to the patterns in each replica's .weaveignore (which
    /// this option does not change). Ignored paths are never touched.
    #[arg(long, value_name = "PATTERN")]
    ignore: Vec<String>,

    /// Print what would be done, and change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,

    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long)]
    json: bool,

    /// Print nothing but errors and conflicts.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    keep: KeepArgs,
}

/// A rate: KiB/s, or with a K, M or G suffix (powers of 1024).
fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s
        .trim()
        .trim_end_matches("/s")
        .trim_end_matches("iB")
        .trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1 << 10),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(((v * mult as f64) as u64).max(1)),
        _ => Err(format!(
            "bad rate {s:?}: give KiB per second (e.g. 500) or a number with K, M or G (e.g. 10M)"
        )),
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics on stderr, off unless RUST_LOG asks for them; the
    // daemon logs at info by default.
    let filter = match (&cli.command, std::env::var_os("RUST_LOG")) {
        (Command::Daemon { .. }, None) => tracing_subscriber::EnvFilter::new("info,notify=warn"),
        _ => tracing_subscriber::EnvFilter::from_default_env(),
    };
    let colour = colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let cd = &cli.config;
    match cli.command {
        Command::Pause(a) => done(crate::live::pause(cd, a, true)),
        Command::Resume(a) => done(crate::live::pause(cd, a, false)),
        Command::Completions { shell } => {
            done(crate::manuals::completions(shell, <Cli as clap::CommandFactory>::command()))
        }
        Command::Man { dir } => done(crate::manuals::man(&dir, <Cli as clap::CommandFactory>::command())),
        Command::Sync(args) => sync(args),
        Command::Serve(a) => {
            weave_fs::meta::set_scope(a.keep.scope());
            serve()
        }
        Command::Kv(c) => done(match c {
            KvCommand::Put { store, key, value } => crate::kv::put(&store, &key, value),
            KvCommand::Get { store, key } => crate::kv::get(&store, &key),
            KvCommand::Del { store, key } => crate::kv::del(&store, &key),
            KvCommand::List {
                store,
                values,
                json,
            } => crate::kv::list(&store, values, json),
        }),
        Command::History(a) => done(match &a.bucket.bucket {
            Some(_) => crate::buckets::history(&a.bucket, &a.path, a.deleted, a.json),
            None => crate::versions::history(&a.path, a.deleted, a.json),
        }),
        Command::Restore(a) => done(match &a.bucket.bucket {
            Some(_) => crate::buckets::restore(
                &a.bucket,
                &a.path,
                a.at.as_deref(),
                a.version,
                a.to.as_deref(),
                a.json,
            ),
            None => crate::versions::restore(
                &a.path,
                a.at.as_deref(),
                a.version,
                a.to.as_deref(),
                a.json,
            ),
        }),
        Command::Gc(a) => done(match &a.bucket.bucket {
            Some(_) => crate::buckets::prune(&a.bucket, &a.prune, a.json),
            // (clap's `requires` lets these through beside a REPLICA.)
            None if a.prune.given() => Err(anyhow::anyhow!(
                "--keep-last, --max-age, --staggered, --grace and --dry-run go with --bucket; a local replica's policy is set with `weave retention`"
            )),
            None => crate::versions::gc(
                a.replica.as_deref().unwrap_or(std::path::Path::new(".")),
                a.check,
                a.json,
            ),
        }),
        Command::Retention(a) => {
            let change = crate::versions::PolicyChange {
                keep_last: a.keep_last,
                staggered: if a.no_staggered {
                    Some(false)
                } else if a.staggered {
                    Some(true)
                } else {
                    None
                },
                max_age: a.max_age,
                max_size: a.max_size,
                keep_all: a.keep_all,
            };
            done(crate::versions::retention(&a.replica, change, a.json))
        }
        Command::Init(a) => done(crate::live::init(cd, a)),
        Command::Id => done(crate::live::id(cd)),
        Command::Peer(c) => done(crate::live::peer(cd, c)),
        Command::Folder(c) => done(crate::live::folder(cd, c)),
        Command::Daemon {
            normal_priority,
            keep,
        } => {
            weave_fs::meta::set_scope(keep.scope());
            done(crate::live::daemon(cd, !normal_priority))
        }
        Command::Status { json } => done(crate::live::status(cd, json)),
        Command::Conflicts { json } => done(crate::live::conflicts(cd, json)),
    }
}

/// Whether the log on stderr has colours: only on a terminal, and not
/// when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Exit status of a command that prints its own output: 0, or 2 with
/// the error on stderr (1: it ran but found problems).
fn done(r: anyhow::Result<bool>) -> ExitCode {
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weave: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn sync(args: SyncArgs) -> ExitCode {
    weave_fs::meta::set_scope(args.keep.scope());
    let passphrase =
        match crate::passphrase::needed(&args.replicas, args.passphrase_file.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("weave: {e:#}");
                return ExitCode::from(2);
            }
        };
    let net = weave_net::NetOptions {
        rsh: args.rsh,
        remote_weave: args.remote_weave,
        bwlimit: args.bwlimit,
        serve_args: args.keep.serve_args(),
        passphrase,
    };
    let opts = SyncOptions {
        policy: args.conflict,
        ignore: args.ignore,
        dry_run: args.dry_run,
        backup: args.backup,
        merge: None,
        full_plan: false,
        slice: args.slice,
    };
    let show_progress =
        !args.json && !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let progress = output::Bar::new(show_progress);
    let started = std::time::Instant::now();
    let result = kinds()
        .get(&args.kind)
        .and_then(|kind| weave_net::sync_kind(&args.replicas, &opts, &net, &*kind, &progress));
    progress.finish();
    match result {
        Ok(report) => {
            output::print_report(&report, args.json, args.quiet, started.elapsed());
            if report.errors.is_empty() && report.conflicts.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("weave: {e}");
            ExitCode::from(2)
        }
    }
}

/// Every kind of replica this weave syncs.
fn kinds() -> weave_engine::Kinds {
    weave_engine::Kinds::new(std::sync::Arc::new(weave_fs::Files)).with(std::sync::Arc::new(
        weave_object::ObjectKind(weave_kv::Kv::default()),
    ))
}

fn serve() -> ExitCode {
    let conn = match weave_net::Conn::over_stdio("the coordinator") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weave serve: cannot use standard input and output ({e})");
            return ExitCode::from(2);
        }
    };
    match weave_net::server::serve_kinds(conn, &kinds()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weave serve: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_has_colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500"), Ok(500 * 1024));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("1.5KiB/s"), Ok(1536));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }
}
