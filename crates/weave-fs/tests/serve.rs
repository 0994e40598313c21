//! A replica serves the chunks of its files: unchanged files as they are,
//! and nothing but the hashed bytes from a file changed since its scan.

use std::fs;
use weave_core::Object;
use weave_engine::{IgnoreSpec, Replica};
use weave_fs::LocalReplica;

fn noise(n: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

/// (chunk hash, data or None) for every chunk of `path`'s recorded content.
fn serve(rep: &mut LocalReplica, path: &str) -> Vec<(weave_core::Hash, Option<Vec<u8>>)> {
    let entries = rep.entries().unwrap();
    let Object::File { content, .. } = entries[path].entry.object else {
        panic!("{path} is not a file");
    };
    let list = rep.chunk_list(&content).expect("a chunk list");
    let hashes: Vec<_> = list.chunks.iter().map(|c| c.hash).collect();
    let mut got = Vec::new();
    rep.serve_chunks(&[(content, hashes)], &mut |h, d| {
        got.push((h, d));
        Ok(())
    })
    .unwrap();
    got
}

fn set_mtime(p: &std::path::Path, t: std::time::SystemTime) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
}

#[test]
fn chunks_are_served_only_as_they_were_hashed() {
    let t = tempfile::tempdir().unwrap();
    let data = noise(300_000, 1);
    fs::write(t.path().join("f"), &data).unwrap();
    // Older than the racy window, so its stat can vouch for it.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    set_mtime(&t.path().join("f"), old);
    let mut rep = LocalReplica::open(t.path(), "A", false).unwrap();
    rep.scan(&IgnoreSpec::default(), false).unwrap();

    // Unchanged: every chunk, exactly the file's bytes.
    let got = serve(&mut rep, "f");
    assert!(got.len() > 4);
    let served: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone().unwrap()).collect();
    assert_eq!(served, data);

    // Changed in place since the scan (same size, same mtime): the chunks
    // whose bytes changed are reported missing, the others still served.
    let mut changed = data.clone();
    changed[150_000] ^= 1;
    fs::write(t.path().join("f"), &changed).unwrap();
    set_mtime(&t.path().join("f"), old);
    let got = serve(&mut rep, "f");
    let missing = got.iter().filter(|(_, d)| d.is_none()).count();
    assert_eq!(missing, 1, "only the chunk that changed is withheld");
    for (h, d) in &got {
        if let Some(d) = d {
            assert!(
                weave_chunk::verify(d, h),
                "a served chunk does not match its hash"
            );
        }
    }
}
