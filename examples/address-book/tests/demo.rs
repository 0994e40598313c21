//! Runs the example's walkthrough: two processes, two books, a merge and
//! a conflict (it checks each step itself and fails if one is wrong).

#[test]
fn the_address_book_walkthrough_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_address-book"))
        .arg("demo")
        .arg(dir.path())
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the walkthrough failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: the two edits were merged"), "{stdout}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
}
