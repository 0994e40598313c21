//! `weave history`, `restore`, `gc` and `retention`: output for people and
//! for scripts over `weave_store::history`.

use crate::output::human_bytes as size;
use anyhow::Result;
use serde_json::json;
use std::path::Path;
use weave_store::history::{self, format_time, Pick};
use weave_store::{retention, Policy, Version};

fn version_json(v: &Version) -> serde_json::Value {
    json!({
        "version": v.id,
        "path": v.path,
        "saved_at": format_time(v.saved_at_ns),
        "saved_at_ns": v.saved_at_ns,
        "size": v.size,
        "mode": format!("{:o}", v.mode),
        "mtime_ns": v.mtime_ns,
        "made_by": v.origin.encode(),
        "content": v.content.to_hex(),
        "why": v.reason.as_str(),
    })
}

pub fn history(path: &Path, deleted: bool, json: bool) -> Result<bool> {
    let at = history::locate(path)?;
    let vs = if deleted {
        history::deleted(&at)?
    } else {
        history::history(&at)?
    };
    if json {
        crate::output::print_versions_json(vs.iter().map(version_json).collect())?;
        return Ok(true);
    }
    if vs.is_empty() {
        if deleted {
            println!("no deleted files with versions under {}", path.display());
        } else {
            println!(
                "{}: no old versions (a sync keeps a file's old content when it replaces or deletes it)",
                path.display()
            );
        }
        return Ok(true);
    }
    if deleted {
        println!("{:<8} {:<24} {:>10}  PATH", "VERSION", "DELETED", "SIZE");
        for v in &vs {
            println!(
                "{:<8} {:<24} {:>10}  {}",
                v.id,
                format_time(v.saved_at_ns),
                size(v.size),
                v.path
            );
        }
        println!("\nrestore one with: weave restore PATH (or --version ID)");
    } else {
        println!(
            "{:<8} {:<24} {:>10}  {:<13}  {:<12}  WHY",
            "VERSION", "SAVED", "SIZE", "MADE BY", "CONTENT"
        );
        for v in &vs {
            println!(
                "{:<8} {:<24} {:>10}  {:<13}  {:<12}  {}",
                v.id,
                format_time(v.saved_at_ns),
                size(v.size),
                v.origin.encode(),
                v.content.short_hex(),
                v.reason.as_str()
            );
        }
    }
    Ok(true)
}

pub fn restore(
    path: &Path,
    at: Option<&str>,
    version: Option<u64>,
    to: Option<&Path>,
    json: bool,
) -> Result<bool> {
    let pick = match (at, version) {
        (_, Some(id)) => Pick::Version(id),
        (Some(t), None) => {
            let now = weave_store::now_ns();
            Pick::At(history::parse_time(t, now).ok_or_else(|| {
                anyhow::anyhow!(
                "--at {t}: not a time; use \"2026-11-21 09:30\" (UTC) or an age such as 90m, 2h, 3d"
            )
            })?)
        }
        (None, None) => Pick::Latest,
    };
    let at = history::locate(path)?;
    // The restored file gets the owner and extended attributes its
    // version kept, as far as this process keeps them. A version saved
    // without them (before weave kept them, or the file a restore
    // replaced) takes those of the file it replaces, if any: a restore
    // must not strip attributes from every replica.
    let names = weave_fs::meta::Names::default();
    let finish = |f: &std::fs::File, v: &weave_store::Version, dest: &Path| {
        let scope = weave_fs::meta::scope();
        let current = || {
            let m = std::fs::symlink_metadata(dest).ok()?;
            m.is_file()
                .then(|| weave_fs::meta::read(dest, &m, scope, &names).0)
        };
        let meta = v.meta.as_deref().cloned().or_else(current);
        weave_fs::meta::apply(
            weave_fs::meta::Target::File(f),
            meta.as_ref(),
            scope,
            &names,
        )
    };
    let done = history::restore(&at, pick, to, &finish)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "restored": done }))?
        );
        return Ok(true);
    }
    if done.is_empty() {
        println!(
            "{}: already holds that version; nothing to do",
            path.display()
        );
    }
    for r in &done {
        println!(
            "restored {} (version {}, {}) to {}",
            r.path,
            r.version,
            size(r.size),
            r.to.display()
        );
    }
    if to.is_none() && !done.is_empty() {
        println!("the next `weave sync` of this replica propagates it");
    }
    Ok(true)
}

pub fn gc(replica: &Path, check: bool, json: bool) -> Result<bool> {
    let at = history::locate(replica)?;
    if check {
        let damage = history::check(&at.root)?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "damaged": damage }))?
            );
        } else if damage.is_empty() {
            println!(
                "version store of {}: every chunk reads back and verifies",
                at.root.display()
            );
        } else {
            for d in &damage {
                println!(
                    "chunk {}: {}; versions affected: {:?}",
                    &d.chunk[..12],
                    d.problem,
                    d.versions
                );
            }
            println!(
                "these versions cannot be restored; the others are intact (nothing was changed)"
            );
        }
        return Ok(damage.is_empty());
    }
    let r = history::gc(&at.root)?;
    let total = history::store_size(&at.root)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "pruned": r, "store_bytes": total }))?
        );
        return Ok(true);
    }
    match r {
        None => println!("{}: no version store yet", at.root.display()),
        Some(p) => println!(
            "dropped {} versions, kept {}; freed {}; the store now takes {}",
            p.versions_dropped,
            p.versions_kept,
            size(p.bytes_freed),
            size(total)
        ),
    }
    Ok(true)
}

pub struct PolicyChange {
    pub keep_last: Option<u32>,
    pub staggered: Option<bool>,
    pub max_age: Option<i64>,
    pub max_size: Option<u64>,
    pub keep_all: bool,
}

pub fn retention(replica: &Path, c: PolicyChange, json: bool) -> Result<bool> {
    let at = history::locate(replica)?;
    let changes = c.keep_all
        || c.keep_last.is_some()
        || c.staggered.is_some()
        || c.max_age.is_some()
        || c.max_size.is_some();
    let mut p = history::policy(&at.root, None)?;
    if changes {
        if c.keep_all {
            p = Policy::keep_all();
        }
        if let Some(n) = c.keep_last {
            p.keep_last = (n > 0).then_some(n);
        }
        if let Some(s) = c.staggered {
            p.staggered = s;
        }
        if let Some(a) = c.max_age {
            p.max_age_ns = (a > 0).then_some(a);
        }
        if let Some(s) = c.max_size {
            p.max_size = (s > 0).then_some(s);
        }
        p = history::policy(&at.root, Some(&p))?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "keep_last": p.keep_last,
                "staggered": p.staggered,
                "max_age": p.max_age_ns.map(retention::format_duration),
                "max_size": p.max_size,
            }))?
        );
    } else {
        println!("{} keeps {}", at.root.display(), p.describe());
        if changes {
            println!(
                "applied at the next sync that keeps a version, or now with: weave gc {}",
                replica.display()
            );
        }
    }
    Ok(true)
}
