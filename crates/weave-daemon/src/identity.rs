//! This device's identity: a key pair and a self-signed certificate in
//! the config directory. The certificate only carries the public key to
//! the peer; trust comes from the device id each side pinned.

use crate::id::DeviceId;
use crate::DaemonError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";

pub struct Identity {
    pub id: DeviceId,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            id: self.id,
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |e| DaemonError::Io { path, what, why: e }
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of one.
pub(crate) fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), DaemonError> {
    use std::io::Write;
    // A name of its own: two writers at once (the API and the CLI) never
    // write one temporary file together.
    let tmp = path.with_extension(format!(
        "tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp).map_err(io(&tmp, "write"))?;
    f.write_all(data).map_err(io(&tmp, "write"))?;
    f.sync_all().map_err(io(&tmp, "write"))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path, "write")(e)
    })?;
    Ok(())
}

/// Makes a new identity in `dir` (created if missing). Refuses to replace
/// one: a new key is a new device, which every peer would have to learn.
pub fn create(dir: &Path) -> Result<Identity, DaemonError> {
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        return Err(DaemonError::AlreadyInitialised(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir, "create"))?;
    let key = rcgen::KeyPair::generate().map_err(|e| DaemonError::Crypto(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec!["weave".to_string()])
        .map_err(|e| DaemonError::Crypto(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| DaemonError::Crypto(e.to_string()))?;
    write_atomic(&dir.join(CERT_FILE), cert.pem().as_bytes(), false)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    load(dir)
}

/// Reads the identity in `dir`.
pub fn load(dir: &Path) -> Result<Identity, DaemonError> {
    let key_path: PathBuf = dir.join(KEY_FILE);
    let cert_path: PathBuf = dir.join(CERT_FILE);
    if !key_path.exists() {
        return Err(DaemonError::NotInitialised(dir.to_path_buf()));
    }
    let bad = |p: &Path, e: String| DaemonError::BadIdentity(p.to_path_buf(), e);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| bad(&key_path, e.to_string()))?;
    let cert =
        CertificateDer::from_pem_file(&cert_path).map_err(|e| bad(&cert_path, e.to_string()))?;
    let id = DeviceId::from_cert(&cert).map_err(|e| bad(&cert_path, e.to_string()))?;
    Ok(Identity { id, cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_reads_back_the_same() {
        let d = tempfile::tempdir().unwrap();
        let a = create(d.path()).unwrap();
        let b = load(d.path()).unwrap();
        assert_eq!(a.id, b.id);
        assert!(matches!(
            create(d.path()),
            Err(DaemonError::AlreadyInitialised(_))
        ));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(create(other.path()).unwrap().id, a.id);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others");
    }
}
