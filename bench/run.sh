#!/usr/bin/env bash
# TIMES/RSS values are space-separated lists that are split on purpose:
# shellcheck disable=SC2086
# Benchmark weave against rsync and unison on the same generated data.
#
#   bash bench/run.sh            # all workloads: a b c
#   bash bench/run.sh a b        # only some of them
#   QUICK=1 bash bench/run.sh    # workloads shrunk 10x (smoke test)
#
# Environment:
#   BENCH_DIR   work directory (default /tmp/weave-bench; wiped at start)
#   BENCH_FS    loop:  sources on one loop-mounted ext4 image, and every timed
#                      initial copy into its own freshly made ext4 image (root)
#               plain: everything directly in BENCH_DIR (initial copies noisy)
#               default: loop if running as root and a probe mount works, else plain
#   QUICK=1     shrink every workload 10x
#   REPS_A      repetitions of the initial copy (a)        (default 5)
#   REPS_NC     repetitions of the no-change reruns (b, c) (default 5)
#   WEAVE       weave binary to use; when set, nothing is built
#   VERIFY=0    skip the `diff -r` check of the destinations
#   KEEP=1      keep BENCH_DIR afterwards (default: removed at the end)
#
# See bench/README.md for what is measured and the caveats.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_DIR=${BENCH_DIR:-/tmp/weave-bench}
BENCH_FS=${BENCH_FS:-}
QUICK=${QUICK:-0}
REPS_A=${REPS_A:-5}
REPS_NC=${REPS_NC:-5}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}
OUT_DIR=$HERE/out

# ---------------------------------------------------------------- workloads
WORKLOADS=("$@")
[[ ${#WORKLOADS[@]} -eq 0 ]] && WORKLOADS=(a b c)
for w in "${WORKLOADS[@]}"; do
    case $w in a | b | c) ;; *) echo "usage: $0 [a] [b] [c]   (unknown workload '$w')" >&2; exit 2 ;; esac
done
want() { local w; for w in "${WORKLOADS[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }
case $BENCH_FS in "" | loop | plain) ;; *) echo "BENCH_FS must be loop or plain (got '$BENCH_FS')" >&2; exit 2 ;; esac

# (a)/(b): 10,000 x 4 KiB in 100 dirs + 8 x 64 MiB;  (c): 100,000 x 1 KiB in 1000 dirs.
if [[ $QUICK == 1 ]]; then div=10; else div=1; fi
A_FILES=$((10000 / div)) A_DIRS=$((100 / div)) A_SIZE=4096
A_BIG=8 A_BIG_SIZE=$((64 * 1024 * 1024 / div))
C_FILES=$((100000 / div)) C_DIRS=$((1000 / div)) C_SIZE=1024
# size of (a)'s data in MiB (rounded up): what the `dd conv=fdatasync` reference writes
A_MIB=$(((A_FILES * A_SIZE + A_BIG * A_BIG_SIZE + 1048575) / 1048576))
# BENCH_FS=loop: every image is a sparse 4 GiB file (so mkfs.ext4 gives every
# filesystem the same geometry and a 64 MiB journal) with inodes for twice the
# files it holds; the source image holds A and C
IMG_MIB=4096
A_INODES=$((2 * (A_FILES + A_DIRS + A_BIG + 16) + 16384))
C_INODES=$((2 * (C_FILES + C_DIRS + 16) + 16384))

# ---------------------------------------------------------------- tools
for t in rsync unison /usr/bin/time python3 diff; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y rsync unison time python3 diffutils)" >&2; exit 2; }
done
if [[ -z ${WEAVE:-} ]]; then
    echo "# building weave (cargo build --release -p weave)" >&2
    (cd "$ROOT" && cargo build --release -p weave) >&2
    WEAVE=$ROOT/target/release/weave
fi
[[ -x $WEAVE ]] || { echo "weave binary not found at $WEAVE" >&2; exit 2; }

# TOOLS_NC run in every workload; TOOLS_INIT (the initial copies a, c0) adds
# `rsync -a --fsync` (rsync >= 3.2), which makes every file durable like weave does
TOOLS_NC=(weave rsync unison)
RSYNC_HELP=$(rsync --help 2>&1 || true) # not `| grep -q`: with pipefail, rsync's SIGPIPE would fail the test
if [[ $RSYNC_HELP == *--fsync* ]]; then
    HAVE_FSYNC=1 TOOLS_INIT=(weave rsync rsync-fsync unison)
else
    HAVE_FSYNC=0 TOOLS_INIT=("${TOOLS_NC[@]}")
fi
declare -A TIMES=() RSS=() FAILED=() RUNS=() OTHER=() KCPU=()
HZ=$(getconf CLK_TCK)
ANOMALIES=()

