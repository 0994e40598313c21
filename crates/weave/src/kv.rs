//! `weave kv`: the records of a key/value store, from a shell.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::Path;
use weave_kv::KvStore;

fn open(store: &Path) -> Result<KvStore> {
    Ok(KvStore::open(store)?)
}

pub fn put(store: &Path, key: &str, value: Option<String>) -> Result<bool> {
    let value = match value {
        Some(v) => v.into_bytes(),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("cannot read the value from stdin")?;
            v
        }
    };
    open(store)?.put(key, &value)?;
    Ok(true)
}

pub fn get(store: &Path, key: &str) -> Result<bool> {
    match open(store)?.get(key)? {
        Some(r) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&r.value)?;
            out.flush()?;
            Ok(true)
        }
        None => {
            eprintln!("weave: {}: no record {key:?}", store.display());
            Ok(false)
        }
    }
}

pub fn del(store: &Path, key: &str) -> Result<bool> {
    if open(store)?.delete(key)? {
        Ok(true)
    } else {
        eprintln!("weave: {}: no record {key:?}", store.display());
        Ok(false)
    }
}

#[derive(serde::Serialize)]
struct Shown {
    key: String,
    /// The value, if it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    bytes: usize,
    revision: u64,
    mtime_ns: i64,
    conflict_copy: bool,
}

pub fn list(store: &Path, values: bool, json: bool) -> Result<bool> {
    let records = open(store)?.list()?;
    if json {
        let shown: Vec<Shown> = records
            .into_iter()
            .map(|(key, r)| Shown {
                conflict_copy: weave_core::path::is_conflict_name(&key),
                key,
                bytes: r.value.len(),
                value: String::from_utf8(r.value).ok(),
                revision: r.revision,
                mtime_ns: r.mtime_ns,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(true);
    }
    for (key, r) in records {
        let mark = if weave_core::path::is_conflict_name(&key) {
            "  (conflict copy)"
        } else {
            ""
        };
        if values {
            println!("{key}\t{}{mark}", String::from_utf8_lossy(&r.value));
        } else {
            println!("{key}{mark}");
        }
    }
    Ok(true)
}
