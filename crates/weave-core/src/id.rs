//! Identifiers: replica ids and content hashes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Alphabet for printing replica ids: Crockford's base32 (no I, L, O, U),
/// so ids survive being read aloud or typed by hand.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The identity of one replica (one copy of a folder on one device).
///
/// Random, 64 bits, created once when a replica is first used and kept in
/// its state directory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u64);

impl ReplicaId {
    /// The full printable form: 13 base32 characters.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(13);
        // 64 bits = 12 groups of 5 bits plus 4 bits.
        for i in 0..13 {
            let shift = 64i32 - 5 * (i + 1);
            let v = if shift >= 0 {
                (self.0 >> shift) & 0x1f
            } else {
                (self.0 << (-shift)) & 0x1f
            };
            out.push(ALPHABET[v as usize] as char);
        }
        out
    }

    /// The short form used in conflict-copy names: the first 7 characters
    /// (35 bits), enough to tell the replicas of one folder apart.
    pub fn short(&self) -> String {
        self.encode()[..7].to_string()
    }

    /// Parses the full 13-character form (case-insensitive).
    pub fn parse(s: &str) -> Option<ReplicaId> {
        if s.len() != 13 {
            return None;
        }
        let mut v: u64 = 0;
        for (i, c) in s.bytes().enumerate() {
            let c = c.to_ascii_uppercase();
            let d = ALPHABET.iter().position(|&a| a == c)? as u64;
            if i < 12 {
                v = (v << 5) | d;
            } else {
                if d & 0x1 != 0 {
                    return None;
                }
                v = (v << 4) | (d >> 1);
            }
        }
        Some(ReplicaId(v))
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R({})", self.short())
    }
}

/// A BLAKE3 hash: of a chunk, of a chunk-tree node, or (the root of a
/// file's chunk tree) a file's content id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

/// Hash tables key on the first 8 bytes only: they are already uniformly
/// random, and hashing all 32 (plus a length) cost more than the tables'
/// other work in a large sync. Equality still compares all 32 bytes, and
/// the tables' keyed hasher still mixes a secret seed in, so nobody can
/// aim many keys at one bucket.
impl std::hash::Hash for Hash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl Hash {
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The first 12 hex digits, for people.
    pub fn short_hex(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "H({})", self.short_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_that_share_their_first_bytes_are_still_different_keys() {
        let a = Hash::of(b"a");
        let mut b = a;
        b.0[31] ^= 1;
        let set: std::collections::HashSet<Hash> = [a, b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&a) && set.contains(&b));
        assert!(!set.contains(&Hash::of(b"c")));
    }

    #[test]
    fn replica_id_roundtrip() {
        for v in [0u64, 1, u64::MAX, 0x0123_4567_89ab_cdef, 42 << 40] {
            let id = ReplicaId(v);
            let s = id.encode();
            assert_eq!(s.len(), 13);
            assert_eq!(ReplicaId::parse(&s), Some(id), "{s}");
            assert_eq!(ReplicaId::parse(&s.to_lowercase()), Some(id));
        }
        assert_eq!(ReplicaId::parse("short"), None);
        assert_eq!(ReplicaId::parse("UUUUUUUUUUUUU"), None);
    }

    #[test]
    fn short_ids_differ_for_different_high_bits() {
        assert_ne!(ReplicaId(1 << 63).short(), ReplicaId(1 << 62).short());
    }
}
