//! One sync of opened replicas, as named stages:
//!
//! 1. [`check_identities`]: two replicas with one identity are refused;
//! 2. [`scan`]: every replica turns its changes into index entries, in
//!    parallel;
//! 3. [`up_to_date`]: nothing new anywhere since these replicas last synced
//!    together ends the sync here;
//! 4. [`plan`]: the pure planner decides every path once, for everyone,
//!    from what [`crate::gather`] loads of each replica (what changed since
//!    they last synced, or everything), then the kind's merge (if any)
//!    settles what it can merge;
//! 5. [`derive`]: each replica's operations (final vs current);
//! 6. [`execute`]: each replica in turn carries its operations out, taking
//!    what it lacks from the others (see [`crate::fetch`]);
//! 7. [`record`]: what each replica has integrated of the others.

use crate::fetch::{Fetch, Holders};
use crate::gather::{gather_and_plan, Gathered, Planning, Start};
use crate::merge;
use crate::ops;
use crate::replica::{Entries, Finish, Foreign, IgnoreSpec, Issue, Replica, ScanSummary};
use crate::report::{ConflictReport, IssueReport, PlannedOp, ReplicaReport, Report};
use crate::{Progress, Roles, SyncError, SyncOptions};
use std::collections::{BTreeMap, HashMap};
use weave_core::ignore::Matcher;
use weave_core::path::STATE_DIR;
use weave_core::{plan_tree, Bumper, ConflictPolicy, Entry, Hash, LocalEntry, Object, Op, OpKind};
use weave_core::{ReplicaId, TreePlan, VersionVector};

/// Runs one sync of opened replicas with their `roles`.
pub fn run(
    reps: &mut [Box<dyn Replica>],
    opts: &SyncOptions,
    roles: &Roles,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    crate::check_roles(roles, reps.len())?;
    check_identities(reps)?;
    // The replica a prefer= policy names, by id (looked up for prefer= only).
    let preferred = opts.policy.preferred().and(roles.preferred);
    let policy = opts.policy.resolve(preferred.map(|i| reps[i].info().id));
    let ignore = IgnoreSpec {
        files: reps
            .iter()
            .filter_map(|r| r.info().ignore_file.clone())
            .collect(),
        patterns: opts.ignore.clone(),
    };
    let matcher = Matcher::from_files(&ignore.files, &ignore.patterns)?;
    let mut report = Report {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    note_rekeyed(&mut report, reps);

    progress.phase("scanning");
    scan(reps, &ignore, opts.dry_run, &mut report)?;
    if up_to_date(reps, matcher.fingerprint()) {
        report.unchanged = true;
        return Ok(finished(report, reps));
    }

    progress.phase("planning");
    // The first source coordinates: changes the planner makes are its own.
    let coord = (0..reps.len())
        .find(|i| !roles.backups.contains(i))
        .expect("a source");
    let mut clock = CoordinatorClock {
        id: reps[coord].info().id,
        clock: reps[coord].info().clock,
    };
    let how = Planning {
        roles,
        matcher: &matcher,
        policy,
        full: opts.full_plan,
    };
    // A dry run plans at once: its slices would not see each other's
    // operations carried out.
    let slice = match (opts.dry_run, opts.slice) {
        (true, _) => 0,
        (false, 0) => crate::SLICE,
        (false, n) => n,
    };
    let ctx = Ctx {
        opts,
        roles,
        matcher: &matcher,
        progress,
    };
    let mut done = Executed::new(reps.len());
    match gather_and_plan(reps, &how, slice, &mut clock)? {
        Start::Planned(g) => carry_out(reps, g, &ctx, &mut clock, &mut done, &mut report)?,
        Start::Sliced(mut slices) => {
            while let Some(g) = slices.next(reps, &how, &mut clock)? {
                carry_out(reps, g, &ctx, &mut clock, &mut done, &mut report)?;
            }
        }
    }
    if !opts.dry_run {
        record(reps, coord, clock.clock, &done, matcher.fingerprint())?;
    }
    Ok(finished(report, reps))
}

/// What every slice of a sync is carried out under.
struct Ctx<'a> {
    opts: &'a SyncOptions,
    roles: &'a Roles,
    matcher: &'a Matcher,
    progress: &'a dyn Progress,
}

