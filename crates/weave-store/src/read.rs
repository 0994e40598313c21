//! Reading versions back: one into a file ([`Store::read_into`]), or
//! every stored chunk to find damage ([`Store::check`]).

use crate::catalog::CHUNKS;
use crate::error::OrCatalog;
use crate::pack::{Fault, PackReader};
use crate::unique;
use crate::{Damage, ReadError, Store, StoreError, Version};
use redb::ReadableDatabase;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use weave_core::Hash;

impl Store {
    /// Writes version `v`'s content into `out` (from offset 0, a new
    /// file), every chunk verified; its runs of zeros are left as holes.
    /// The error names the chunk that is missing or damaged.
    pub fn read_into(
        &self,
        v: &Version,
        out: &File,
        progress: &dyn Fn(u64),
    ) -> Result<(), ReadError> {
        let tx = self.db.begin_read().map_err(catalog)?;
        let chunks = tx.open_table(CHUNKS).map_err(catalog)?;
        let mut packs = PackReader::new(self);
        let mut buf = Vec::new();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
        let write = |e| ReadError::Write { error: e };
        for c in &v.chunks.chunks {
            let chunk = c.hash;
            if c.is_zero() {
                w.seek(SeekFrom::Current(c.len as i64)).map_err(write)?;
                progress(c.len as u64);
                continue;
            }
            let loc = chunks
                .get(&c.hash.0)
                .map_err(catalog)?
                .map(|x| x.value())
                .ok_or(ReadError::Missing { chunk })?;
            let (pack, _, len) = loc;
            if len != c.len {
                return Err(ReadError::WrongLength { chunk });
            }
            packs.read(loc, &chunk, &mut buf).map_err(|f| match f {
                Fault::NoPack(error) => ReadError::NoPack { pack, chunk, error },
                Fault::CutShort(error) => ReadError::CutShort { pack, chunk, error },
                Fault::Damaged => ReadError::Damaged { pack, chunk },
            })?;
            w.write_all(&buf)
                .map_err(|error| ReadError::Write { error })?;
            progress(len as u64);
        }
        w.flush().map_err(write)?;
        // A content ending in a hole has nothing written there.
        out.set_len(v.chunks.size()).map_err(write)?;
        Ok(())
    }

    /// Reads every stored chunk back and names the versions that a
    /// missing or damaged chunk affects (nothing is changed).
    pub fn check(&self) -> Result<Vec<Damage>, StoreError> {
        let c = &self.catalog;
        let tx = self.db.begin_read().or_catalog(c)?;
        let chunks = tx.open_table(CHUNKS).or_catalog(c)?;
        // Chunk → its problem (None: reads back fine), and the versions
        // that need a bad one.
        let mut seen: HashMap<Hash, Option<String>> = HashMap::new();
        let mut hit: HashMap<Hash, Vec<u64>> = HashMap::new();
        let mut packs = PackReader::new(self);
        let mut buf = Vec::new();
        for v in self.all()? {
            for h in unique(&v.chunks) {
                if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(h) {
                    let problem = match chunks.get(&h.0).or_catalog(c)?.map(|x| x.value()) {
                        None => Some("missing from the catalog".to_string()),
                        Some(loc) => packs
                            .read(loc, &h, &mut buf)
                            .err()
                            .map(|f| problem(loc.0, f)),
                    };
                    slot.insert(problem);
                }
                if seen[&h].is_some() {
                    hit.entry(h).or_default().push(v.id);
                }
            }
        }
        let mut out: Vec<Damage> = hit
            .into_iter()
            .map(|(h, mut versions)| {
                versions.sort_unstable();
                Damage {
                    chunk: h.to_hex(),
                    problem: seen[&h].clone().unwrap_or_default(),
                    versions,
                }
            })
            .collect();
        out.sort_by(|a, b| a.chunk.cmp(&b.chunk));
        Ok(out)
    }
}

fn catalog(e: impl std::fmt::Display) -> ReadError {
    ReadError::Catalog(e.to_string())
}

/// How `check` words a chunk's fault in pack `pack`.
fn problem(pack: u32, f: Fault) -> String {
    match f {
        Fault::NoPack(_) => format!("pack {pack} is missing"),
        Fault::CutShort(_) => format!("pack {pack} is cut short"),
        Fault::Damaged => format!("damaged in pack {pack}"),
    }
}
