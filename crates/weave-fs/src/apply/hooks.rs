//! Test hooks into the executor. In tests, the executor notes what it
//! did, in order, on the calling thread (flushes, commits, links: to
//! check that every rename is flushed before [`super::apply`] returns),
//! runs a test's code at chosen moments (a stand-in for a user's program
//! racing the sync), and takes settings a test imposes (no unnamed files,
//! another file system, a descriptor budget). Outside tests every hook
//! does nothing.

#[cfg(test)]
thread_local! {
    /// What the executor did, in order (see [`note`]).
    pub(super) static EVENTS: std::cell::RefCell<Vec<&'static str>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A test's hook, given a target's path.
#[cfg(test)]
pub(super) type Hook = Box<dyn Fn(&std::path::Path)>;

#[cfg(test)]
thread_local! {
    /// Makes the executor use named temporaries only.
    pub(super) static NO_UNNAMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Directories under this path count as another file system.
    pub(super) static OTHER_FS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Replaces the executor's budget of open unnamed files.
    pub(super) static FD_BUDGET: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// Runs just before each commit, with the target's path (a test's
    /// stand-in for a user's program racing the sync).
    pub(super) static BEFORE_COMMIT: std::cell::RefCell<Option<Hook>> =
        const { std::cell::RefCell::new(None) };
    /// Runs just after an unnamed file got its name.
    pub(super) static AFTER_LINK: std::cell::RefCell<Option<Hook>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs the test's hook, if it set one.
#[cfg(test)]
fn run(
    hook: &'static std::thread::LocalKey<std::cell::RefCell<Option<Hook>>>,
    p: &std::path::Path,
) {
    hook.with(|f| {
        if let Some(f) = f.borrow().as_ref() {
            f(p)
        }
    });
}

/// Just before a commit: runs the test's [`BEFORE_COMMIT`].
#[cfg(test)]
pub(super) fn before_commit(p: &std::path::Path) {
    run(&BEFORE_COMMIT, p)
}

#[cfg(not(test))]
pub(super) fn before_commit(_: &std::path::Path) {}

/// Just after an unnamed file got its name: runs the test's
/// [`AFTER_LINK`].
#[cfg(test)]
pub(super) fn after_link(p: &std::path::Path) {
    run(&AFTER_LINK, p)
}

#[cfg(not(test))]
pub(super) fn after_link(_: &std::path::Path) {}

/// Notes an event in [`EVENTS`].
#[cfg(test)]
pub(super) fn note(e: &'static str) {
    EVENTS.with(|v| v.borrow_mut().push(e));
}

#[cfg(not(test))]
pub(super) fn note(_: &'static str) {}
