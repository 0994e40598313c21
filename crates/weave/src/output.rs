//! What weave prints: a progress bar on a terminal, a summary for people,
//! JSON for scripts, and every conflict and error on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;
use weave_core::ignore::IGNORE_FILE;
use weave_engine::{Progress, Report};

pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn new(enabled: bool) -> Bar {
        if !enabled {
            return Bar { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar { bar: Some(bar) }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn grow_total(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            if b.length().unwrap_or(0) == 0 {
                return self.set_total(bytes);
            }
            b.set_length(bytes);
        }
    }
    fn phase(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }
    fn set_total(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            if bytes > 0 {
                // Rate and ETA count from the start of the transfer.
                b.reset();
                b.set_length(bytes);
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
            }
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }
    fn files(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("syncing {done}/{total} changes"));
        }
    }
}

/// Prints `{"versions": [...]}`, what `weave history --json` gives for a
/// replica and for a bucket alike.
pub fn print_versions_json(list: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let all = serde_json::json!({ "versions": list });
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn print_report(r: &Report, json: bool, quiet: bool, elapsed: Duration) {
    for c in &r.conflicts {
        let mut line = format!("weave: conflict: {}: {}", c.path, c.description);
        if !c.copies.is_empty() {
            line.push_str(&format!(
                "; the other version is now {}",
                c.copies.join(", ")
            ));
        }
        eprintln!("{line}");
    }
    for m in &r.merged {
        eprintln!(
            "weave: merged: {}: {} concurrent versions merged into one",
            m.path, m.versions
        );
    }
    for e in &r.errors {
        eprintln!("weave: error: {} ({}): {}", e.path, e.replica, e.message);
    }
    if !quiet {
        for n in &r.notices {
            eprintln!("weave: note: {} ({}): {}", n.path, n.replica, n.message);
        }
        if r.ignore_file_changed && !r.dry_run {
            eprintln!("weave: note: this sync changed {IGNORE_FILE} and ran under the patterns from before; run it again to apply the new ones");
        }
    }
    if json {
        match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("weave: cannot print JSON: {e}"),
        }
        return;
    }
    if quiet {
        return;
    }
    if r.dry_run {
        if r.planned.is_empty() {
            println!("dry run: nothing to do");
        }
        for p in &r.planned {
            println!("would {:<8} {}: {}", p.action, p.replica, p.path);
        }
        return;
    }
    let n = r.replicas.len();
    let changed = r.created + r.updated + r.deleted > 0;
    if !changed && r.errors.is_empty() {
        println!(
            "{n} replicas already in sync ({:.2}s)",
            elapsed.as_secs_f64()
        );
    } else if !changed {
        println!("no change could be applied ({:.2}s)", elapsed.as_secs_f64());
    } else {
        println!(
            "synced {n} replicas: {} created, {} updated, {} deleted; {} copied, {} reused locally ({:.2}s)",
            r.created,
            r.updated,
            r.deleted,
            human_bytes(r.bytes_copied),
            human_bytes(r.bytes_local),
            elapsed.as_secs_f64()
        );
    }
    if r.bytes_on_wire > 0 {
        println!("{} over the network", human_bytes(r.bytes_on_wire));
    }
    if !r.conflicts.is_empty() || !r.errors.is_empty() {
        println!(
            "{} conflicts, {} errors (listed on stderr)",
            r.conflicts.len(),
            r.errors.len()
        );
    }
}
