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
}

#[derive(clap::Args)]
struct SyncArgs {
    /// The replicas: local directories.
    #[arg(value_name = "REPLICA", required = true, num_args = 2..)]
    replicas: Vec<String>,

    /// What to do when the same file changed on several replicas:
    /// keep-both (default; the older version becomes a conflict copy),
    /// newest (the newer mtime wins), or prefer=PATH (the version held by
    /// the replica at PATH wins).
    #[arg(long, value_name = "POLICY", default_value = "keep-both", value_parser = parse_policy)]
    conflict: PolicySpec,

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
}

fn parse_policy(s: &str) -> Result<PolicySpec, String> {
    match s {
        "keep-both" => Ok(PolicySpec::KeepBoth),
        "newest" => Ok(PolicySpec::Newest),
        _ => match s.strip_prefix("prefer=") {
            Some(p) if !p.is_empty() => Ok(PolicySpec::Prefer(PathBuf::from(p))),
            _ => Err(format!(
                "unknown conflict policy {s:?}: use keep-both, newest, or prefer=<path of one replica>"
            )),
        },
    }
}

/// A replica argument that names a remote (`host:path`, `ssh://…`).
fn looks_remote(s: &str) -> bool {
    if s.starts_with("ssh://") {
        return true;
    }
    match s.find(':') {
        Some(i) => !s[..i].contains('/') && i > 0,
        None => false,
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics on stderr, off unless RUST_LOG asks for them.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Sync(args) => sync(args),
    }
}

fn sync(args: SyncArgs) -> ExitCode {
    if let Some(r) = args
        .replicas
        .iter()
        .find(|r| looks_remote(r) && !std::path::Path::new(r).exists())
    {
        eprintln!(
            "weave: {r}: remote replicas (host:path) are not supported by this version yet; give a local directory (write ./{r} if a local name contains ':')"
        );
        return ExitCode::from(2);
    }
    let paths: Vec<PathBuf> = args.replicas.iter().map(PathBuf::from).collect();
    let opts = SyncOptions {
        policy: args.conflict,
        ignore: args.ignore,
        dry_run: args.dry_run,
    };
    let show_progress =
        !args.json && !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let progress = output::Bar::new(show_progress);
    let started = std::time::Instant::now();
    let result = weave_engine::sync(&paths, &opts, &progress);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_forms() {
        assert!(looks_remote("host:path"));
        assert!(looks_remote("user@host:/x"));
        assert!(looks_remote("ssh://h/p"));
        assert!(!looks_remote("./a:b"));
        assert!(!looks_remote("/tmp/a"));
        assert!(!looks_remote("dir/with:colon"));
    }

    #[test]
    fn policies() {
        assert_eq!(parse_policy("newest"), Ok(PolicySpec::Newest));
        assert_eq!(
            parse_policy("prefer=/a"),
            Ok(PolicySpec::Prefer("/a".into()))
        );
        assert!(parse_policy("prefer=").is_err());
        assert!(parse_policy("random").is_err());
    }
}
