//! The `weave` command: a thin layer over the engine crates.

mod cli;
mod kv;
mod live;
mod output;
mod versions;

use std::process::ExitCode;

// jemalloc, with its background purging thread: after a large sync the
// daemon gives the freed memory back to the system within seconds (glibc
// malloc kept several hundred MiB of freed arena memory resident).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    raise_open_file_limit();
    cli::run()
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
