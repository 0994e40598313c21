//! An address book kept in sync between two processes with weave's object
//! library, over weave's protocol on a pipe (what `weave sync` speaks to
//! `weave serve --stdio` through ssh).
//!
//! Each book is a key/value store (weave-kv): one record per contact, a
//! card of `field: value` lines; an edited field also keeps the value it
//! replaced (`~field: old value`). The books are weave's `kv` kind given a
//! merge (`Kv::with_merge`) that combines two
//! concurrent versions of a card field by field, with that previous value
//! as the common ancestor: a field changed on one side only takes the
//! change; a field both sides changed differently cannot be merged, and
//! weave keeps both versions of the card instead (a conflict copy).
//!
//! ```text
//! address-book demo [DIR]   run the walkthrough (books in DIR, default: a new
//!                           directory under the system's temporary directory)
//! address-book serve        serve books on stdin/stdout (the demo starts this
//!                           as a child process for the second book)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use weave_engine::{Kind, Kinds, Merge, Replica, Report, SyncOptions};
use weave_kv::{Kv, KvStore};
use weave_net::{Conn, RemoteReplica};
use weave_object::ObjectKind;

/// A card: field → value.
type Card = BTreeMap<String, String>;

fn parse(bytes: &[u8]) -> Option<Card> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (f, v) = l.split_once(':')?;
            Some((f.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn render(card: &Card) -> Vec<u8> {
    card.iter()
        .map(|(f, v)| format!("{f}: {v}\n"))
        .collect::<String>()
        .into_bytes()
}

/// The key of the value a field replaced.
fn was(field: &str) -> String {
    format!("~{field}")
}

/// Field by field. Where the versions differ, the one whose previous
/// value is the other's current value made the change and wins; if
/// neither did, both changed the field and the card cannot be merged.
struct FieldMerge;

impl Merge for FieldMerge {
    fn merge(&self, _name: &str, a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
        let (a, b) = (parse(a)?, parse(b)?);
        let fields: std::collections::BTreeSet<&String> = a
            .keys()
            .chain(b.keys())
            .filter(|f| !f.starts_with('~'))
            .collect();
        let mut out = Card::new();
        for f in fields {
            let (va, vb) = (a.get(f), b.get(f));
            let (wa, wb) = (a.get(&was(f)), b.get(&was(f)));
            let (v, w) = if va == vb {
                (va, wa.min(wb))
            } else if wb == va {
                (vb, wb)
            } else if wa == vb {
                (va, wa)
            } else {
                return None;
            };
            if let Some(v) = v {
                out.insert(f.clone(), v.clone());
            }
            if let Some(w) = w {
                out.insert(was(f), w.clone());
            }
        }
        Some(render(&out))
    }
}

/// The books' kind: key/value stores of cards, merged field by field.
fn contacts() -> ObjectKind<Kv> {
    ObjectKind(Kv::with_merge(Arc::new(FieldMerge)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(|s| s.as_str()) {
        Some("serve") => serve(),
        Some("demo") => demo(args.get(1).map(PathBuf::from)),
        _ => Err("usage: address-book demo [DIR] | address-book serve".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("address-book: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Serves books of contacts on stdin/stdout until the other side closes.
fn serve() -> Res<()> {
    let conn = Conn::new(std::io::stdin(), std::io::stdout(), "the coordinator", None);
    let kinds = Kinds::new(Arc::new(contacts()));
    weave_net::server::serve_kinds(conn, &kinds)?;
    Ok(())
}

/// Syncs book `a` (this process) with book `b`, served by a child process
/// over a pipe.
fn sync(a: &Path, b: &Path) -> Res<Report> {
    let kind = contacts();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let conn = Conn::new(
        child.stdout.take().expect("piped"),
        child.stdin.take().expect("piped"),
        "the book process",
        None,
    );
    let remote = RemoteReplica::open_kind(conn, "book B", b.to_str().ok_or("path")?, "kv", false)?;
    let mut reps: Vec<Box<dyn Replica>> = vec![kind.open(a, "book A", false)?, Box::new(remote)];
    let opts = SyncOptions {
        merge: kind.merge(),
        ..SyncOptions::default()
    };
    let report = weave_object::sync(&mut reps, &opts)?;
    drop(reps); // ends the session: the child exits
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the book process ended with {status}").into());
    }
    Ok(report)
}

fn card(fields: &[(&str, &str)]) -> Vec<u8> {
    render(
        &fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect(),
    )
}

/// Sets one field of a card (a local edit, as a program would make it).
fn set_field(book: &Path, key: &str, field: &str, value: &str) -> Res<()> {
    let kv = KvStore::open(book)?;
    let mut c = kv
        .get(key)?
        .and_then(|r| parse(&r.value))
        .unwrap_or_default();
    if let Some(old) = c.insert(field.to_string(), value.to_string()) {
        if old != value {
            c.insert(was(field), old);
        }
    }
    kv.put(key, &render(&c))?;
    Ok(())
}

fn show(label: &str, book: &Path) -> Res<BTreeMap<String, String>> {
    let all: BTreeMap<String, String> = KvStore::open(book)?
        .list()?
        .into_iter()
        .map(|(k, r)| (k, String::from_utf8_lossy(&r.value).into_owned()))
        .collect();
    println!("  {label}:");
    for (k, v) in &all {
        let shown: Vec<&str> = v.lines().filter(|l| !l.starts_with('~')).collect();
        println!("    {k}: {}", shown.join("; "));
    }
    Ok(all)
}

fn check(ok: bool, what: &str) -> Res<()> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
}

fn demo(dir: Option<PathBuf>) -> Res<()> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("address-book-{}", std::process::id()))
    });
    let (a, b) = (dir.join("book-a"), dir.join("book-b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d)?;
    }
    let a = std::fs::canonicalize(&a)?;
    let b = std::fs::canonicalize(&b)?;
    println!("books in {}", dir.display());

    println!("1. Alice is added to book A, Bob to book B; sync.");
    KvStore::open(&a)?.put(
        "alice",
        &card(&[("name", "Alice"), ("email", "alice@example.org")]),
    )?;
    KvStore::open(&b)?.put("bob", &card(&[("name", "Bob"), ("phone", "555-0101")]))?;
    let r = sync(&a, &b)?;
    let (ba, bb) = (show("book A", &a)?, show("book B", &b)?);
    check(ba == bb && ba.len() == 2, "both books hold Alice and Bob")?;
    check(r.in_sync, "the sync ended in sync")?;

    println!("2. A adds Alice's phone while B changes her email; sync.");
    set_field(&a, "alice", "phone", "555-0199")?;
    set_field(&b, "alice", "email", "alice@work.example")?;
    let r = sync(&a, &b)?;
    let (ba, bb) = (show("book A", &a)?, show("book B", &b)?);
    let alice = parse(ba["alice"].as_bytes()).unwrap_or_default();
    check(
        r.merged.len() == 1 && r.conflicts.is_empty(),
        "the two edits were merged, no conflict",
    )?;
    check(
        alice.get("phone").map(|s| s.as_str()) == Some("555-0199")
            && alice.get("email").map(|s| s.as_str()) == Some("alice@work.example"),
        "Alice's card has both the new phone and the new email",
    )?;
    check(ba == bb, "both books are the same")?;

    println!("3. Both books change Bob's phone, differently; sync.");
    set_field(&a, "bob", "phone", "555-0111")?;
    set_field(&b, "bob", "phone", "555-0222")?;
    let r = sync(&a, &b)?;
    let (ba, bb) = (show("book A", &a)?, show("book B", &b)?);
    check(
        r.conflicts.len() == 1 && r.merged.is_empty(),
        "the same field changed twice cannot be merged: a conflict",
    )?;
    let phones: Vec<String> = ba
        .iter()
        .filter(|(k, _)| k.starts_with("bob"))
        .filter_map(|(_, v)| parse(v.as_bytes())?.get("phone").cloned())
        .collect();
    check(
        phones.contains(&"555-0111".to_string()) && phones.contains(&"555-0222".to_string()),
        "both of Bob's phones are kept (one under a conflict-copy key)",
    )?;
    check(ba == bb, "both books are the same")?;

    println!("4. One more sync changes nothing.");
    let r = sync(&a, &b)?;
    check(r.created + r.updated + r.deleted == 0, "nothing left to do")?;
    println!("done");
    Ok(())
}