/// What the slices of a sync carried out so far: per replica, whether
/// everything went through, and the counts the progress shows.
struct Executed {
    clean: Vec<bool>,
    /// Per replica: nothing failed there but what its own rules refused
    /// ("not taken: …"): it holds everything it takes.
    through: Vec<bool>,
    /// The failures reported, by replica, path and message: a slice that
    /// tries again what failed in an earlier one (an ancestor) reports it
    /// once.
    reported: std::collections::HashSet<(usize, String, String)>,
    bytes_total: u64,
    ops_total: u64,
    ops_done: u64,
}

impl Executed {
    fn new(n: usize) -> Executed {
        Executed {
            clean: vec![true; n],
            through: vec![true; n],
            reported: Default::default(),
            bytes_total: 0,
            ops_total: 0,
            ops_done: 0,
        }
    }
}

/// Settles what the kind can merge in a plan, derives each replica's
/// operations and carries them out (or, in a dry run, describes them).
fn carry_out(
    reps: &mut [Box<dyn Replica>],
    g: Gathered,
    ctx: &Ctx,
    clock: &mut CoordinatorClock,
    done: &mut Executed,
    report: &mut Report,
) -> Result<(), SyncError> {
    let Gathered {
        mut views,
        mut plan,
        scope,
        decided,
    } = g;
    tracing::debug!(?scope, "gathered and planned");

    // Concurrent versions the kind knows how to merge become one.
    let mut made: HashMap<Hash, merge::Made> = HashMap::new();
    if let Some(m) = &ctx.opts.merge {
        let merged = merge::merge_conflicts(reps, &views, &mut plan, m.as_ref(), clock, &mut made);
        report.merged.extend(merged);
    }
    for c in &plan.conflicts {
        let c = ConflictReport::from_conflict(c);
        // A slice plans again the paths of earlier ones it needs (their
        // ancestors): a conflict there is reported once.
        if !(decided.has(&c.path) && report.conflicts.contains(&c)) {
            report.conflicts.push(c);
        }
    }
    let mut all_ops = derive(
        reps,
        &views,
        &mut plan.finals,
        ctx.roles,
        ctx.matcher,
        report,
    );
    // What an earlier slice carried out is not carried out again: where
    // it failed, a slice tries it again no more than planning every path
    // at once would (the next sync does).
    for ops in &mut all_ops {
        ops.retain(|op| !decided.has(&op.path));
    }
    if ctx.opts.dry_run {
        describe(reps, &all_ops, report);
        return Ok(());
    }
    execute(reps, all_ops, &mut views, &made, ctx.progress, done, report)
}

/// Two replicas with one identity (a state directory copied along with the
/// files) would confuse whose change is whose.
fn check_identities(reps: &[Box<dyn Replica>]) -> Result<(), SyncError> {
    for i in 0..reps.len() {
        for j in i + 1..reps.len() {
            if reps[i].info().id == reps[j].info().id {
                return Err(SyncError::BadReplica {
                    path: reps[j].display().to_string(),
                    problem: format!(
                        "has the same weave identity as {} (its state directory was copied from there, or both name the same directory)",
                        reps[i].display()
                    ),
                    fix: format!(
                        "Give each directory once; if it is a copy, move its {STATE_DIR} directory out of it (it is rebuilt by the next sync; files that differ are kept as conflict copies)."
                    ),
                });
            }
        }
    }
    Ok(())
}

fn note_rekeyed(report: &mut Report, reps: &[Box<dyn Replica>]) {
    for r in reps.iter().filter(|r| r.info().rekeyed) {
        report.notices.push(IssueReport {
            replica: r.display().to_string(),
            path: STATE_DIR.into(),
            message: "this state directory was made for another directory (copied or moved with the files); the replica got a new identity".into(),
        });
    }
}

