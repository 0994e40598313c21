//! The keys of a bucket and the sealing of everything it holds (I-8).
//!
//! A passphrase gives a key-encryption key through Argon2id, with the
//! parameters and salt stored in the bucket's config; that key unwraps
//! the bucket's master key, a random 32 bytes made with the bucket. The
//! master key gives, through BLAKE3's key derivation, the key that seals
//! records and chunks with XChaCha20-Poly1305 (a random 24-byte nonce per
//! object or chunk, and associated data that binds each to its name, so
//! that one object cannot be passed off as another).

use crate::BucketError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Bytes a sealed object or chunk adds to what it seals: the nonce and
/// the tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// The smallest size anything stored is padded to: nothing smaller than
/// this tells its size.
pub const PAD_MIN: u64 = 4096;

/// Argon2id's parameters, as stored in the bucket's config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Always "argon2id".
    pub alg: String,
    /// Memory, in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Hex.
    pub salt: String,
}

impl KdfParams {
    /// Parameters for a new bucket: 64 MiB, 3 passes, 1 lane (the
    /// second recommendation of RFC 9106), and a random salt.
    pub fn new() -> KdfParams {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        KdfParams {
            alg: "argon2id".into(),
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt: data_encoding::HEXLOWER.encode(&salt),
        }
    }

    /// The key-encryption key of `passphrase`.
    pub fn derive(&self, passphrase: &[u8]) -> Result<[u8; 32], BucketError> {
        let bad = |why: String| BucketError::Format {
            what: "config".into(),
            problem: format!("its key derivation parameters are unusable: {why}"),
        };
        if self.alg != "argon2id" {
            return Err(bad(format!("unknown algorithm {:?}", self.alg)));
        }
        // A hostile config could ask for any amount of memory or time.
        if self.m_kib > 1024 * 1024 || self.t > 10 || self.p > 16 {
            return Err(bad("larger than weave allows".into()));
        }
        let salt = data_encoding::HEXLOWER
            .decode(self.salt.as_bytes())
            .map_err(|e| bad(format!("salt: {e}")))?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| bad(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        a.hash_password_into(passphrase, &salt, &mut out)
            .map_err(|e| bad(e.to_string()))?;
        Ok(out)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::new()
    }
}

/// Seals `plain` with `key`, bound to `aad`: nonce, then ciphertext and
/// tag.
fn seal_with(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; 24];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 seals any length weave gives it");
    let mut out = Vec::with_capacity(24 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// What [`seal_with`] sealed, if `sealed` is whole and was sealed with
/// `key` for `aad`.
fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, ct) = sealed.split_at(24);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// The bucket's master key, sealed with a key-encryption key.
pub fn wrap(kek: &[u8; 32], master: &[u8; 32]) -> Vec<u8> {
    seal_with(kek, b"weave-bucket v1 key", master)
}

/// The master key from [`wrap`], or None for another key-encryption key
/// (a wrong passphrase) or damaged bytes.
pub fn unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Option<[u8; 32]> {
    open_with(kek, b"weave-bucket v1 key", wrapped)?
        .try_into()
        .ok()
}

/// The keys everything in a bucket is sealed with.
#[derive(Clone)]
pub struct Keys {
    data: [u8; 32],
}

impl Keys {
    /// The keys of the bucket whose master key is `master`.
    pub fn from_master(master: &[u8; 32]) -> Keys {
        Keys {
            data: blake3::derive_key("weave-bucket v1 data key", master),
        }
    }

    /// A new random master key.
    pub fn new_master() -> [u8; 32] {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        k
    }

    /// Seals `plain`, bound to `aad` (what it is and its name).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_with(&self.data, aad, plain)
    }

    /// What [`Keys::seal`] sealed for `aad`; None when `sealed` was
    /// changed, cut short, sealed with another key or for another name.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.data, aad, sealed)
    }
}

/// The size Padmé pads a length of `n` to (at least [`PAD_MIN`]): at most
/// about 12% more, and a padded size says only O(log log n) bits of `n`.
pub fn padme(n: u64) -> u64 {
    let n = n.max(PAD_MIN);
    let e = 63 - n.leading_zeros() as u64; // floor(log2 n)
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (n + mask) & !mask
}

/// `data` with its length before it and zeros after, to [`padme`]'s size
/// (the zeros are sealed with it: nobody sees them).
pub fn pad(data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len() as u64;
    let mut out = Vec::with_capacity(padme(len) as usize);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(padme(len) as usize, 0);
    out
}

/// What [`pad`] padded, if the length it says fits.
pub fn unpad(padded: &[u8]) -> Option<&[u8]> {
    let len = u64::from_le_bytes(padded.get(..8)?.try_into().ok()?);
    padded.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)
}

/// `n` random bytes (what fills a pack up to its padded size: the store
/// cannot tell them from sealed chunks).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_name() {
        let k = Keys::from_master(&Keys::new_master());
        let s = k.seal(b"record a", b"hello");
        assert_eq!(k.open(b"record a", &s).as_deref(), Some(&b"hello"[..]));
        assert_eq!(k.open(b"record b", &s), None);
        let other = Keys::from_master(&Keys::new_master());
        assert_eq!(other.open(b"record a", &s), None);
        let mut flipped = s.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(b"record a", &flipped), None);
        assert_eq!(k.open(b"record a", &s[..s.len() - 1]), None);
        assert_eq!(k.open(b"record a", &s[..10]), None);
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_passphrase() {
        let mut p = KdfParams::new();
        p.m_kib = 64; // fast for a test
        p.t = 1;
        let master = Keys::new_master();
        let w = wrap(&p.derive(b"right").unwrap(), &master);
        assert_eq!(unwrap(&p.derive(b"right").unwrap(), &w), Some(master));
        assert_eq!(unwrap(&p.derive(b"wrong").unwrap(), &w), None);
    }

    #[test]
    fn kdf_parameters_a_hostile_config_gives_are_refused() {
        let mut p = KdfParams::new();
        p.m_kib = u32::MAX;
        assert!(p.derive(b"x").is_err());
        let mut p = KdfParams::new();
        p.alg = "md5".into();
        assert!(p.derive(b"x").is_err());
    }

    #[test]
    fn padding_hides_small_sizes_and_costs_little() {
        assert_eq!(padme(1), PAD_MIN);
        assert_eq!(padme(4000), PAD_MIN);
        for n in [
            4097u64,
            10_000,
            65_537,
            1 << 20,
            64 << 20,
            (64 << 20) + 1,
            1 << 30,
        ] {
            let p = padme(n);
            assert!(p >= n && (p - n) as f64 <= n as f64 * 0.12, "{n} -> {p}");
        }
        for data in [&b""[..], b"x", &[7u8; 5000][..]] {
            let p = pad(data);
            assert_eq!(p.len() as u64, padme(8 + data.len() as u64));
            assert_eq!(unpad(&p), Some(data));
        }
        assert_eq!(unpad(&[0xff; 16]), None);
    }
}
