//! Device ids: who a daemon is, as a short string a person can read out,
//! type and compare.
//!
//! A device id is the BLAKE3 hash of the device's public key (the DER
//! SubjectPublicKeyInfo of its certificate), cut to 160 bits, written in
//! base32 (RFC 4648: A–Z and 2–7, no 0, 1, 8 or 9) with three check
//! characters, in five groups of seven: `MFRGG2L-TN5XWA3D-…`. Parsing
//! ignores case, dashes and spaces, reads 0 as O, 1 as I and 8 as B (the
//! usual misreadings), and refuses an id whose check characters do not
//! match, so a typo is caught rather than pinned.

use data_encoding::BASE32_NOPAD;
use std::fmt;
use thiserror::Error;

/// Bytes of the key hash an id keeps.
const ID_BYTES: usize = 20;
/// Check characters after the 32 characters of the hash.
const CHECK_CHARS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; ID_BYTES]);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("`{0}` is not a device id: it has {1} characters of base32 (A–Z, 2–7) where a device id has 35; copy it again from `weave id` on that device")]
    Length(String, usize),
    #[error("`{0}` is not a device id: `{1}` is not a base32 character (A–Z, 2–7); copy it again from `weave id` on that device")]
    Char(String, char),
    #[error("device id `{0}` has a typo (its check characters do not match); copy it again from `weave id` on that device")]
    Check(String),
}

impl DeviceId {
    /// The id of the device whose public key is `spki_der`.
    pub fn from_public_key(spki_der: &[u8]) -> DeviceId {
        let h = blake3::hash(spki_der);
        let mut b = [0u8; ID_BYTES];
        b.copy_from_slice(&h.as_bytes()[..ID_BYTES]);
        DeviceId(b)
    }

    /// The id of the device holding `cert` (DER); fails if `cert` is not
    /// a certificate rustls can read.
    pub fn from_cert(
        cert: &rustls::pki_types::CertificateDer<'_>,
    ) -> Result<DeviceId, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
        Ok(DeviceId::from_public_key(
            parsed.subject_public_key_info().as_ref(),
        ))
    }

    pub fn parse(s: &str) -> Result<DeviceId, IdError> {
        let mut clean = String::with_capacity(40);
        for c in s.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' | '\t' => continue,
                '0' => 'O',
                '1' => 'I',
                '8' => 'B',
                c @ ('A'..='Z' | '2'..='7') => c,
                other => return Err(IdError::Char(s.to_string(), other)),
            };
            clean.push(c);
        }
        if clean.len() != 32 + CHECK_CHARS {
            return Err(IdError::Length(s.to_string(), clean.len()));
        }
        let bytes = BASE32_NOPAD
            .decode(&clean.as_bytes()[..32])
            .map_err(|_| IdError::Check(s.to_string()))?;
        let mut b = [0u8; ID_BYTES];
        b.copy_from_slice(&bytes);
        let id = DeviceId(b);
        if check(&clean[..32]) != clean[32..] {
            return Err(IdError::Check(s.to_string()));
        }
        Ok(id)
    }

    /// A short form for logs: the first group.
    /// The id's bytes (as a discovery announcement carries them).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id of `bytes`, if they are an id's length.
    pub fn from_bytes(bytes: &[u8]) -> Option<DeviceId> {
        Some(DeviceId(bytes.try_into().ok()?))
    }

    pub fn short(&self) -> String {
        self.to_string()[..7].to_string()
    }
}

/// Three base32 characters from a hash of the id's characters: any one
/// changed character (and almost any other typo) changes them.
fn check(body: &str) -> String {
    let h = blake3::hash(body.as_bytes());
    BASE32_NOPAD.encode(&h.as_bytes()[..2])[..CHECK_CHARS].to_string()
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = BASE32_NOPAD.encode(&self.0);
        let all = format!("{body}{}", check(&body));
        let groups: Vec<&str> = (0..5).map(|i| &all[i * 7..i * 7 + 7]).collect();
        f.write_str(&groups.join("-"))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl std::str::FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::parse(s)
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_tolerate_case_dashes_and_look_alikes() {
        let id = DeviceId::from_public_key(b"some key");
        let s = id.to_string();
        assert_eq!(s.len(), 35 + 4);
        assert_eq!(DeviceId::parse(&s).unwrap(), id);
        assert_eq!(
            DeviceId::parse(&s.to_lowercase().replace('-', " ")).unwrap(),
            id
        );
        let looks = s.replace('O', "0").replace('I', "1").replace('B', "8");
        assert_eq!(DeviceId::parse(&looks).unwrap(), id);
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let id = DeviceId::from_public_key(b"another key");
        let s: Vec<char> = id.to_string().chars().filter(|c| *c != '-').collect();
        let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".chars().collect();
        let mut caught = 0;
        let mut tried = 0;
        for i in 0..s.len() {
            for &c in &alphabet {
                if c == s[i] {
                    continue;
                }
                let mut t = s.clone();
                t[i] = c;
                let t: String = t.into_iter().collect();
                tried += 1;
                if DeviceId::parse(&t).is_err() {
                    caught += 1;
                }
            }
        }
        // 15 check bits: at most a handful of the 1,085 typos slip through.
        assert!(caught * 100 >= tried * 99, "{caught} of {tried} caught");
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        assert!(matches!(DeviceId::parse("ABC"), Err(IdError::Length(..))));
        assert!(matches!(
            DeviceId::parse("ABC$DEF"),
            Err(IdError::Char(_, '$'))
        ));
        let s = DeviceId::from_public_key(b"k").to_string();
        let mut t: Vec<char> = s.chars().collect();
        let last = t.len() - 1;
        t[last] = if t[last] == 'A' { 'B' } else { 'A' };
        let t: String = t.into_iter().collect();
        assert!(matches!(DeviceId::parse(&t), Err(IdError::Check(_))));
    }
}
