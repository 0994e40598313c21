//! `weave history --bucket` and `weave restore --bucket`: the versions
//! kept in a bucket replica (`weave_bucket::history`).

use crate::cli::BucketArgs;
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
        let list: Vec<_> = vs.iter().map(version_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "versions": list }))?
        );
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
