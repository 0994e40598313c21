//! What a replica records of an object it saw in its store.

use weave_core::{LocalEntry, Stat};

/// Permission bits recorded for every object (objects have none; a fixed
/// value keeps the planner from seeing metadata changes).
pub(crate) const MODE: u32 = 0o644;

/// What this replica saw of an object in its store when it recorded it:
/// the store's revision of the object, its size and its modification time.
///
/// The index keeps it in the entry's [`Stat`] (the record of what a file
/// replica saw on disk), so that the index has one format for every kind
/// of replica. This type is the one place that maps between the two:
///
/// | `Observed` | `Stat`                                        |
/// |------------|-----------------------------------------------|
/// | `revision` | `ino`                                         |
/// | `size`     | `size`                                        |
/// | `mtime_ns` | `mtime_ns`                                    |
/// | (none)     | `ctime_ns` 0, `mode` [`MODE`], `racy` false   |
///
/// The mapping is part of the index's format for object replicas: an
/// index written by an earlier version must keep reading the same way.
/// Nothing else reads a stat's `ino` as a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The store's revision of the object ([`crate::Listed::revision`]).
    pub revision: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl Observed {
    /// The stat the index records.
    pub fn stat(self) -> Stat {
        Stat {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: 0,
            ino: self.revision,
            mode: MODE,
            racy: false,
        }
    }

    /// What a recorded stat says was observed.
    pub fn of_stat(stat: &Stat) -> Observed {
        Observed {
            revision: stat.ino,
            size: stat.size,
            mtime_ns: stat.mtime_ns,
        }
    }

    /// The store's revision of the object `le` records, as this replica
    /// last saw it: None for a tombstone, or an entry with no stat (not
    /// yet in the store).
    pub fn revision(le: &LocalEntry) -> Option<u64> {
        let stat = le.stat.filter(|_| le.entry.is_live())?;
        Some(Observed::of_stat(&stat).revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::{Entry, Hash, Object, ReplicaId, VersionVector};

    /// The stat the versions before `Observed` wrote for an object
    /// (`stamp(revision, size, mtime_ns)`), spelled out field by field:
    /// the index's bytes depend on nothing else.
    fn stamp_before(revision: u64, size: u64, mtime_ns: i64) -> Stat {
        Stat {
            size,
            mtime_ns,
            ctime_ns: 0,
            ino: revision,
            mode: 0o644,
            racy: false,
        }
    }

    fn entry(object: Object, stat: Option<Stat>) -> LocalEntry {
        LocalEntry {
            entry: Entry {
                path: "alice".into(),
                object,
                mode: MODE,
                mtime_ns: 5,
                vv: VersionVector::default(),
                origin: ReplicaId(1),
                meta: None,
            },
            seq: 1,
            stat,
        }
    }

    #[test]
    fn the_recorded_stat_is_the_one_earlier_versions_wrote() {
        for (revision, size, mtime_ns) in [
            (0, 0, 0),
            (7, 12, 1_700_000_000_000_000_000),
            (u64::MAX, 3, -1),
        ] {
            let o = Observed {
                revision,
                size,
                mtime_ns,
            };
            assert_eq!(o.stat(), stamp_before(revision, size, mtime_ns));
            assert_eq!(Observed::of_stat(&o.stat()), o);
        }
    }

    #[test]
    fn a_revision_is_read_from_a_live_entry_with_a_stat_only() {
        let file = Object::File {
            size: 12,
            content: Hash([1; 32]),
        };
        let old = stamp_before(41, 12, 5);
        assert_eq!(
            Observed::revision(&entry(file.clone(), Some(old))),
            Some(41)
        );
        assert_eq!(Observed::revision(&entry(file, None)), None);
        assert_eq!(Observed::revision(&entry(Object::Deleted, Some(old))), None);
    }
}
