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
    /// Serve one replica over stdin/stdout (what `weave sync` starts on a
    /// remote host through ssh; not for interactive use).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Speak weave's protocol on stdin and stdout.
    #[arg(long, required = true)]
    stdio: bool,
}

#[derive(clap::Args)]
struct SyncArgs {
    /// The replicas: local directories, [user@]host:path, or
    /// ssh://[user@]host[:port]/path (weave must be installed there too).
    #[arg(value_name = "REPLICA", required = true, num_args = 2..)]
    replicas: Vec<String>,

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
    // Diagnostics on stderr, off unless RUST_LOG asks for them.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Sync(args) => sync(args),
        Command::Serve(_) => serve(),
    }
}

fn sync(args: SyncArgs) -> ExitCode {
    let net = weave_net::NetOptions {
        rsh: args.rsh,
        remote_weave: args.remote_weave,
        bwlimit: args.bwlimit,
    };
    let opts = SyncOptions {
        policy: args.conflict,
        ignore: args.ignore,
        dry_run: args.dry_run,
    };
    let show_progress =
        !args.json && !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let progress = output::Bar::new(show_progress);
    let started = std::time::Instant::now();
    let result = weave_net::sync(&args.replicas, &opts, &net, &progress);
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

fn serve() -> ExitCode {
    let conn = weave_net::Conn::new(std::io::stdin(), std::io::stdout(), "the coordinator", None);
    match weave_net::server::serve(conn) {
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
    fn rates() {
        assert_eq!(parse_rate("500"), Ok(500 * 1024));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("1.5KiB/s"), Ok(1536));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
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
