//! `weave completions SHELL` and `weave man DIR`: shell completions and
//! man pages, made from the same clap definitions as the CLI itself.

use anyhow::{Context, Result};
use std::path::Path;

/// Prints the completion script of `shell` for the command `cmd`.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) -> Result<bool> {
    clap_complete::generate(shell, &mut cmd, "weave", &mut std::io::stdout());
    Ok(true)
}

/// Writes `weave.1` and a page for each subcommand (`weave-sync.1`, and
/// `weave-folder-add.1` for those under a group) into `dir` (made if
/// need be); returns how many.
pub fn man(dir: &Path, cmd: clap::Command) -> Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let n = write_pages(dir, &cmd, "weave")?;
    eprintln!(
        "weave: {n} man pages written to {} (read one with `man {}/weave.1`)",
        dir.display(),
        dir.display()
    );
    Ok(true)
}

fn write_pages(dir: &Path, cmd: &clap::Command, name: &str) -> Result<usize> {
    let page = cmd.clone().name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let file = dir.join(format!("{name}.1"));
    std::fs::write(&file, out).with_context(|| format!("cannot write {}", file.display()))?;
    let mut n = 1;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        n += write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(n)
}
