//! Conflict policies: what to do when replicas changed the same path
//! concurrently. One type for the command line, the daemon's config and
//! the planner, parsed in one place.

use crate::id::ReplicaId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// What to do when replicas changed the same path concurrently. `R` names
/// the preferred replica of [`ConflictPolicy::Prefer`]: as the user gave
/// it ([`PolicySpec`], a path or address), or resolved to its id for the
/// planner (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy<R = ReplicaId> {
    /// The version with the newer mtime keeps the name; the other becomes a
    /// conflict copy next to it. The default.
    #[default]
    KeepBoth,
    /// The version with the newer mtime wins; the other is dropped.
    Newest,
    /// The version held by this replica wins; the other is dropped. When
    /// that replica holds none of the concurrent versions, falls back to
    /// keep-both.
    Prefer(R),
}

/// A policy as the user writes it: `keep-both`, `newest` or
/// `prefer=REPLICA` (the replica as given on the command line).
pub type PolicySpec = ConflictPolicy<String>;

/// A policy that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown conflict policy {given:?}: use keep-both, newest, or prefer=<path of one replica>"
)]
pub struct PolicyError {
    pub given: String,
}

impl<R> ConflictPolicy<R> {
    /// The same policy with the preferred replica resolved to `preferred`
    /// (keep-both when a prefer= policy has none).
    pub fn resolve<S>(&self, preferred: Option<S>) -> ConflictPolicy<S> {
        match (self, preferred) {
            (ConflictPolicy::KeepBoth, _) => ConflictPolicy::KeepBoth,
            (ConflictPolicy::Newest, _) => ConflictPolicy::Newest,
            (ConflictPolicy::Prefer(_), Some(s)) => ConflictPolicy::Prefer(s),
            (ConflictPolicy::Prefer(_), None) => ConflictPolicy::KeepBoth,
        }
    }

    /// The replica a prefer= policy names.
    pub fn preferred(&self) -> Option<&R> {
        match self {
            ConflictPolicy::Prefer(r) => Some(r),
            _ => None,
        }
    }
}

impl FromStr for PolicySpec {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<PolicySpec, PolicyError> {
        match s {
            "keep-both" => Ok(ConflictPolicy::KeepBoth),
            "newest" => Ok(ConflictPolicy::Newest),
            _ => match s.strip_prefix("prefer=") {
                Some(p) if !p.is_empty() => Ok(ConflictPolicy::Prefer(p.to_string())),
                _ => Err(PolicyError {
                    given: s.to_string(),
                }),
            },
        }
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictPolicy::KeepBoth => f.write_str("keep-both"),
            ConflictPolicy::Newest => f.write_str("newest"),
            ConflictPolicy::Prefer(r) => write!(f, "prefer={r}"),
        }
    }
}

/// Written as it is typed: `keep-both`, `newest`, `prefer=REPLICA`.
impl Serialize for PolicySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PolicySpec, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_back() {
        for s in ["keep-both", "newest", "prefer=/a", "prefer=host:docs"] {
            let p: PolicySpec = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!("prefer=/a".parse(), Ok(PolicySpec::Prefer("/a".into())));
        for bad in ["", "bogus", "prefer=", "Newest"] {
            let e = bad.parse::<PolicySpec>().unwrap_err();
            assert!(e.to_string().contains("unknown conflict policy"), "{e}");
        }
    }

    #[test]
    fn resolving_keeps_the_policy_and_names_the_replica() {
        let id = ReplicaId(7);
        assert_eq!(PolicySpec::Newest.resolve(Some(id)), ConflictPolicy::Newest);
        assert_eq!(
            PolicySpec::Prefer("a".into()).resolve(Some(id)),
            ConflictPolicy::Prefer(id)
        );
        assert_eq!(
            PolicySpec::Prefer("a".into()).resolve::<ReplicaId>(None),
            ConflictPolicy::KeepBoth
        );
    }
}
