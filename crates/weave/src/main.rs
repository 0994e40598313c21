//! The `weave` command: a thin layer over the engine crates.

// The doc comments of the CLI's types are clap's `--help` text, written for
// a terminal (`[user@]host`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod buckets;
mod cli;
mod kv;
mod live;
mod manuals;
mod output;
mod passphrase;
mod versions;

use std::process::ExitCode;

// jemalloc, with its background purging thread: after a large sync the
// daemon gives the freed memory back to the system within seconds (glibc
// malloc kept several hundred MiB of freed arena memory resident).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    end_quietly_when_output_fails();
    raise_open_file_limit();
    cli::run()
}

/// Output that cannot be written ends weave with a line on standard error
/// (if that can be written) instead of a panic's report: exit status 141,
/// as a program killed by SIGPIPE, when the reader went away (`weave
/// history --json | head -n 1`), 1 for any other failure (a full disk).
/// The standard library's printing macros panic on such errors; what a
/// sync had done is safe at any point (I-4), as when it is killed.
fn end_quietly_when_output_fails() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        for (stream, name) in [("stdout", "output"), ("stderr", "error")] {
            if let Some(why) = msg.strip_prefix(&format!("failed printing to {stream}: ")) {
                if why.contains("os error 32") {
                    std::process::exit(141);
                }
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("weave: cannot write to standard {name}: {why}\n").as_bytes(),
                );
                std::process::exit(1);
            }
        }
        report(info);
    }));
}

/// Lifts the soft limit on open files to the hard one (as many servers and
/// runtimes do): a sync keeps a file open per large file it receives, and
/// a soft limit of 1,024 would fail a large first copy half-way. Left as it
/// is if that cannot be done.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    let target = l.maximum.unwrap_or(1 << 20).min(1 << 20);
    if l.current.is_some_and(|c| c < target) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: l.maximum,
            },
        );
    }
}
