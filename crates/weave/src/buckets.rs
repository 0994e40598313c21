//! `weave history --bucket` and `weave restore --bucket`: the versions
//! kept in a bucket replica (`weave_bucket::history`).

use crate::cli::{BucketArgs, BucketPruneArgs};
use crate::output::human_bytes as size;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use weave_bucket::history::{self, BucketVersion};

fn open(b: &BucketArgs) -> Result<weave_bucket::Pool> {
    let given = b.bucket.as_deref().expect("--bucket given");
    let address = match weave_bucket::BucketAddress::parse(given) {
        Some(a) => a?,
        None => {
            bail!("--bucket {given}: not a bucket address; give s3://BUCKET/PREFIX or file:///DIR")
        }
    };
    let pass = crate::passphrase::needed(&[given.to_string()], b.passphrase_file.as_deref())?
        .ok_or(weave_bucket::BucketError::NoPassphrase {
            bucket: given.to_string(),
        })?;
    Ok(weave_bucket::open_existing(&address, &pass)?)
}

/// A path inside the bucket's tree, as the index has it.
fn inside(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .context("a path inside a bucket is UTF-8")?
        .trim_matches('/')
        .trim_start_matches("./");
    Ok(if s == "." {
        String::new()
    } else {
        s.to_string()
    })
}

fn time(ms: u64) -> String {
    weave_store::history::format_time(ms as i64 * 1_000_000)
}

fn version_json(v: &BucketVersion) -> serde_json::Value {
    json!({
        "version": v.id,
        "path": v.path,
        "recorded_at": time(v.recorded_ms),
        "size": v.size,
        "mode": format!("{:o}", v.mode),
        "mtime_ns": v.mtime_ns,
        "content": v.content.to_hex(),
        "current": v.current,
    })
}

pub fn history(b: &BucketArgs, path: &Path, deleted: bool, json: bool) -> Result<bool> {
    let pool = open(b)?;
    let p = inside(path)?;
    let vs = if deleted {
        history::deleted(&pool, &p)?
    } else {
        history::history(&pool, &p)?
    };
    if json {
        crate::output::print_versions_json(vs.iter().map(version_json).collect())?;
        return Ok(true);
    }
    if vs.is_empty() {
        if deleted {
            println!("no deleted files with versions in the bucket under {p:?}");
        } else {
            println!("{p:?}: no versions of a file in the bucket (paths are relative to the bucket's root; `weave history --bucket … --deleted` lists the deleted files)");
        }
        return Ok(true);
    }
    println!(
        "{:<8} {:<24} {:>10}  {:<12}  PATH",
        "VERSION", "RECORDED", "SIZE", "CONTENT"
    );
    for v in &vs {
        println!(
            "{:<8} {:<24} {:>10}  {:<12}  {}{}",
            v.id,
            time(v.recorded_ms),
            size(v.size),
            v.content.short_hex(),
            v.path,
            if v.current { "  (current)" } else { "" }
        );
    }
    Ok(true)
}

pub fn restore(
    b: &BucketArgs,
    path: &Path,
    at: Option<&str>,
    version: Option<u64>,
    to: Option<&Path>,
    json: bool,
) -> Result<bool> {
    if at.is_some() {
        bail!("restore --bucket does not take --at: give --version N from `weave history --bucket …` (or none, for the current version)");
    }
    let Some(to) = to else {
        bail!("restore --bucket writes a version out: give --to DEST (a new file), then copy it into a replica if you want it synced");
    };
    let pool = open(b)?;
    let p = inside(path)?;
    let (vs, view) = history::history_and_view(&pool, &p)?;
    let v = match version {
        Some(n) => vs.iter().find(|v| v.id == n).with_context(|| {
            format!("{p}: no version {n} in the bucket (`weave history --bucket … {p}` lists them)")
        })?,
        None => vs
            .last()
            .with_context(|| format!("{p}: no versions of a file in the bucket"))?,
    };
    history::restore(&pool, &view, v, to)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&version_json(v))?);
    } else {
        println!("restored {} version {} to {}", v.path, v.id, to.display());
    }
    Ok(true)
}

/// `weave gc --bucket`: sweeps what earlier gcs marked (a grace period
/// ago), then marks the old versions the policy given drops.
pub fn prune(b: &BucketArgs, a: &BucketPruneArgs, json: bool) -> Result<bool> {
    use weave_store::retention::{format_duration, DAY};
    if a.keep_last.is_none() && a.max_age.is_none() && !a.staggered {
        bail!("weave gc --bucket needs a policy: give --keep-last N, --max-age AGE and/or --staggered (a bucket keeps every version until told)");
    }
    let policy = weave_store::Policy {
        keep_last: a.keep_last,
        staggered: a.staggered,
        max_age_ns: a.max_age,
        max_size: None,
    };
    let grace_ns = a.grace.unwrap_or(DAY);
    let mut pool = open(b)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let grace_ms = (grace_ns / 1_000_000) as u64;
    let r = weave_bucket::prune::prune(&mut pool, &policy, grace_ms, now, a.dry_run)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "pruned": r, "dry_run": a.dry_run }))?
        );
        return Ok(true);
    }
    let would = if a.dry_run { "would be " } else { "" };
    println!(
        "policy: {}; {} versions kept, {} dropped",
        policy.describe(),
        r.versions_kept,
        r.versions_dropped
    );
    if r.packs_repacked > 0 {
        println!(
            "{} packs mostly of dropped chunks {}repacked: the {} of them still needed {} to new packs",
            r.packs_repacked,
            would,
            size(r.bytes_repacked),
            if a.dry_run { "would move" } else { "moved" },
        );
    }
    if r.records_marked > 0 || r.packs_marked > 0 {
        println!(
            "{} records compacted into one and {} packs {would}marked (no kept version needs them, or what it needs of them moved); {}",
            r.records_marked,
            r.packs_marked,
            if grace_ns == 0 {
                "the next gc deletes them".to_string()
            } else {
                format!("a gc {} from now deletes them", format_duration(grace_ns))
            },
        );
    }
    if r.records_deleted > 0 || r.packs_deleted > 0 {
        println!(
            "{} records and {} packs ({}) marked by an earlier gc {would}deleted",
            r.records_deleted,
            r.packs_deleted,
            size(r.bytes_deleted)
        );
    }
    if r.marks_waiting > 0 {
        println!("{} marks wait for their grace period", r.marks_waiting);
    }
    println!(
        "the bucket {} {} packs, {}",
        if a.dry_run {
            "would then hold"
        } else {
            "holds"
        },
        r.packs_held,
        size(r.pack_bytes)
    );
    Ok(true)
}
