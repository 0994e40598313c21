//! The `weave` command: a thin layer over the engine crates.

mod cli;
mod kv;
mod live;
mod output;
mod versions;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