# ---------------------------------------------------------------- workdir
case $BENCH_DIR in "" | / | "$HOME" | "$ROOT" | "$ROOT"/*) echo "refusing BENCH_DIR=$BENCH_DIR" >&2; exit 2 ;; esac
BENCH_DIR=$(realpath -m "$BENCH_DIR")
IMG_DIR=$BENCH_DIR/img
LOGS=$BENCH_DIR/logs

# ---------------------------------------------------------------- loop-mounted ext4 images
declare -A LOOPDEV=() LOOPIMG=() # mount point -> loop device, image file
IMG_SEQ=0
MKFS_OPTS=(-q -F -E 'lazy_itable_init=0,lazy_journal_init=0,nodiscard')

# loop_mount DIR INODES: make a fresh ext4 image under IMG_DIR and mount it at
# DIR (empty, lost+found removed: weave and unison would sync it back). Untimed.
# mkfs initialises inode tables and journal itself, so no lazy-init kernel
# thread writes in the background during the timed runs. The loop device uses
# direct I/O (no second copy of the data in the page cache) where possible.
loop_mount() {
    local dir=$1 inodes=$2 img dev
    IMG_SEQ=$((IMG_SEQ + 1))
    img=$IMG_DIR/$(basename "$dir").$IMG_SEQ.img
    mkdir -p "$IMG_DIR" "$dir" || return 1
    truncate -s "${IMG_MIB}M" "$img" || return 1
    LOOPIMG[$dir]=$img
    mkfs.ext4 "${MKFS_OPTS[@]}" -N "$inodes" "$img" >"$LOGS/mkfs.log" 2>&1 || { cat "$LOGS/mkfs.log" >&2; return 1; }
    dev=$(losetup --find --show --direct-io=on "$img" 2>/dev/null) || dev=$(losetup --find --show "$img") || return 1
    LOOPDEV[$dir]=$dev
    mount -t ext4 "$dev" "$dir" || return 1
    rmdir "$dir/lost+found" || return 1
}

# loop_umount DIR [later]: unmount the image mounted at DIR, detach its loop
# device, delete the image (with `later`: at the next purge_images instead)
loop_umount() {
    local dir=$1 later=${2:-} dev=${LOOPDEV[$1]:-} img=${LOOPIMG[$1]:-}
    if mountpoint -q "$dir"; then
        umount "$dir" 2>/dev/null || { sleep 1; umount "$dir"; } || return 1
    fi
    if [[ -n $dev ]]; then losetup -d "$dev" || return 1; fi
    unset 'LOOPDEV[$dir]'
    if [[ -n $img && -n $later ]]; then TRASH+=("$img"); elif [[ -n $img ]]; then rm -f "$img"; fi
    unset 'LOOPIMG[$dir]'
}

# Images of earlier repetitions are deleted only at the end of a workload: on
# this VM's disk, writing to blocks the host freed a few seconds earlier is up
# to 5x faster than writing to other blocks, so a timed run that reused the
# previous repetition's blocks would be flushed to "disk" at a different speed
TRASH=()
purge_images() { # delete the images (and other big files) set aside by loop_umount ... later
    local f
    for f in "${TRASH[@]}"; do rm -f "$f"; done
    TRASH=()
}

# unmount_all [keep-images]: unmount everything mounted under BENCH_DIR and
# detach every loop device backed by an image under it, the ones this run
# recorded and any left over (an interrupted step, an earlier killed run).
unmount_all() {
    local d dev img keep=${1:-}
    for d in "${!LOOPDEV[@]}"; do
        if [[ -n $keep ]]; then unset 'LOOPIMG[$d]'; fi
        loop_umount "$d" || true
    done
    purge_images
    [[ -d $BENCH_DIR ]] || return 0
    while read -r d; do
        umount "$d" 2>/dev/null || { sleep 1; umount "$d"; } || umount -l "$d" || true
    done < <(findmnt -rn -o TARGET 2>/dev/null | grep -F "$BENCH_DIR/" | sort -r || true)
    for img in "$IMG_DIR"/*.img; do
        [[ -e $img ]] || continue
        for dev in $(losetup -n -O NAME -j "$img" 2>/dev/null); do losetup -d "$dev" || true; done
    done
}
still_mounted() { findmnt -rn -o TARGET 2>/dev/null | grep -F "$BENCH_DIR/" >/dev/null; }

# every mkdir/rm below stays on BENCH_DIR's own filesystems: never remove through a mount
if command -v findmnt >/dev/null && command -v losetup >/dev/null; then unmount_all; fi
if command -v findmnt >/dev/null && still_mounted; then echo "cannot unmount what is mounted under $BENCH_DIR" >&2; exit 2; fi
rm -rf --one-file-system "$BENCH_DIR"
mkdir -p "$LOGS"
cleanup() { # always unmount and detach; keep the workdir (logs, images) when a tool failed, or with KEEP=1
    local keep=""
    if [[ $KEEP == 1 || ${#FAILED[@]} != 0 ]]; then keep=1; fi
    if command -v findmnt >/dev/null && command -v losetup >/dev/null; then unmount_all "$keep"; fi
    if command -v findmnt >/dev/null && still_mounted; then
        echo "!! still mounted under $BENCH_DIR: $(findmnt -rn -o TARGET | grep -F "$BENCH_DIR/" | tr '\n' ' ')" >&2
        keep=1
    fi
    if [[ -z $keep ]]; then rm -rf --one-file-system "$BENCH_DIR"; else echo "# kept $BENCH_DIR" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- filesystem mode
FS_WHY=""
probe_loop() { # root, the tools, and one loop ext4 mount that works
    local t
    if [[ $EUID != 0 ]]; then FS_WHY="not running as root"; return 1; fi
    for t in truncate mkfs.ext4 losetup mount umount mountpoint findmnt; do
        command -v "$t" >/dev/null || { FS_WHY="$t not found"; return 1; }
    done
    if ! loop_mount "$BENCH_DIR/probe" 1024 >"$LOGS/probe.log" 2>&1; then
        FS_WHY="mounting a loop ext4 image failed: $(tail -n 1 "$LOGS/probe.log")"
        unmount_all
        return 1
    fi
    loop_umount "$BENCH_DIR/probe" && rmdir "$BENCH_DIR/probe"
}
if [[ $BENCH_FS != plain ]]; then
    if probe_loop; then
        BENCH_FS=loop
    elif [[ $BENCH_FS == loop ]]; then
        echo "BENCH_FS=loop: $FS_WHY" >&2; exit 2
    else
        BENCH_FS=plain
        echo "# BENCH_FS=plain: $FS_WHY; initial-copy timings will be noisy" >&2
    fi
else
    FS_WHY="BENCH_FS=plain was asked for"
fi
HOST_FS=$(df -T "$BENCH_DIR" | awk 'NR==2{print $2}')
if [[ $BENCH_FS == loop ]]; then
    SRC_ROOT=$BENCH_DIR/src # one image for the source trees A and C
    loop_mount "$SRC_ROOT" $((A_INODES + C_INODES))
    case $(losetup -n -O DIO -l "${LOOPDEV[$SRC_ROOT]}" | tr -d ' ') in 1) LOOP_DIO=on ;; 0) LOOP_DIO=off ;; *) LOOP_DIO='?' ;; esac
    if [[ $HOST_FS == tmpfs ]]; then
        ANOMALIES+=("BENCH_DIR is on tmpfs: the loop images live in RAM, so flushing to \"disk\" costs next to nothing")
    fi
else
    SRC_ROOT=$BENCH_DIR
fi

# ---------------------------------------------------------------- helpers
note() { echo "# $*" >&2; }
anomaly() { ANOMALIES+=("$*"); echo "!! $*" >&2; }

# tool_cmd TOOL SRC DST UNISON_DIR: set CMD to the tool's command syncing SRC into DST.
# rsync and unison exclude SRC/.weave (weave's own state in the source).
tool_cmd() {
    local tool=$1 src=$2 dst=$3 udir=$4
    case $tool in
        weave) CMD=("$WEAVE" sync --json "$src" "$dst") ;;
        rsync) CMD=(rsync -a --exclude=/.weave "$src/" "$dst/") ;;
        rsync-fsync) CMD=(rsync -a --fsync --exclude=/.weave "$src/" "$dst/") ;;
        unison) CMD=(env UNISON="$udir" unison "$src" "$dst" -batch -auto -times -perms 0 -ui text
            -ignore 'Path .weave' -confirmbigdel=false) ;;
    esac
}

# measure KEY TOOL SRC DST UNISON_DIR: one timed run; appends seconds to TIMES[KEY], KiB to RSS[KEY].
# Dirty page cache from earlier steps is flushed first (`sync`, untimed) so that
# no tool pays for another's writeback (weave calls syncfs, which would).
measure() {
    local key=$1 tool=$2 src=$3 dst=$4 udir=$5
    [[ -n ${FAILED[$key]:-} ]] && return 1
    tool_cmd "$tool" "$src" "$dst" "$udir"
    local n=$((${RUNS[$key]:-0} + 1))
    RUNS[$key]=$n
    local log=$LOGS/$key.$n.log rssf=$LOGS/$key.$n.rss
    sync
    local t0 t1 c0 c1 rc=0
    c0=$(cpu_ticks)
    t0=$(date +%s%N)
    /usr/bin/time -f '%U %S %M' -o "$rssf" "${CMD[@]}" </dev/null >"$log" 2>&1 || rc=$?
    t1=$(date +%s%N)
    c1=$(cpu_ticks)
    if [[ $rc != 0 ]]; then
        FAILED[$key]="exit $rc"
        anomaly "$tool failed (exit $rc) in $key run $n: ${CMD[*]}"
        echo "----- output of the failed run ($log) -----" >&2
        tail -n 60 "$log" >&2
        echo "-----" >&2
        return 1
    fi
    local secs rss other kcpu
    secs=$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d/1e9}')
    read -r _ _ rss < <(tail -n 1 "$rssf")
    # CPU time the machine spent outside this tool during the run, split into
    # kernel threads + interrupts (writeback, jbd2, the loop device's workers,
    # block-layer completions: mostly I/O this tool caused, e.g. by fsyncing)
    # and everything else (other processes, VM steal): a contamination indicator
    read -r other kcpu < <(tail -n 1 "$rssf" | awk -v c0="$c0" -v c1="$c1" -v hz="$HZ" '{
        split(c0, a, ","); split(c1, b, ",")
        k = ((b[2] - a[2]) + (b[3] - a[3])) / hz; if (k < 0) k = 0
        o = (b[1] - a[1]) / hz - ($1 + $2) - k; if (o < 0) o = 0
        printf "%.2f %.2f\n", o, k }')
    TIMES[$key]="${TIMES[$key]:-} $secs"
    RSS[$key]="${RSS[$key]:-} $rss"
    OTHER[$key]="${OTHER[$key]:-} $other"
    KCPU[$key]="${KCPU[$key]:-} $kcpu"
    if awk -v o="$other" -v s="$secs" 'BEGIN{ exit !(o > 0.1 && o > 0.25*s) }'; then
        anomaly "$key run $n of $tool: ${other}s of CPU went to other work during its ${secs}s (competing load?)"
    fi
    if [[ $tool == weave ]] && ! grep -q '"in_sync": true' "$log"; then
        anomaly "weave reported in_sync != true in $key run $n (see $log)"
    fi
    note "$key run $n: ${secs}s, max RSS $((rss / 1024)) MiB, other CPU ${other}s, kernel threads ${kcpu}s"
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
# cpu_ticks: "BUSY,IRQ,KTHREADS": machine-wide busy ticks; of those, hard+soft
# interrupt ticks; and user+system ticks of all kernel threads (children of kthreadd)
cpu_ticks() {
    local kt
    kt=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '{ n = split($0, a, /[)] /); split(a[n], f, " ")
        if (f[2] == 2 || $1 == 2) s += f[12] + f[13] } END { print s + 0 }')
    awk -v kt="$kt" '/^cpu /{print $2+$3+$4+$7+$8+$9 "," $7+$8 "," kt; exit}' /proc/stat
}

median() { # numbers... -> median (3 decimals) or empty
    printf '%s\n' "$@" | { grep . || true; } | sort -g | awk '{a[NR]=$1} END{ if (NR==0) exit;
        if (NR%2) printf "%.3f", a[(NR+1)/2]; else printf "%.3f", (a[NR/2]+a[NR/2+1])/2 }'
}
maxof() { printf '%s\n' "$@" | { grep . || true; } | sort -g | tail -n 1; }
# rotated R TOOL...: the tools, rotated by R, so each tool goes first in some repetition
rotated() {
    local r=$1; shift
    local i k=$#
    local t=("$@")
    for ((i = 0; i < k; i++)); do echo "${t[$(((i + r) % k))]}"; done
}
in_list() { # WORD LIST...: is WORD one of LIST?
    local w=$1 x; shift
    for x in "$@"; do [[ $x == "$w" ]] && return 0; done
    return 1
}

# fresh_dest TOOL SRC DST UNISON_DIR INODES: empty destination, no archive/state for this pair.
# BENCH_FS=loop: the previous destination's filesystem is unmounted and deleted,
# and DST becomes a freshly made ext4 filesystem of its own (all untimed).
fresh_dest() {
    local tool=$1 src=$2 dst=$3 udir=$4 inodes=$5
    if [[ $BENCH_FS == loop ]]; then
        if [[ -n ${LOOPDEV[$dst]:-} ]]; then loop_umount "$dst" later; fi
        rm -rf --one-file-system "$dst"
        loop_mount "$dst" "$inodes"
    else
        rm -rf "$dst"
        mkdir -p "$dst"
    fi
    case $tool in
        weave) rm -rf "$src/.weave" ;;    # A must be fresh too: no index, no replica id
        unison) rm -rf "$udir"; mkdir -p "$udir" ;;
    esac
}

drop_dest() { # DST: remove a destination (and its filesystem) no longer needed
    if [[ -n ${LOOPDEV[$1]:-} ]]; then loop_umount "$1"; fi
    rm -rf --one-file-system "$1"
}

verify() { # SRC DST LABEL: destination must equal source (tool state excluded)
    [[ $VERIFY == 1 ]] || return 0
    if ! diff -rq --exclude=.weave "$1" "$2" >"$LOGS/diff.log" 2>&1; then
        anomaly "$3: destination differs from source: $(head -n 5 "$LOGS/diff.log" | tr '\n' ' ')"
    fi
}

settle() { # weave re-reads files whose mtime is within the last second (racy-stat guard)
    sleep 1.1
}

# initial_copy WL SRC REPS KEY INODES TOOL...: REPS timed initial copies per tool into fresh dests.
# The last repetition leaves each tool's pair synced (input to the no-change
# reruns); the destinations of tools that have no no-change reruns are dropped.
initial_copy() {
    local wl=$1 src=$2 reps=$3 key=$4 inodes=$5 r tool
    shift 5
    local tools=("$@")
    for ((r = 0; r < reps; r++)); do
        while read -r tool; do
            fresh_dest "$tool" "$src" "$BENCH_DIR/$wl-$tool" "$BENCH_DIR/unison-$wl" "$inodes"
            measure "$key.$tool" "$tool" "$src" "$BENCH_DIR/$wl-$tool" "$BENCH_DIR/unison-$wl" || true
        done < <(rotated "$r" "${tools[@]}")
    done
    for tool in "${tools[@]}"; do
        if [[ -z ${FAILED[$key.$tool]:-} ]]; then verify "$src" "$BENCH_DIR/$wl-$tool" "$key $tool"; fi
        if ! in_list "$tool" "${TOOLS_NC[@]}"; then drop_dest "$BENCH_DIR/$wl-$tool"; fi
    done
}

nochange() { # WL SRC REPS KEY: timed reruns on the already-synced pairs
    local wl=$1 src=$2 reps=$3 key=$4 r tool
    settle
    for ((r = 0; r < reps; r++)); do
        while read -r tool; do
            measure "$key.$tool" "$tool" "$src" "$BENCH_DIR/$wl-$tool" "$BENCH_DIR/unison-$wl" || true
        done < <(rotated "$r" "${TOOLS_NC[@]}")
    done
}

# dd_write DIR MIB: set DD_SECS to the seconds a `dd conv=fdatasync` of MIB MiB
# of zeros takes in DIR; the file is deleted by purge_images (see there: not right away)
dd_write() {
    local f=$1/dd-reference.tmp t0 t1
    sync
    t0=$(date +%s%N)
    dd if=/dev/zero of="$f" bs=1M count="$2" conv=fdatasync status=none
    t1=$(date +%s%N)
    TRASH+=("$f")
    DD_SECS=$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.2f", d/1e9}')
}
dd_line() { # SECS MIB
    awk -v s="$1" -v m="$2" 'BEGIN{ printf "%s MiB in %.2f s = %.0f MiB/s", m, s, (s > 0 ? m/s : 0) }'
}

# ---------------------------------------------------------------- run
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
busy_pct() { # share of the machine's CPU busy over 1 s, while this script only sleeps
    local c0 c1; c0=$(busy_ticks); sleep 1; c1=$(busy_ticks)
    awk -v b=$((c1 - c0)) -v hz="$HZ" -v n="$(nproc)" 'BEGIN{printf "%.0f", 100*b/hz/n}'
}
BUSY_START=$(busy_pct)
if ((BUSY_START > 10)); then
    note "warning: the machine is ${BUSY_START}% busy before the benchmark; other processes will skew the timings"
fi
DATE=$(date +%Y-%m-%d)
STAMP=$(date +%Y-%m-%dT%H:%M:%S%z)

# reference: how fast this disk takes a durable write of (a)'s size (untimed
# w.r.t. the tools). With BENCH_FS=loop: once into a fresh image like the
# destinations, and once into BENCH_DIR's own filesystem; neither into blocks
# freed just before (see purge_images).
note "reference write: dd conv=fdatasync of $A_MIB MiB"
DD_LOOP=""
if [[ $BENCH_FS == loop ]]; then
    loop_mount "$BENCH_DIR/ddtest" "$A_INODES"
    dd_write "$BENCH_DIR/ddtest" "$A_MIB"
    DD_LOOP=$DD_SECS
    TRASH=() # the file goes with the image
    loop_umount "$BENCH_DIR/ddtest" later
    rmdir "$BENCH_DIR/ddtest"
fi
dd_write "$BENCH_DIR" "$A_MIB"
DD_HOST=$DD_SECS

A_SRC=$SRC_ROOT/A C_SRC=$SRC_ROOT/C
if want a || want b; then
    note "generating (a) data: $A_FILES x $A_SIZE B in $A_DIRS dirs + $A_BIG x $A_BIG_SIZE B"
    python3 "$HERE/gen.py" "$A_SRC" --files "$A_FILES" --dirs "$A_DIRS" --size "$A_SIZE" \
        --big-files "$A_BIG" --big-size "$A_BIG_SIZE" --seed 1
    settle
    if want a; then
        note "(a) initial copy, $REPS_A repetitions"
        initial_copy a "$A_SRC" "$REPS_A" a "$A_INODES" "${TOOLS_INIT[@]}"
    else
        note "(a) not selected: one untimed initial copy per tool as setup for (b)"
        initial_copy a "$A_SRC" 1 a-setup "$A_INODES" "${TOOLS_NC[@]}"
    fi
    if want b; then
        note "(b) no-change rerun, $REPS_NC repetitions"
        nochange a "$A_SRC" "$REPS_NC" b
    fi
    # free the space before (c)
    for t in "${TOOLS_INIT[@]}"; do drop_dest "$BENCH_DIR/a-$t"; done
    rm -rf "$A_SRC" "$BENCH_DIR/unison-a"
fi
purge_images

if want c; then
    note "generating (c) data: $C_FILES x $C_SIZE B in $C_DIRS dirs"
    python3 "$HERE/gen.py" "$C_SRC" --files "$C_FILES" --dirs "$C_DIRS" --size "$C_SIZE" --seed 3
    settle
    note "(c0) initial copy of the many-small-files tree (1 run each)"
    initial_copy c "$C_SRC" 1 c0 "$C_INODES" "${TOOLS_INIT[@]}"
    note "(c) no-change rerun, $REPS_NC repetitions"
    nochange c "$C_SRC" "$REPS_NC" c
fi
ELAPSED=$(($(date +%s) - START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_END=$(busy_pct)

# ---------------------------------------------------------------- report
mib() { [[ -n $1 ]] && awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}' || echo "-"; }
cell() { # KEY -> median seconds or FAIL or -
    if [[ -n ${FAILED[$1]:-} ]]; then echo "FAIL (${FAILED[$1]})"; return; fi
    local m; m=$(median ${TIMES[$1]:-}); echo "${m:--}"
}
ratio() { # KEY [OTHER]: weave/OTHER (default rsync)
    local w r o=${2:-rsync}
    w=$(median ${TIMES[$1.weave]:-}); r=$(median ${TIMES[$1.$o]:-})
    [[ -n $w && -n $r && -z ${FAILED[$1.weave]:-} && -z ${FAILED[$1.$o]:-} ]] || { echo "-"; return; }
    awk -v w="$w" -v r="$r" 'BEGIN{ if (r > 0) printf "%.2f", w/r; else print "-" }'
}
goal() { # KEY MAXRATIO LABEL
    local w r
    w=$(median ${TIMES[$1.weave]:-}); r=$(median ${TIMES[$1.rsync]:-})
    [[ -n $w && -n $r ]] || return 0
    if awk -v w="$w" -v r="$r" -v k="$2" 'BEGIN{ exit !(w <= k*r) }'; then
        echo "- $3: met (weave ${w}s vs rsync ${r}s)"
    else
        echo "- $3: **MISSED** (weave ${w}s vs rsync ${r}s)"
        ANOMALIES+=("goal missed: $3 (weave ${w}s vs rsync ${r}s)")
    fi
}
durable() { # KEY LABEL: informational, weave vs rsync -a --fsync
    local w r
    w=$(median ${TIMES[$1.weave]:-}); r=$(median ${TIMES[$1.rsync-fsync]:-})
    [[ -n $w && -n $r ]] || return 0
    echo "- $2: weave ${w}s vs rsync --fsync ${r}s, ratio $(ratio "$1" rsync-fsync)"
}

slowfirst() { # KEY: flag a first run much slower than the median of the runs (warm-up effects)
    local t first m
    for t in "${TOOLS_NC[@]}"; do
        first=$(echo ${TIMES[$1.$t]:-} | awk '{print $1}')
        m=$(median ${TIMES[$1.$t]:-})
        [[ -n $first && -n $m ]] || continue
        if awk -v f="$first" -v m="$m" 'BEGIN{ exit !(f > 2*m && f - m > 0.02) }'; then
            ANOMALIES+=("$1: the first $t run took ${first}s, the median is ${m}s")
        fi
    done
}

declare -A SHORT=([a]="(a) initial copy" [b]="(b) no-change reruns" [b1]="(b1) first no-change rerun"
    [c0]="(c0) initial copy, many small files" [c]="(c) no-change reruns" [c1]="(c1) first no-change rerun")
declare -A LABEL=(
    [a]="(a) initial copy: $A_FILES x 4 KiB in $A_DIRS dirs + $A_BIG x $(mib $((A_BIG_SIZE / 1024))) MiB"
    [b]="(b) no-change rerun of (a)'s tree (median)"
    [b1]="(b1) first no-change rerun right after (a) (1 run)"
    [c0]="(c0) initial copy: $C_FILES x 1 KiB in $C_DIRS dirs (1 run)"
    [c]="(c) no-change rerun: $C_FILES x 1 KiB in $C_DIRS dirs (median)"
    [c1]="(c1) first no-change rerun right after (c0) (1 run)"
)
# b1/c1: the first of the no-change reruns, i.e. literally the second sync of the pair
for k in b c; do
    for t in "${TOOLS_NC[@]}"; do
        if [[ -n ${TIMES[$k.$t]:-} ]]; then
            TIMES[${k}1.$t]=$(echo ${TIMES[$k.$t]} | awk '{print $1}')
            RSS[${k}1.$t]=$(echo ${RSS[$k.$t]} | awk '{print $1}')
        fi
    done
done
if [[ $BENCH_FS == loop ]]; then
    FS_LINE="filesystems: BENCH_FS=loop: the sources on one loop-mounted ext4 image; every timed initial copy (a, c0) writes into its own freshly made ext4 image (sparse $((IMG_MIB / 1024)) GiB, mkfs.ext4 -N inodes for twice the files, inode tables and journal initialised by mkfs, loop device with direct I/O $LOOP_DIO), unmounted after the run and deleted at the end of the workload; the no-change reruns (b, c) use the last initial copy's destination; images in BENCH_DIR on $HOST_FS"
else
    FS_LINE="filesystems: BENCH_FS=plain ($FS_WHY): sources and destinations directly in BENCH_DIR on $HOST_FS, destinations deleted and recreated there between repetitions; initial-copy times (a, c0) can vary several-fold from run to run (ext4 inode allocation after mass deletes)"
fi
if [[ -n $DD_LOOP ]]; then
    DD_REF="reference durable write (\`dd if=/dev/zero bs=1M conv=fdatasync\`, the size of (a)'s data; bounds any durable copy of (a)): $(dd_line "$DD_LOOP" "$A_MIB") into a fresh loop ext4 image like the destinations; $(dd_line "$DD_HOST" "$A_MIB") into BENCH_DIR's $HOST_FS"
else
    DD_REF="reference durable write (\`dd if=/dev/zero bs=1M conv=fdatasync\`, the size of (a)'s data; bounds any durable copy of (a)): $(dd_line "$DD_HOST" "$A_MIB") into BENCH_DIR's $HOST_FS"
fi
if [[ $HAVE_FSYNC == 0 ]]; then
    FSYNC_NOTE="rsync has no --fsync (needs rsync >= 3.2): the durable comparison is left out"
fi
REPORT=$(
    echo "# weave benchmark, $STAMP"
    echo
    echo "weave: \`$WEAVE\` ($("$WEAVE" --version 2>/dev/null || echo '?'), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n $(git -C "$ROOT" status --porcelain -- crates 2>/dev/null) ]] && echo ', crates/ has uncommitted changes'))"
    echo "$(rsync --version | head -n 1); $(unison -version 2>/dev/null | head -n 1)"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), BENCH_DIR=$BENCH_DIR on $HOST_FS"
    echo "mode: $([[ $QUICK == 1 ]] && echo 'QUICK=1 (workloads /10)' || echo full); medians of $REPS_A runs (a) and $REPS_NC runs (b, c); page cache warm; total ${ELAPSED}s"
    echo "$FS_LINE"
    echo "$DD_REF"
    [[ $HAVE_FSYNC == 0 ]] && echo "$FSYNC_NOTE"
    echo "other work: CPU ${BUSY_START}% busy (of $(nproc) cores) in the second before the start, ${BUSY_END}% after the end; load average $LOAD_START at start (lags a minute: includes the build), $LOAD_END at the end"
    echo
    if [[ $HAVE_FSYNC == 1 ]]; then
        echo "| workload | weave (s) | rsync (s) | rsync --fsync (s) | unison (s) | weave/rsync ratio | weave/rsync --fsync ratio |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
    else
        echo "| workload | weave (s) | rsync (s) | unison (s) | weave/rsync ratio |"
        echo "|---|---:|---:|---:|---:|"
    fi
    for k in a b b1 c0 c c1; do
        [[ -n ${TIMES[$k.weave]:-}${TIMES[$k.rsync]:-}${FAILED[$k.weave]:-}${FAILED[$k.rsync]:-} ]] || continue
        if [[ $HAVE_FSYNC == 1 ]]; then
            case $k in a | c0) f=$(cell "$k.rsync-fsync") fr=$(ratio "$k" rsync-fsync) ;; *) f="-" fr="-" ;; esac
            echo "| ${LABEL[$k]} | $(cell $k.weave) | $(cell $k.rsync) | $f | $(cell $k.unison) | $(ratio $k) | $fr |"
        else
            echo "| ${LABEL[$k]} | $(cell $k.weave) | $(cell $k.rsync) | $(cell $k.unison) | $(ratio $k) |"
        fi
    done
    echo
    echo "Peak memory (max RSS over the runs, MiB; GNU time %M):"
    echo
    if [[ $HAVE_FSYNC == 1 ]]; then
        echo "| workload | weave | rsync | rsync --fsync | unison |"
        echo "|---|---:|---:|---:|---:|"
    else
        echo "| workload | weave | rsync | unison |"
        echo "|---|---:|---:|---:|"
    fi
    for k in a b b1 c0 c c1; do
        [[ -n ${RSS[$k.weave]:-}${RSS[$k.rsync]:-} ]] || continue
        f=""
        [[ $HAVE_FSYNC == 1 ]] && f=" $(mib "$(maxof ${RSS[$k.rsync-fsync]:-})") |"
        echo "| ${SHORT[$k]} | $(mib "$(maxof ${RSS[$k.weave]:-})") | $(mib "$(maxof ${RSS[$k.rsync]:-})") |$f $(mib "$(maxof ${RSS[$k.unison]:-})") |"
    done
    echo
    [[ -n ${RSS[a.weave]:-} ]] && echo "weave peak RSS (a, initial copy): $(mib "$(maxof ${RSS[a.weave]})") MiB"
    [[ -n ${RSS[c.weave]:-} ]] && echo "weave peak RSS (c, no-change reruns): $(mib "$(maxof ${RSS[c.weave]})") MiB"
    [[ -n ${RSS[c0.weave]:-} ]] && echo "weave peak RSS (c0, initial copy of the same tree): $(mib "$(maxof ${RSS[c0.weave]})") MiB"
    echo
    echo "Goals (against plain \`rsync -a\`):"
    echo
    [[ -n ${TIMES[a.weave]:-} ]] && goal a 1 "(a) weave no slower than rsync"
    [[ -n ${TIMES[b.weave]:-} ]] && goal b 0.5 "(b) weave at most half of rsync, median of the reruns"
    [[ -n ${TIMES[b1.weave]:-} ]] && goal b1 0.5 "(b) weave at most half of rsync, first rerun only"
    [[ -n ${TIMES[c.weave]:-} ]] && goal c 0.5 "(c) weave at most half of rsync, median of the reruns"
    [[ -n ${TIMES[c1.weave]:-} ]] && goal c1 0.5 "(c) weave at most half of rsync, first rerun only"
    if [[ -n ${RSS[c.weave]:-} ]]; then
        p=$(maxof ${RSS[c.weave]})
        if ((p < 150 * 1024)); then echo "- (c) weave peak RSS < 150 MiB: met ($(mib "$p") MiB)"
        else echo "- (c) weave peak RSS < 150 MiB: **MISSED** ($(mib "$p") MiB)"; fi
    fi
    if [[ -n ${TIMES[a.rsync-fsync]:-}${TIMES[c0.rsync-fsync]:-} ]]; then
        echo
        echo "Durable copies (informational, not a goal: weave makes every file durable before renaming it into place, \`rsync -a --fsync\` fsyncs every file it writes, plain \`rsync -a\` flushes nothing):"
        echo
        durable a "(a) initial copy"
        durable c0 "(c0) initial copy, many small files"
    fi
    echo
    for k in b c; do slowfirst $k; done
    echo "Raw times (s), in run order; with each run's max RSS, the CPU time of kernel threads and interrupts during it (mostly I/O the tool caused), and the CPU time the machine spent on other work during it:"
    echo
    for k in a b c0 c; do
        for tool in "${TOOLS_INIT[@]}"; do
            [[ -n ${TIMES[$k.$tool]:-} ]] && echo "- $k $tool:${TIMES[$k.$tool]}  (max RSS MiB:$(for x in ${RSS[$k.$tool]}; do printf ' %d' $((x / 1024)); done); kernel threads CPU s:${KCPU[$k.$tool]}; other CPU s:${OTHER[$k.$tool]})"
        done
    done
    if ((${#ANOMALIES[@]})); then
        echo
        echo "Anomalies:"
        echo
        for x in "${ANOMALIES[@]}"; do echo "- $x"; done
    fi
    true
)
echo
echo "$REPORT"
mkdir -p "$OUT_DIR"
suffix=""; if [[ $QUICK == 1 ]]; then suffix=-quick; fi
OUT=$OUT_DIR/results-$DATE$suffix.md
[[ -e $OUT ]] && OUT=$OUT_DIR/results-$(date +%Y-%m-%d-%H%M%S)$suffix.md
echo "$REPORT" >"$OUT"
echo
echo "written to $OUT"
if ((${#FAILED[@]})); then exit 1; fi
