//! A tree serving its chunks to other replicas: from the bytes of small
//! files hashed ahead, or read from its files, trusted only while a
//! file's stat is the one recorded when it was hashed.

use super::LocalReplica;
use weave_core::Hash;
use weave_engine::{SyncError, Wants};

impl LocalReplica {
    /// Serves chunks of contents it holds: `sink` gets (hash, Some(data))
    /// or (hash, None) when it does not have that chunk any more.
    pub(super) fn serve(
        &mut self,
        wants: &Wants,
        sink: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        self.view()?;
        if self.locations.is_none() {
            self.locations = Some(self.own_locations());
        }
        // A content outside what this sync gave of the index (a peer that
        // planned from an index it remembered, say): the whole index is
        // read, once.
        let known = self.locations.as_ref().expect("built above");
        let unknown = wants
            .iter()
            .any(|(c, _)| !self.kept.contains_key(c) && !known.contains_key(c));
        if unknown && self.entries.is_none() {
            self.load()?;
            self.locations = Some(self.own_locations());
        }
        let locations = self.locations.take().expect("built above");
        for (content, hashes) in wants {
            // A small file hashed ahead: its bytes are at hand (they are
            // the bytes its chunks were hashed from).
            if let Some(list) = self
                .kept
                .contains_key(content)
                .then(|| self.list(content))
                .flatten()
            {
                let bytes = &self.kept[content];
                let read: Vec<(Hash, Option<Vec<u8>>)> = hashes
                    .iter()
                    .map(|h| {
                        let data = list
                            .with_offsets()
                            .find(|(_, c)| c.hash == *h)
                            .and_then(|(o, c)| bytes.get(o as usize..o as usize + c.len as usize));
                        (*h, data.map(<[u8]>::to_vec))
                    })
                    .collect();
                for (h, data) in read {
                    if let Err(e) = sink(h, data) {
                        self.locations = Some(locations);
                        return Err(e);
                    }
                }
                continue;
            }
            // The file, and the stat recorded when it was hashed (if that
            // was not racy).
            let src = locations.get(content).and_then(|ls| {
                ls.iter().find_map(|l| {
                    std::fs::File::open(&l.path)
                        .ok()
                        .map(|f| (f, l.stat.filter(|s| !s.racy)))
                })
            });
            let offsets = match self.serving.take() {
                Some((c, offsets)) if c == *content => offsets,
                _ => self
                    .list(content)
                    .map(|l| {
                        l.with_offsets()
                            .map(|(o, c)| (c.hash, (o, c.len)))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            // Chunks read from a file whose stat is the recorded one before
            // and after the reads are the hashed bytes; any other chunk read
            // is verified before it is sent, so a file changed since the
            // scan cannot leak other bytes (a chunk that fails is reported
            // missing rather than sent wrong).
            let unchanged = || {
                src.as_ref().is_some_and(|(f, st)| {
                    st.is_some_and(|st| f.metadata().is_ok_and(|m| crate::same_stat(&m, &st)))
                })
            };
            for group in hashes.chunks(64) {
                let before = unchanged();
                let read: Vec<(Hash, Option<Vec<u8>>)> = group
                    .iter()
                    .map(|h| {
                        let data = match (&src, offsets.get(h)) {
                            (Some((f, _)), Some(&(off, len))) => {
                                crate::read_at(f, off, len as usize).ok()
                            }
                            _ => None,
                        };
                        (*h, data)
                    })
                    .collect();
                let trusted = before && unchanged();
                for (h, data) in read {
                    let data = data.filter(|d| trusted || weave_chunk::verify(d, &h));
                    if let Err(e) = sink(h, data) {
                        self.locations = Some(locations);
                        return Err(e);
                    }
                }
            }
            self.serving = Some((*content, offsets));
        }
        self.locations = Some(locations);
        Ok(())
    }
}
