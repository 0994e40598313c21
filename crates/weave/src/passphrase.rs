//! The passphrase of bucket replicas: from `--passphrase-file`, from
//! `WEAVE_PASSPHRASE`, or asked on the terminal.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The passphrase, when a replica of `replicas` is a bucket (None when
/// none is, or none was given and there is no terminal to ask on: the
/// bucket then says how to give one).
pub fn needed(replicas: &[String], file: Option<&Path>) -> Result<Option<Vec<u8>>> {
    let buckets: Vec<&String> = replicas
        .iter()
        .filter(|r| r.starts_with("s3://") || r.starts_with("file://"))
        .collect();
    if buckets.is_empty() {
        return Ok(None);
    }
    if let Some(f) = file {
        return weave_bucket::passphrase_from_file(f)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--passphrase-file: {e}"));
    }
    if let Some(p) = std::env::var_os("WEAVE_PASSPHRASE").filter(|p| !p.is_empty()) {
        return Ok(Some(p.into_encoded_bytes()));
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let p = rpassword::prompt_password(format!("passphrase for {}: ", buckets[0]))
            .context("cannot read the passphrase from the terminal")?;
        if p.is_empty() {
            bail!("no passphrase given; a bucket replica is always encrypted");
        }
        return Ok(Some(p.into_bytes()));
    }
    Ok(None)
}
