//! `weave completions` and `weave man`, as a user runs them.

mod common;

use common::*;

#[test]
fn completions_come_for_each_shell_and_an_unknown_one_is_refused() {
    let t = tempfile::tempdir().unwrap();
    for (shell, mark) in [
        ("bash", "_weave()"),
        ("zsh", "#compdef weave"),
        ("fish", "complete -c weave"),
    ] {
        let out = weave(t.path(), ["completions", shell]);
        out.expect_code(0);
        assert!(
            out.stdout.contains(mark),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        // Subcommands and their options are in it.
        assert!(
            out.stdout.contains("folder") && out.stdout.contains("untrusted"),
            "{shell}"
        );
    }
    weave(t.path(), ["completions", "tcsh"])
        .expect_code(2)
        .stderr_has(&["bash", "zsh", "fish"]);
}

#[test]
fn man_pages_are_written_for_every_command() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("man/man1");
    weave(t.path(), ["man", dir.to_str().unwrap()])
        .expect_code(0)
        .stderr_has(&["man pages written"]);
    for page in [
        "weave.1",
        "weave-sync.1",
        "weave-folder-add.1",
        "weave-gc.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let add = std::fs::read_to_string(dir.join("weave-folder-add.1")).unwrap();
    assert!(
        add.contains("receive\\-encrypted") || add.contains("receive-encrypted"),
        "{add}"
    );
    // A place that cannot be a directory is named.
    std::fs::write(t.path().join("file"), "x").unwrap();
    weave(t.path(), ["man", "file/sub"])
        .expect_code(2)
        .stderr_has(&["cannot make", "file/sub"]);
}