/// Scans every replica, in parallel, and reports what each found.
fn scan(
    reps: &mut [Box<dyn Replica>],
    ignore: &IgnoreSpec,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), SyncError> {
    let t = std::time::Instant::now();
    let outcomes: Vec<Result<ScanSummary, SyncError>> = std::thread::scope(|s| {
        let handles: Vec<_> = reps
            .iter_mut()
            .map(|r| s.spawn(move || r.scan(ignore, dry_run)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scanner panicked"))
            .collect()
    });
    for (r, o) in reps.iter().zip(outcomes) {
        let o = o?;
        push_issues(&mut report.errors, r.display(), &o.errors);
        push_issues(&mut report.notices, r.display(), &o.notices);
    }
    for r in reps.iter() {
        report.replicas.push(ReplicaReport {
            path: r.display().to_string(),
            id: r.info().id.to_string(),
            ..Default::default()
        });
    }
    tracing::debug!(elapsed = ?t.elapsed(), "scanned and recorded local changes");
    Ok(())
}

/// True when every replica has integrated every other's latest change,
/// under the same ignore patterns (`fingerprint`): nothing to plan.
fn up_to_date(reps: &[Box<dyn Replica>], fingerprint: u64) -> bool {
    reps.iter()
        .all(|r| r.info().ignore_fingerprint == Some(fingerprint))
        && reps.iter().all(|r| {
            reps.iter().all(|p| {
                p.info().id == r.info().id
                    || r.info().peers.get(&p.info().id) == Some(&p.info().seq)
            })
        })
}

/// The coordinating replica's clock, lent to the planner.
#[derive(Clone)]
pub(crate) struct CoordinatorClock {
    id: ReplicaId,
    clock: u64,
}
#[cfg(test)]
impl CoordinatorClock {
    pub(crate) fn for_test(id: ReplicaId, clock: u64) -> CoordinatorClock {
        CoordinatorClock { id, clock }
    }
}
impl Bumper for CoordinatorClock {
    fn bump(&mut self) -> (ReplicaId, u64) {
        self.clock += 1;
        (self.id, self.clock)
    }
}

/// Plans the whole tree once, from every source's full index (backups
/// have no say), leaving ignored paths alone.
pub(crate) fn plan(
    reps: &[Box<dyn Replica>],
    views: &[Entries],
    roles: &Roles,
    matcher: &Matcher,
    policy: ConflictPolicy,
    clock: &mut CoordinatorClock,
) -> TreePlan {
    let t = std::time::Instant::now();
    let mut by_path: BTreeMap<&str, Vec<(ReplicaId, &Entry)>> = BTreeMap::new();
    for (i, (r, v)) in reps.iter().zip(views).enumerate() {
        if roles.backups.contains(&i) {
            continue;
        }
        let id = r.info().id;
        for (p, le) in v.iter() {
            by_path.entry(p.as_str()).or_default().push((id, &le.entry));
        }
    }
    by_path.retain(|p, hs| {
        let is_dir = hs.iter().any(|(_, e)| e.object.is_dir());
        !matcher.is_ignored(p, is_dir)
    });
    let plan = plan_tree(&by_path, policy, clock);
    tracing::debug!(elapsed = ?t.elapsed(), paths = plan.finals.len(), "planned");
    plan
}

/// Each replica's operations: what brings it to `finals`. A backup
/// mirrors the sources: the paths only backups have become tombstones in
/// `finals` (see [`backup_extras`]), so a backup removes what only it
/// has, and every replica ends holding the same entry at every path
/// planned (what a sync that plans only what changed relies on, I-7).
fn derive(
    reps: &[Box<dyn Replica>],
    views: &[Entries],
    finals: &mut BTreeMap<String, Entry>,
    roles: &Roles,
    matcher: &Matcher,
    report: &mut Report,
) -> Vec<Vec<Op>> {
    let mut extras: BTreeMap<String, Entry> = BTreeMap::new();
    for &b in &roles.backups {
        for (p, e) in backup_extras(&views[b], finals, matcher) {
            match extras.get_mut(&p) {
                Some(x) => {
                    let vv = x.vv.merge(&e.vv);
                    if e.precedence_key() > x.precedence_key() {
                        *x = e;
                    }
                    x.vv = vv;
                }
                None => {
                    extras.insert(p, e);
                }
            }
        }
    }
    finals.extend(extras.iter().map(|(p, e)| (p.clone(), e.clone())));
    let mut all_ops = Vec::with_capacity(views.len());
    for (i, v) in views.iter().enumerate() {
        let o = ops::derive(v, finals);
        if roles.backups.contains(&i) {
            note_backup_reverts(report, reps[i].display(), &o, v, finals, &extras);
        }
        all_ops.push(o);
    }
    all_ops
}

/// The paths only a backup has (not ignored), as tombstones that claim no
/// version (an empty version vector): no source holds anything there, so
/// none may learn a version from the backup. A tombstone carrying the
/// backup's version would let a source's later edit dominate a version it
/// never saw, and a sync would then overwrite that version where it still
/// lives; a tombstone of a deletion made on the backup would delete it.
fn backup_extras(
    view: &BTreeMap<String, LocalEntry>,
    finals: &BTreeMap<String, Entry>,
    matcher: &Matcher,
) -> BTreeMap<String, Entry> {
    view.iter()
        .filter(|(p, le)| {
            !finals.contains_key(*p) && !matcher.is_ignored(p, le.entry.object.is_dir())
        })
        .map(|(p, le)| {
            let e = Entry {
                object: Object::Deleted,
                mode: 0,
                mtime_ns: 0,
                vv: VersionVector::new(),
                meta: None,
                ..le.entry.clone()
            };
            (p.clone(), e)
        })
        .collect()
}

/// A dry run's report: what each replica would do.
fn describe(reps: &[Box<dyn Replica>], all_ops: &[Vec<Op>], report: &mut Report) {
    for (r, ops) in reps.iter().zip(all_ops) {
        for k in 0..ops.len() {
            if let Some(p) = PlannedOp::describe(r.display(), ops, k) {
                report.planned.push(p);
            }
        }
    }
}

/// Carries out every replica's operations, one replica after another,
/// each taking what it lacks from the others; the results are counted in
/// `report` and kept in `views`, and whether everything went through on
/// each replica in `done`.
fn execute(
    reps: &mut [Box<dyn Replica>],
    mut all_ops: Vec<Vec<Op>>,
    views: &mut [Entries],
    made: &HashMap<Hash, merge::Made>,
    progress: &dyn Progress,
    done: &mut Executed,
    report: &mut Report,
) -> Result<(), SyncError> {
    let total: u64 = all_ops
        .iter()
        .flatten()
        .filter_map(|o| o.writes().map(|(_, size)| size))
        .sum();
    match done.bytes_total {
        0 => progress.set_total(total),
        before if total > 0 => progress.grow_total(before + total),
        _ => {}
    }
    done.bytes_total += total;
    progress.phase("syncing");
    done.ops_total += all_ops.iter().map(|o| o.len() as u64).sum::<u64>();
    progress.files(done.ops_done, done.ops_total);
    let mut holders = Holders::of(views);
    for i in 0..reps.len() {
        let ops = std::mem::take(&mut all_ops[i]);
        if ops.is_empty() {
            continue;
        }
        let t = std::time::Instant::now();
        // What each operation does, for the report (the operations
        // themselves go to the replica).
        let actions: Vec<Option<&str>> = (0..ops.len()).map(|k| ops::action(&ops, k)).collect();
        let foreign = foreign_for(reps, i, views, &ops, &holders, made);
        let applied = {
            let (dest, mut provider) = Fetch::for_replica(reps, i, &holders, made);
            let adv = |n: u64| progress.advance(n);
            dest.apply(ops, &foreign, &mut provider, &adv)?
        };
        done.clean[i] &= applied.errors.is_empty();
        done.through[i] &= applied.errors.iter().all(|e| crate::is_refusal(&e.message));
        done.ops_done += actions.len() as u64;
        progress.files(done.ops_done, done.ops_total);
        let new: Vec<Issue> = applied
            .errors
            .iter()
            .filter(|e| done.reported.insert((i, e.path.clone(), e.message.clone())))
            .cloned()
            .collect();
        push_issues(&mut report.errors, reps[i].display(), &new);
        let rr = &mut report.replicas[i];
        rr.bytes_local += applied.bytes_local;
        rr.bytes_copied += applied.bytes_remote;
        for (k, entry) in &applied.done {
            let action = actions.get(*k).copied().flatten();
            rr.note(entry, action);
            // An ignore file written (not refused, not failed, not only
            // recorded): the sync ran under the patterns from before.
            report.ignore_file_changed |=
                action.is_some() && entry.path == weave_core::ignore::IGNORE_FILE;
            if let Some(content) = entry.object.content() {
                holders.add(content, i);
            }
            std::sync::Arc::make_mut(&mut views[i]).insert(
                entry.path.clone(),
                LocalEntry {
                    entry: entry.clone(),
                    seq: 0,
                    stat: None,
                },
            );
        }
        tracing::debug!(replica = %reps[i].display(), ops = actions.len(), elapsed = ?t.elapsed(), "applied and recorded");
    }
    Ok(())
}

/// What the other replicas on this machine hold that replica `i` can use
/// directly, when it is on this machine too: their indexes and roots (the
/// replica reads their files itself), and the chunk lists they know of the
/// contents `ops` write (or that this sync made by merging).
fn foreign_for(
    reps: &mut [Box<dyn Replica>],
    i: usize,
    views: &[Entries],
    ops: &[Op],
    holders: &Holders,
    made: &HashMap<Hash, merge::Made>,
) -> Foreign {
    let mut foreign = Foreign::default();
    if !reps[i].is_local() {
        return foreign;
    }
    for (j, v) in views.iter().enumerate() {
        if j == i {
            continue;
        }
        if let Some(root) = reps[j].local().map(|l| l.root().to_path_buf()) {
            foreign.siblings.push(crate::Sibling {
                root,
                entries: v.clone(),
            });
        }
    }
    let mut wanted: Vec<Hash> = Vec::new();
    let mut seen: std::collections::HashSet<Hash> = std::collections::HashSet::new();
    for content in ops.iter().filter_map(|op| op.target.object.content()) {
        if !seen.insert(content) {
            continue;
        }
        match made.get(&content) {
            Some(m) => {
                foreign.lists.insert(content, m.list.clone());
            }
            None => wanted.push(content),
        }
    }
    // From each other local replica, the lists of what it holds, read at
    // once.
    for (j, r) in reps.iter_mut().enumerate() {
        if j == i || !r.is_local() {
            continue;
        }
        let theirs: Vec<Hash> = wanted
            .iter()
            .filter(|c| !foreign.lists.contains_key(*c) && holders.of_content(c).contains(&j))
            .copied()
            .collect();
        if !theirs.is_empty() {
            foreign.lists.extend(r.chunk_lists(&theirs));
        }
    }
    foreign
}

/// Records what each replica has integrated: everything the others hold
/// now, unless something failed on it. A replica on which something
/// failed is not taken as integrated by the others either: what it still
/// holds of its own may be what the plan wanted gone (a backup that could
/// not undo its own change, say), and a later sync that plans only what
/// changed must still see it (I-7). The coordinator also takes the clock
/// values the planner handed out on its behalf.
fn record(
    reps: &mut [Box<dyn Replica>],
    coord: usize,
    clock: u64,
    done: &Executed,
    fingerprint: u64,
) -> Result<(), SyncError> {
    let clean = &done.clean;
    let seqs: Vec<(ReplicaId, u64)> = reps
        .iter()
        .zip(clean)
        .filter(|(_, clean)| **clean)
        .map(|(r, _)| (r.info().id, r.info().seq))
        .collect();
    let went_through: Vec<ReplicaId> = reps
        .iter()
        .zip(&done.through)
        .filter(|(_, through)| **through)
        .map(|(r, _)| r.info().id)
        .collect();
    for (i, r) in reps.iter_mut().enumerate() {
        let me = r.info().id;
        let fin = Finish {
            observe: if i == coord { clock } else { 0 },
            integrated: clean[i].then(|| crate::Integrated {
                peers: seqs.iter().filter(|(id, _)| *id != me).copied().collect(),
                ignore_fingerprint: fingerprint,
            }),
            went_through: Some(went_through.clone()),
        };
        r.finish(&fin)?;
    }
    Ok(())
}

/// The report, with the traffic of every remote replica and its totals.
fn finished(mut report: Report, reps: &[Box<dyn Replica>]) -> Report {
    for (rr, r) in report.replicas.iter_mut().zip(reps) {
        if let Some((sent, received)) = r.traffic() {
            rr.wire_sent = Some(sent);
            rr.wire_received = Some(received);
        }
    }
    report.finish();
    report
}

/// Notes, for a backup replica, each of its own changes its operations
/// undo: a path whose version there is not one the sources' final version
/// has seen, or that only the backup has. Those changes never reach the
/// other replicas; what they replace of a file is kept in the backup's
/// version store.
fn note_backup_reverts(
    report: &mut Report,
    display: &str,
    ops: &[Op],
    view: &BTreeMap<String, LocalEntry>,
    finals: &BTreeMap<String, Entry>,
    only_backups: &BTreeMap<String, Entry>,
) {
    const SHOWN: usize = 20;
    // What the sources hold (not the tombstones of what only backups have).
    let sources = |p: &str| finals.get(p).filter(|_| !only_backups.contains_key(p));
    let mut own: Vec<(&str, &str)> = Vec::new();
    for o in ops.iter().filter(|o| o.kind != OpKind::Record) {
        if own.last().is_some_and(|(p, _)| *p == o.path) {
            continue;
        }
        let Some(mine) = view.get(&o.path) else {
            continue;
        };
        let undone = match sources(&o.path) {
            None => true,
            Some(f) => matches!(
                mine.entry.vv.compare(&f.vv),
                weave_core::Causality::Dominates | weave_core::Causality::Concurrent
            ),
        };
        if undone {
            let what = match sources(&o.path) {
                Some(f) if f.is_live() && !mine.entry.is_live() => {
                    "deleted here: brought back from the other replicas"
                }
                Some(f) if f.is_live() => "changed here: replaced by the other replicas' version",
                _ => "not on the other replicas: removed",
            };
            own.push((&o.path, what));
        }
    }
    for (path, what) in own.iter().take(SHOWN) {
        report.notices.push(IssueReport {
            replica: display.to_string(),
            path: path.to_string(),
            message: format!(
                "{what} (a backup takes in changes and sends none; a file's old content is in `weave history`)"
            ),
        });
    }
    if own.len() > SHOWN {
        report.notices.push(IssueReport {
            replica: display.to_string(),
            path: String::new(),
            message: format!(
                "and {} more of its own changes undone (a backup takes in changes and sends none)",
                own.len() - SHOWN
            ),
        });
    }
}

fn push_issues(out: &mut Vec<IssueReport>, display: &str, issues: &[Issue]) {
    for i in issues {
        out.push(IssueReport {
            replica: display.to_string(),
            path: i.path.clone(),
            message: i.message.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{Applied, ReplicaInfo, ServedNodes, Wants};
    use weave_chunk::ChunkList;
    use weave_core::VersionVector;

    /// A replica that is only an index in memory: enough for the stages
    /// that look at indexes and identities.
    struct Fake {
        info: ReplicaInfo,
        entries: Entries,
    }

    fn fake(id: u64, files: &[(&str, u8, u64)]) -> Fake {
        let entries = files
            .iter()
            .map(|&(path, byte, counter)| {
                let entry = Entry {
                    path: path.into(),
                    object: Object::File {
                        size: 1,
                        content: Hash([byte; 32]),
                    },
                    mode: 0o644,
                    mtime_ns: 1,
                    vv: VersionVector::from_pairs(vec![(ReplicaId(id), counter)]),
                    origin: ReplicaId(id),
                    meta: None,
                };
                let le = LocalEntry {
                    entry,
                    seq: counter,
                    stat: None,
                };
                (path.to_string(), le)
            })
            .collect();
        Fake {
            info: ReplicaInfo {
                id: ReplicaId(id),
                seq: files.len() as u64,
                clock: 10,
                peers: HashMap::new(),
                ignore_fingerprint: None,
                rekeyed: false,
                ignore_file: None,
            },
            entries: std::sync::Arc::new(entries),
        }
    }

    fn boxed(fakes: Vec<Fake>) -> Vec<Box<dyn Replica>> {
        fakes
            .into_iter()
            .map(|f| Box::new(f) as Box<dyn Replica>)
            .collect()
    }

    impl Replica for Fake {
        fn display(&self) -> &str {
            "fake"
        }
        fn is_local(&self) -> bool {
            false
        }
        fn info(&self) -> &ReplicaInfo {
            &self.info
        }
        fn scan(&mut self, _: &IgnoreSpec, _: bool) -> Result<ScanSummary, SyncError> {
            Ok(ScanSummary::default())
        }
        fn entries(&mut self) -> Result<Entries, SyncError> {
            Ok(self.entries.clone())
        }
        fn chunk_list(&mut self, _: &Hash) -> Option<ChunkList> {
            None
        }
        fn serve_nodes(&mut self, wants: &Wants) -> Result<ServedNodes, SyncError> {
            Ok(wants.iter().map(|(_, h)| vec![None; h.len()]).collect())
        }
        fn serve_chunks(
            &mut self,
            _: &Wants,
            _: &mut dyn FnMut(Hash, Option<Vec<u8>>) -> Result<(), SyncError>,
        ) -> Result<(), SyncError> {
            Ok(())
        }
        fn apply(
            &mut self,
            _: Vec<Op>,
            _: &Foreign,
            _: &mut dyn crate::Provider,
            _: &(dyn Fn(u64) + Sync),
        ) -> Result<Applied, SyncError> {
            unreachable!("the stages tested here apply nothing")
        }
        fn finish(&mut self, _: &Finish) -> Result<(), SyncError> {
            Ok(())
        }
    }

    #[test]
    fn two_replicas_with_one_identity_are_refused() {
        let reps = boxed(vec![fake(1, &[]), fake(2, &[]), fake(1, &[])]);
        let e = check_identities(&reps).unwrap_err().to_string();
        assert!(e.contains("same weave identity"), "{e}");
        assert!(check_identities(&boxed(vec![fake(1, &[]), fake(2, &[])])).is_ok());
    }

    #[test]
    fn replicas_are_up_to_date_only_when_each_has_integrated_the_others_latest() {
        // (replica 1 integrated of 2, replica 2 integrated of 1, fingerprint)
        let pair = |of2: u64, of1: u64, fp: Option<u64>| {
            let (mut a, mut b) = (fake(1, &[("a", 1, 1)]), fake(2, &[]));
            a.info.peers.insert(ReplicaId(2), of2);
            b.info.peers.insert(ReplicaId(1), of1);
            a.info.ignore_fingerprint = fp;
            b.info.ignore_fingerprint = fp;
            boxed(vec![a, b])
        };
        assert!(!up_to_date(
            &boxed(vec![fake(1, &[("a", 1, 1)]), fake(2, &[])]),
            7
        ));
        assert!(up_to_date(&pair(0, 1, Some(7)), 7));
        assert!(!up_to_date(&pair(0, 1, Some(7)), 8), "under other patterns");
        assert!(
            !up_to_date(&pair(0, 0, Some(7)), 7),
            "a change not integrated"
        );
        assert!(!up_to_date(&pair(0, 1, None), 7), "never synced together");
    }

    #[test]
    fn the_plan_leaves_out_ignored_paths_and_backups_have_no_say() {
        let fakes = vec![
            fake(1, &[("a", 1, 1), ("skip.tmp", 2, 2)]),
            fake(2, &[("b", 3, 1)]),
        ];
        let views: Vec<Entries> = fakes.iter().map(|f| f.entries.clone()).collect();
        let reps = boxed(fakes);
        let matcher = Matcher::from_files(&[], &["*.tmp".into()]).unwrap();
        let mut clock = CoordinatorClock {
            id: ReplicaId(1),
            clock: 10,
        };
        let mut planned = |roles: &Roles| -> Vec<String> {
            let p = plan(
                &reps,
                &views,
                roles,
                &matcher,
                ConflictPolicy::KeepBoth,
                &mut clock,
            );
            p.finals.keys().cloned().collect()
        };
        assert_eq!(planned(&Roles::default()), ["a", "b"]);
        let backup = Roles {
            preferred: None,
            backups: vec![1],
        };
        assert_eq!(
            planned(&backup),
            ["a"],
            "the backup's own file is not planned"
        );
    }

    #[test]
    fn a_backup_loses_what_only_it_has_and_is_told_so() {
        let fakes = vec![fake(1, &[]), fake(2, &[("mine", 3, 1)])];
        let views: Vec<Entries> = fakes.iter().map(|f| f.entries.clone()).collect();
        let reps = boxed(fakes);
        let mut finals = BTreeMap::new();
        let matcher = Matcher::none();
        let extras = backup_extras(&views[1], &finals, &matcher);
        assert!(extras["mine"].object.is_deleted());
        assert!(
            extras["mine"].vv.is_empty(),
            "the tombstone claims no version, so no source learns one from the backup"
        );
        let roles = Roles {
            preferred: None,
            backups: vec![1],
        };
        let mut report = Report::default();
        let ops = derive(&reps, &views, &mut finals, &roles, &matcher, &mut report);
        // The source only records the tombstone: every replica ends with
        // the same entry.
        assert_eq!(ops[0].len(), 1);
        assert_eq!(ops[0][0].kind, OpKind::Record);
        assert!(ops[0][0].target.object.is_deleted());
        assert_eq!(ops[1].len(), 1);
        assert_eq!(ops[1][0].kind, OpKind::Remove);
        assert_eq!(report.notices.len(), 1);
        assert!(
            report.notices[0]
                .message
                .contains("not on the other replicas"),
            "{:?}",
            report.notices
        );
    }
}
