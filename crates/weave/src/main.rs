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
    cli::run()
}
