#!/usr/bin/env bash
# Arrays of numbers are passed as split words on purpose:
# shellcheck disable=SC2086
# '$NET_DIR' etc. in single quotes are literal text for the report:
# shellcheck disable=SC2016
# Benchmark weave against rsync over ssh: both tools through the same private
# OpenSSH server on 127.0.0.1, with the same ssh client options, and the bytes
# on the wire counted the same way for both (bench/count_pipe.py as the remote
# shell of both: weave --rsh, rsync -e).
#
#   bash bench/net.sh            # all workloads: 1 2 3 4 (about 6-10 minutes on 2 cores)
#   bash bench/net.sh 1 3        # only some of them
#   QUICK=1 bash bench/net.sh    # every workload shrunk (smoke test, ~1 min)
#
# Workloads (random data from seeded PRNGs):
#   1  1 GiB file, synced once (row 1a, one run), then 1 byte changed in the middle: resync
#   2  256 MiB file, synced once (row 2a), then 100 bytes inserted at the start: resync
#   3  the 1 GiB file of workload 1 renamed: weave, plain `rsync -a`, `rsync -a --fuzzy --delete-after`
#   4  initial copy of bench/run.sh's tree (a): 10,000 x 4 KiB + 8 x 64 MiB, into an empty remote dir
#
# Environment:
#   NET_DIR     work directory (default /tmp/weave-net-bench; wiped at start, removed at the end)
#   NET_FS      loop:  local sources and the remote trees on loop-mounted ext4 images, and a
#                      fresh image for every initial copy of workload 4 (needs root)
#               plain: plain directories in NET_DIR
#               default: loop if running as root and a probe mount works, else plain
#   REPS        repetitions of each change in workloads 1-3 (default 3; medians reported)
#   REPS_INIT   repetitions of workload 4's initial copy (default 3)
#   QUICK=1     1 GiB -> 64 MiB, 256 MiB -> 16 MiB, workload 4 divided by 10
#   WEAVE       weave binary (used locally and as --remote-weave); when set, nothing is built
#   WEAVE_LOG   RUST_LOG for the local weave (default debug: phase timings in the logs)
#   REMOTE_LOG=1  diagnosis: run the remote weave through a two-line wrapper script that
#               sets RUST_LOG=$WEAVE_LOG and keeps its stderr, so the report shows the
#               remote side's phase timings too (--remote-weave then names the wrapper,
#               not the binary; off by default)
#   RSYNC_FSYNC=1  workload 4 also runs rsync with its data made durable, as weave's is when it
#               returns: `rsync -a --fsync` (every file flushed), and `rsync -a` followed by
#               `sync -f` of the remote filesystem; two extra, informational rows (about 13 s
#               more per repetition on 2 cores)
#   TAR_PIPE=0  workload 4 without its reference row: \`tar c | ssh tar x\` through the same remote
#               shell (a plain stream of the tree: the floor for a first copy; on by default)
#   VERIFY=0    skip the cmp / diff -r checks (default: a run whose result differs counts as failed)
#   KEEP=1      keep NET_DIR (logs in NET_DIR/logs)
#
# See bench/README.md ("Over ssh: bench/net.sh") for the method and caveats.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# how this run was started, for the report (before the defaults are filled in)
INVOCATION="$(for v in NET_DIR NET_FS REPS REPS_INIT QUICK WEAVE VERIFY REMOTE_LOG RSYNC_FSYNC TAR_PIPE; do if [[ -n ${!v:-} ]]; then printf '%s=%q ' "$v" "${!v}"; fi; done)bash bench/net.sh${*:+ $*}"
NET_DIR=${NET_DIR:-/tmp/weave-net-bench}
NET_FS=${NET_FS:-}
REPS=${REPS:-3}
REPS_INIT=${REPS_INIT:-3}
QUICK=${QUICK:-0}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}
WEAVE_LOG=${WEAVE_LOG:-debug}
REMOTE_LOG=${REMOTE_LOG:-0}
RSYNC_FSYNC=${RSYNC_FSYNC:-0}
TAR_PIPE=${TAR_PIPE:-1}
OUT_DIR=$HERE/out

WORKLOADS=("$@")
[[ ${#WORKLOADS[@]} -eq 0 ]] && WORKLOADS=(1 2 3 4)
for w in "${WORKLOADS[@]}"; do
    case $w in 1 | 2 | 3 | 4) ;; *) echo "usage: $0 [1] [2] [3] [4]   (unknown workload '$w')" >&2; exit 2 ;; esac
done
want() { local w; for w in "${WORKLOADS[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }
case $NET_FS in "" | loop | plain) ;; *) echo "NET_FS must be loop or plain (got '$NET_FS')" >&2; exit 2 ;; esac

if [[ $QUICK == 1 ]]; then
    BIG=$((64 << 20)) MID=$((16 << 20)) div=10
else
    BIG=$((1 << 30)) MID=$((256 << 20)) div=1
fi
A_FILES=$((10000 / div)) A_DIRS=$((100 / div)) A_SIZE=4096 A_BIG=8 A_BIG_SIZE=$((64 * 1024 * 1024 / div))
A_INODES=$((2 * (A_FILES + A_DIRS + A_BIG + 16) + 16384))
INSERT=100 # bytes inserted at the start of workload 2's file

# ---------------------------------------------------------------- tools
for t in rsync ssh ssh-keygen /usr/sbin/sshd python3 cmp diff; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y rsync openssh-client openssh-server python3 diffutils)" >&2; exit 2; }
done
PY=$(command -v /usr/bin/python3 || command -v python3) # not a pyenv shim: it is started once per session
if [[ -z ${WEAVE:-} ]]; then
    echo "# building weave (cargo build --release -p weave)" >&2
    (cd "$ROOT" && cargo build --release -p weave) >&2
    WEAVE=$ROOT/target/release/weave
fi
[[ -x $WEAVE ]] || { echo "weave binary not found at $WEAVE" >&2; exit 2; }
WEAVE=$(realpath "$WEAVE")

# ---------------------------------------------------------------- workdir
case $NET_DIR in "" | / | "$HOME" | "$ROOT" | "$ROOT"/*) echo "refusing NET_DIR=$NET_DIR" >&2; exit 2 ;; esac
NET_DIR=$(realpath -m "$NET_DIR")
for p in "$NET_DIR" "$HERE" "$WEAVE"; do
    # weave and rsync split the remote-shell command on whitespace
    [[ $p != *[[:space:]]* ]] || { echo "paths must not contain whitespace: '$p'" >&2; exit 2; }
done
IMG_DIR=$NET_DIR/img
LOGS=$NET_DIR/logs
SSHD_DIR=$NET_DIR/ssh

note() { echo "# $*" >&2; }
ANOMALIES=()
anomaly() { ANOMALIES+=("$*"); echo "!! $*" >&2; }

# ---------------------------------------------------------------- loop-mounted ext4 images (as bench/run.sh)
declare -A LOOPDEV=() LOOPIMG=()
IMG_SEQ=0
MKFS_OPTS=(-q -F -E 'lazy_itable_init=0,lazy_journal_init=0,nodiscard')
loop_mount() { # DIR INODES MIB: a fresh ext4 image mounted at DIR (empty), untimed
    local dir=$1 inodes=$2 mib=$3 img dev
    IMG_SEQ=$((IMG_SEQ + 1))
    img=$IMG_DIR/$(basename "$dir").$IMG_SEQ.img
    mkdir -p "$IMG_DIR" "$dir" || return 1
    truncate -s "${mib}M" "$img" || return 1
    LOOPIMG[$dir]=$img
    mkfs.ext4 "${MKFS_OPTS[@]}" -N "$inodes" "$img" >"$LOGS/mkfs.log" 2>&1 || { cat "$LOGS/mkfs.log" >&2; return 1; }
    dev=$(losetup --find --show --direct-io=on "$img" 2>/dev/null) || dev=$(losetup --find --show "$img") || return 1
    LOOPDEV[$dir]=$dev
    mount -t ext4 "$dev" "$dir" || return 1
    rmdir "$dir/lost+found" || return 1
}
TRASH=() # images deleted between timed runs (after a sync), never just before one writes into freed blocks
loop_umount() { # DIR [later]
    local dir=$1 later=${2:-} dev=${LOOPDEV[$1]:-} img=${LOOPIMG[$1]:-}
    if mountpoint -q "$dir"; then umount "$dir" 2>/dev/null || { sleep 1; umount "$dir"; } || return 1; fi
    if [[ -n $dev ]]; then losetup -d "$dev" || return 1; fi
    unset 'LOOPDEV[$dir]'
    if [[ -n $img && -n $later ]]; then TRASH+=("$img"); elif [[ -n $img ]]; then rm -f "$img"; fi
    unset 'LOOPIMG[$dir]'
}
purge_images() { local f; for f in "${TRASH[@]}"; do rm -f "$f"; done; TRASH=(); }
unmount_all() {
    local d dev img
    for d in "${!LOOPDEV[@]}"; do loop_umount "$d" || true; done
    purge_images
    [[ -d $NET_DIR ]] || return 0
    while read -r d; do
        umount "$d" 2>/dev/null || { sleep 1; umount "$d"; } || umount -l "$d" || true
    done < <(findmnt -rn -o TARGET 2>/dev/null | grep -F "$NET_DIR/" | sort -r || true)
    for img in "$IMG_DIR"/*.img; do
        [[ -e $img ]] || continue
        for dev in $(losetup -n -O NAME -j "$img" 2>/dev/null); do losetup -d "$dev" || true; done
    done
}
still_mounted() { findmnt -rn -o TARGET 2>/dev/null | grep -F "$NET_DIR/" >/dev/null; }
HAVE_LOOPTOOLS=0
command -v findmnt >/dev/null && command -v losetup >/dev/null && HAVE_LOOPTOOLS=1
if [[ $HAVE_LOOPTOOLS == 1 ]]; then unmount_all; fi
if [[ $HAVE_LOOPTOOLS == 1 ]] && still_mounted; then echo "cannot unmount what is mounted under $NET_DIR" >&2; exit 2; fi
rm -rf --one-file-system "$NET_DIR"
mkdir -p "$LOGS"

# ---------------------------------------------------------------- cleanup: sshd, mounts, workdir
SSHD_PID=""
declare -A FAILED=()
cleanup() {
    local keep=""
    if [[ -n $SSHD_PID ]]; then
        kill "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
        SSHD_PID=""
    fi
    if [[ $KEEP == 1 || ${#FAILED[@]} != 0 ]]; then keep=1; fi
    if [[ $HAVE_LOOPTOOLS == 1 ]]; then
        if [[ -n $keep ]]; then for d in "${!LOOPIMG[@]}"; do unset 'LOOPIMG[$d]'; done; fi
        unmount_all
        if still_mounted; then echo "!! still mounted under $NET_DIR" >&2; keep=1; fi
    fi
    if [[ -z $keep ]]; then rm -rf --one-file-system "$NET_DIR"; else echo "# kept $NET_DIR (logs in $LOGS)" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- filesystem mode
FS_WHY=""
probe_loop() {
    local t
    if [[ $EUID != 0 ]]; then FS_WHY="not running as root"; return 1; fi
    for t in truncate mkfs.ext4 losetup mount umount mountpoint findmnt; do
        command -v "$t" >/dev/null || { FS_WHY="$t not found"; return 1; }
    done
    if ! loop_mount "$NET_DIR/probe" 1024 64 >"$LOGS/probe.log" 2>&1; then
        FS_WHY="mounting a loop ext4 image failed: $(tail -n 1 "$LOGS/probe.log")"
        unmount_all
        return 1
    fi
    loop_umount "$NET_DIR/probe" && rmdir "$NET_DIR/probe"
}
if [[ $NET_FS != plain ]]; then
    if probe_loop; then NET_FS=loop
    elif [[ $NET_FS == loop ]]; then echo "NET_FS=loop: $FS_WHY" >&2; exit 2
    else NET_FS=plain; note "NET_FS=plain: $FS_WHY"; fi
else
    FS_WHY="NET_FS=plain was asked for"
fi
HOST_FS=$(df -T "$NET_DIR" | awk 'NR==2{print $2}')
SRC=$NET_DIR/src      # local replicas (sources)
RW=$NET_DIR/remote-weave # weave's remote replicas of workloads 1-3
RR=$NET_DIR/remote-rsync # rsync's remote trees of workloads 1-3
# image sizes: the 1 GiB file, the 256 MiB one, and a new copy of the larger being written
TREE_MIB=$(((3 * BIG + 2 * MID) / 1048576 + 1024))
if [[ $NET_FS == loop ]]; then
    loop_mount "$SRC" $((2 * A_INODES)) $((TREE_MIB + 4096))
    loop_mount "$RW" 16384 "$TREE_MIB"
    loop_mount "$RR" 16384 "$TREE_MIB"
else
    mkdir -p "$SRC" "$RW" "$RR"
fi

# ---------------------------------------------------------------- private sshd on 127.0.0.1
mkdir -p "$SSHD_DIR"
mkdir -p /run/sshd 2>/dev/null || true # sshd's privilege-separation directory (compiled in)
ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/id_ed25519"
cp "$SSHD_DIR/id_ed25519.pub" "$SSHD_DIR/authorized_keys"
chmod 600 "$SSHD_DIR/authorized_keys"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$SSHD_DIR/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $PORT
HostKey $SSHD_DIR/host_ed25519
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
CFG
/usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config"
/usr/sbin/sshd -D -e -f "$SSHD_DIR/sshd_config" 2>"$SSHD_DIR/sshd.log" &
SSHD_PID=$!
# the same client options for both tools; -F /dev/null: no user or system ssh_config
SSH="ssh -F /dev/null -p $PORT -i $SSHD_DIR/id_ed25519 -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -o Compression=no"
RSH="$PY $HERE/count_pipe.py $SSH"
HOST=127.0.0.1
up=0
for _ in $(seq 100); do
    if $SSH "$HOST" true 2>/dev/null; then up=1; break; fi
    kill -0 "$SSHD_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ $up != 1 ]]; then echo "sshd did not come up:" >&2; cat "$SSHD_DIR/sshd.log" >&2; exit 2; fi
CIPHER=$($SSH -v "$HOST" true 2>&1 | sed -n 's/.*debug1: kex: server->client cipher: \([^ ]*\) MAC: \([^ ]*\).*/\1 (MAC \2)/p' | head -n 1)
note "sshd pid $SSHD_PID on $HOST:$PORT; cipher ${CIPHER:-?}"

# ---------------------------------------------------------------- measuring
REMOTE_WEAVE=$WEAVE
if [[ $REMOTE_LOG == 1 ]]; then
    # "remote" is this machine: the wrapper's log is moved to the run's logs after each run
    REMOTE_WEAVE=$NET_DIR/weave-remote-log
    printf '#!/bin/sh\nRUST_LOG=%q exec %q "$@" 2>>%q\n' "$WEAVE_LOG" "$WEAVE" "$LOGS/remote-weave.err" >"$REMOTE_WEAVE"
    chmod +x "$REMOTE_WEAVE"
fi
HZ=$(getconf CLK_TCK)
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
declare -A TIMES=() BYTES=() SENT=() RECV=() JBYTES=() MCPU=() RELAY=() RUNS=() CMDS=()

# tool_cmd TOOL LOCAL REMOTE: the command (array CMD) syncing the local tree LOCAL with REMOTE on $HOST
tool_cmd() {
    local tool=$1 l=$2 r=$3
    case $tool in
        weave) CMD=("$WEAVE" sync --json --rsh "$RSH" --remote-weave "$REMOTE_WEAVE" "$l" "$HOST:$r") ;;
        rsync) CMD=(rsync -a -e "$RSH" --exclude=/.weave "$l/" "$HOST:$r/") ;;
        rsync-fuzzy) CMD=(rsync -a --fuzzy --delete-after -e "$RSH" --exclude=/.weave "$l/" "$HOST:$r/") ;;
        rsync-fsync) CMD=(rsync -a --fsync -e "$RSH" --exclude=/.weave "$l/" "$HOST:$r/") ;;
        # the "remote" is this machine: its filesystem is synced directly
        rsync-sync) CMD=(bash -c 'rsync -a -e "$1" --exclude=/.weave "$2/" "$3:$4/" && sync -f "$4"' rsync-sync "$RSH" "$l" "$HOST" "$r") ;;
        # the tree as one plain stream through the same remote shell ($1 split into words, as
        # rsync -e and weave --rsh split it): no checks, no temporaries, nothing flushed
        tar) CMD=(bash -c 'set -o pipefail; tar cf - --exclude=./.weave -C "$2" . | $1 "$3" "tar xf - -C $4"' tar "$RSH" "$l" "$HOST" "$r") ;;
    esac
}
# the same, as shown in the report (long paths abbreviated)
show_cmd() {
    local s
    s=$(printf '%q ' "${CMD[@]}")
    s=${s//"$(printf '%q' "$RSH")"/'"$RSH"'}
    s=${s//"$WEAVE"/'$WEAVE'}
    s=${s//"$NET_DIR"/'$NET_DIR'}
    echo "${s% }"
}

# measure KEY TOOL LOCAL REMOTE: one timed run. Appends seconds to TIMES[KEY.TOOL],
# bytes through the remote shell (sent+received, all sessions) to BYTES[...].
measure() {
    local key=$1 tool=$2 l=$3 r=$4 k=$1.$2
    [[ -n ${FAILED[$k]:-} ]] && return 1
    tool_cmd "$tool" "$l" "$r"
    CMDS[$k]=$(show_cmd)
    local n=$((${RUNS[$k]:-0} + 1))
    RUNS[$k]=$n
    local base=$LOGS/$k.$n
    : >"$base.wire"
    printf '%q ' "${CMD[@]}" >"$base.cmd"
    sync # no tool pays for writeback another left behind (weave's syncfs would)
    local t0 t1 c0 c1 rc=0
    c0=$(busy_ticks)
    t0=$(date +%s%N)
    COUNT_PIPE_LOG=$base.wire RUST_LOG=$WEAVE_LOG "${CMD[@]}" </dev/null >"$base.out" 2>"$base.err" || rc=$?
    t1=$(date +%s%N)
    c1=$(busy_ticks)
    if [[ -e $LOGS/remote-weave.err ]]; then mv "$LOGS/remote-weave.err" "$base.remote.err"; fi
    if [[ $rc != 0 ]]; then
        FAILED[$k]="exit $rc: \`$(printf '%q ' "${CMD[@]}")\`: $(tail -n 3 "$base.err" | tr '\n' ' ')"
        anomaly "$tool failed (exit $rc) in $key run $n: ${CMD[*]}"
        echo "----- stderr of the failed run ($base.err) -----" >&2
        tail -n 40 "$base.err" >&2
        echo "-----" >&2
        return 1
    fi
    local sessions sent recv relay secs cpu
    read -r sessions sent recv relay < <(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] } n++ }
        END { printf "%d %d %d %.3f\n", n, v["sent"], v["received"], v["relay_cpu"] }' "$base.wire")
    if ((sessions == 0)); then
        FAILED[$k]="no ssh session was logged by count_pipe.py in run $n"
        anomaly "$key run $n of $tool: ${FAILED[$k]}"
        return 1
    fi
    secs=$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d/1e9}')
    cpu=$(awk -v d=$((c1 - c0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz}')
    TIMES[$k]="${TIMES[$k]:-} $secs"
    BYTES[$k]="${BYTES[$k]:-} $((sent + recv))"
    SENT[$k]="${SENT[$k]:-} $sent"
    RECV[$k]="${RECV[$k]:-} $recv"
    MCPU[$k]="${MCPU[$k]:-} $cpu"
    RELAY[$k]="${RELAY[$k]:-} $relay"
    if [[ $tool == weave ]]; then
        local jb
        jb=$("$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["bytes_on_wire"], j["in_sync"])' "$base.out" 2>/dev/null || echo "? ?")
        JBYTES[$k]="${JBYTES[$k]:-} ${jb% *}"
        [[ ${jb#* } == True ]] || anomaly "weave did not report in_sync=true in $key run $n (see $base.out)"
    fi
    note "$key $tool run $n: ${secs}s, $((sent + recv)) bytes (sent $sent, received $recv, $sessions session(s)), machine CPU ${cpu}s, relay CPU ${relay}s"
}

verify_fail() { # KEY TOOL WHAT
    FAILED[$1.$2]="result differs from the source: $3"
    anomaly "$1 $2: result differs from the source: $3"
}
verify_tree() { # KEY TOOL LOCAL REMOTE
    [[ $VERIFY == 1 && -z ${FAILED[$1.$2]:-} ]] || return 0
    diff -rq --exclude=.weave "$3" "$4" >"$LOGS/diff.log" 2>&1 || verify_fail "$1" "$2" "$(head -n 3 "$LOGS/diff.log" | tr '\n' ' ')"
}
verify_file() { # KEY TOOL A B
    [[ $VERIFY == 1 && -z ${FAILED[$1.$2]:-} ]] || return 0
    cmp "$3" "$4" >"$LOGS/cmp.log" 2>&1 || verify_fail "$1" "$2" "$(head -n 2 "$LOGS/cmp.log" | tr '\n' ' ')"
}

settle() { sleep 1.1; } # weave re-reads files whose mtime is within the last second (racy-stat guard)
rotated() { # R TOOL...: the tools rotated by R, so each goes first in some repetition
    local r=$1; shift
    local i k=$# t=("$@")
    for ((i = 0; i < k; i++)); do echo "${t[$(((i + r) % k))]}"; done
}
median() { # NUMBERS... -> median (times: 3 decimals; integers stay integers), or empty
    printf '%s\n' "$@" | { grep -v '^?*$' || true; } | sort -g | awk '{a[NR]=$1; if ($1 != int($1)) f=1} END{ if (NR==0) exit;
        m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf (f ? "%.3f" : "%.0f"), m }'
}
gen_file() { # PATH BYTES SEED: pseudo-random, deterministic
    "$PY" - "$1" "$2" "$3" <<'PY'
import random, sys
path, left, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with open(path, "wb") as f:
    while left > 0:
        n = min(8 << 20, left)
        f.write(rng.randbytes(n))
        left -= n
PY
}

# ---------------------------------------------------------------- run
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
busy_pct() { local c0 c1; c0=$(busy_ticks); sleep 1; c1=$(busy_ticks)
    awk -v b=$((c1 - c0)) -v hz="$HZ" -v n="$(nproc)" 'BEGIN{printf "%.0f", 100*b/hz/n}'; }
BUSY_START=$(busy_pct)
((BUSY_START <= 10)) || note "warning: the machine is ${BUSY_START}% busy before the benchmark; timings will be skewed"
STAMP=$(date +%Y-%m-%dT%H:%M:%S%z)

# first_sync KEY DIR: untimed-for-the-goals initial copy of SRC/DIR (one run per tool, reported as KEY)
first_sync() {
    local key=$1 d=$2 tool
    settle
    for tool in weave rsync; do
        local rem=$RW; [[ $tool == rsync ]] && rem=$RR
        mkdir -p "$rem/$d"
        measure "$key" "$tool" "$SRC/$d" "$rem/$d" || true
        verify_tree "$key" "$tool" "$SRC/$d" "$rem/$d"
    done
}
# resync KEY DIR FILE REP: one repetition of a change already made to SRC/DIR/FILE, both tools
resync() {
    local key=$1 d=$2 f=$3 r=$4 tool
    settle
    while read -r tool; do
        local rem=$RW; [[ $tool == rsync ]] && rem=$RR
        measure "$key" "$tool" "$SRC/$d" "$rem/$d" || continue
        verify_file "$key" "$tool" "$SRC/$d/$f" "$rem/$d/$f"
        verify_tree "$key" "$tool" "$SRC/$d" "$rem/$d"
    done < <(rotated "$r" weave rsync)
}

BIG_NAME=big.dat
if want 1 || want 3; then
    note "workload 1 setup: $BIG bytes of random data"
    mkdir -p "$SRC/w1"
    gen_file "$SRC/w1/$BIG_NAME" "$BIG" 11
    note "1a: first copy of the $BIG-byte file (one run per tool)"
    first_sync 1a w1
fi
if want 1; then
    for ((r = 0; r < REPS; r++)); do
        # flip one byte in the middle, in place (a different byte each repetition)
        "$PY" -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^0xff])); f.close()' \
            "$SRC/w1/$BIG_NAME" $((BIG / 2 + r * 4097))
        note "1: one byte changed at offset $((BIG / 2 + r * 4097)), repetition $((r + 1))/$REPS"
        resync 1 w1 "$BIG_NAME" "$r"
    done
fi

if want 3; then
    prev=$BIG_NAME
    for ((r = 0; r < REPS; r++)); do
        new=big-renamed-$((r + 1)).dat
        mv "$SRC/w1/$prev" "$SRC/w1/$new"
        note "3: $prev renamed to $new, repetition $((r + 1))/$REPS"
        settle
        order=(weave rsync)
        ((r % 2)) && order=(rsync weave)
        for tool in "${order[@]}"; do
            if [[ $tool == weave ]]; then
                measure 3 weave "$SRC/w1" "$RW/w1" || continue
                verify_tree 3 weave "$SRC/w1" "$RW/w1"
                continue
            fi
            # plain `rsync -a` sends the file again under its new name and keeps the old one
            # (no --delete): only the new file is checked; then the old state is put back
            # (untimed) so that --fuzzy --delete-after starts from the same state
            if measure 3 rsync "$SRC/w1" "$RR/w1"; then
                verify_file 3 rsync "$SRC/w1/$new" "$RR/w1/$new"
            fi
            rm -f "$RR/w1/$new"
            [[ -e $RR/w1/$prev ]] || anomaly "3: $RR/w1/$prev is missing before the --fuzzy run"
            settle
            measure 3 rsync-fuzzy "$SRC/w1" "$RR/w1" || continue
            verify_tree 3 rsync-fuzzy "$SRC/w1" "$RR/w1"
        done
        prev=$new
    done
fi
if want 1 || want 3; then
    rm -rf "$SRC/w1" "$RW/w1" "$RR/w1" # free the space
fi

if want 2; then
    note "workload 2 setup: $MID bytes of random data"
    mkdir -p "$SRC/w2"
    gen_file "$SRC/w2/mid.dat" "$MID" 12
    note "2a: first copy of the $MID-byte file (one run per tool)"
    first_sync 2a w2
    for ((r = 0; r < REPS; r++)); do
        # INSERT random bytes at the start, file rewritten in place
        "$PY" -c 'import random,sys; p=sys.argv[1]; d=open(p,"rb").read(); ins=random.Random(int(sys.argv[3])).randbytes(int(sys.argv[2]));
f=open(p,"r+b"); f.write(ins); f.write(d); f.close()' "$SRC/w2/mid.dat" "$INSERT" $((100 + r))
        note "2: $INSERT bytes inserted at the start, repetition $((r + 1))/$REPS"
        resync 2 w2 mid.dat "$r"
    done
    rm -rf "$SRC/w2" "$RW/w2" "$RR/w2"
fi

if want 4; then
    A=$SRC/A
    note "workload 4 setup: $A_FILES x $A_SIZE B in $A_DIRS dirs + $A_BIG x $A_BIG_SIZE B (bench/gen.py, seed 1)"
    "$PY" "$HERE/gen.py" "$A" --files "$A_FILES" --dirs "$A_DIRS" --size "$A_SIZE" \
        --big-files "$A_BIG" --big-size "$A_BIG_SIZE" --seed 1
    find "$A" -type f -exec cat {} + >/dev/null # warm-up read (page cache cannot be dropped)
    for ((r = 0; r < REPS_INIT; r++)); do
        # The images of earlier repetitions are deleted here, between timed runs, and their
        # blocks released (sync) before the next run: kept to the end, REPS_INIT=15 filled
        # the disk (about 0.6 GB of data each).
        purge_images
        sync
        settle
        while read -r tool; do
            dst=$NET_DIR/init-$tool
            if [[ $NET_FS == loop ]]; then
                [[ -n ${LOOPDEV[$dst]:-} ]] && loop_umount "$dst" later
                rm -rf --one-file-system "$dst"
                loop_mount "$dst" "$A_INODES" 4096
            else
                rm -rf "$dst"
                mkdir -p "$dst"
            fi
            rm -rf "$A/.weave" # a true first copy for weave: no local state either
            measure 4 "$tool" "$A" "$dst" || continue
            verify_tree 4 "$tool" "$A" "$dst"
        done < <(
            tools=(weave rsync)
            [[ $RSYNC_FSYNC == 1 ]] && tools+=(rsync-fsync rsync-sync)
            [[ $TAR_PIPE == 1 ]] && tools+=(tar)
            rotated "$r" "${tools[@]}"
        )
    done
    for tool in weave rsync rsync-fsync rsync-sync tar; do
        dst=$NET_DIR/init-$tool
        [[ -n ${LOOPDEV[$dst]:-} ]] && loop_umount "$dst"
        rm -rf --one-file-system "$dst"
    done
    purge_images
fi
ELAPSED=$(($(date +%s) - START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_END=$(busy_pct)

# ---------------------------------------------------------------- report
phases() { # LOGFILE: the debug lines that carry an elapsed time, on one line
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E 'elapsed' | sed -E 's/^[^ ]+ +DEBUG +//; s/^[a-z_:]+: //' | tr '\n' ';' | sed 's/;$//; s/;/; /g'
}
human() { # BYTES -> "N B" / "N.N KiB" / "N.N MiB"
    [[ -n $1 ]] || { echo "-"; return; }
    awk -v b="$1" 'BEGIN{ if (b < 1024) printf "%d B", b; else if (b < 1048576) printf "%.1f KiB", b/1024;
        else if (b < 1073741824) printf "%.1f MiB", b/1048576; else printf "%.2f GiB", b/1073741824 }'
}
med() { median ${1:-}; }
div() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf (a/b < 0.01 ? "%.4f" : "%.2f"), a/b; else print "-" }' || echo "-"; }
bytes_cell() { if [[ -n ${FAILED[$1]:-} ]]; then echo "FAIL"; else echo "$(med "${BYTES[$1]:-}") ($(human "$(med "${BYTES[$1]:-}")"))"; fi; }
time_cell() { if [[ -n ${FAILED[$1]:-} ]]; then echo "FAIL"; else local m; m=$(med "${TIMES[$1]:-}"); echo "${m:--}"; fi; }
row() { # KEY LABEL OTHER
    local k=$1 o=${3:-rsync} wb rb wt rt
    [[ -n ${TIMES[$k.weave]:-}${TIMES[$k.$o]:-}${FAILED[$k.weave]:-}${FAILED[$k.$o]:-} ]] || return 0
    wb=$(med "${BYTES[$k.weave]:-}") rb=$(med "${BYTES[$k.$o]:-}") wt=$(med "${TIMES[$k.weave]:-}") rt=$(med "${TIMES[$k.$o]:-}")
    [[ -z ${FAILED[$k.weave]:-}${FAILED[$k.$o]:-} ]] || { wb="" wt=""; }
    echo "| $2 | $(bytes_cell "$k.weave") | $(bytes_cell "$k.$o") | $(time_cell "$k.weave") | $(time_cell "$k.$o") | $(div "$wb" "$rb") | $(div "$wt" "$rt") |"
}
goal_bytes() { # KEY LABEL
    local b; b=$(med "${BYTES[$1.weave]:-}")
    [[ -n $b && -z ${FAILED[$1.weave]:-} ]] || { echo "- $2: not measured (weave failed or workload not run)"; return; }
    if awk -v b="$b" 'BEGIN{exit !(b < 102400)}'; then echo "- $2: met ($(human "$b"))"; else echo "- $2: **MISSED** ($(human "$b"))"; ANOMALIES+=("goal missed: $2 ($(human "$b"))"); fi
}
goal_time() { # KEY LABEL
    local w r; w=$(med "${TIMES[$1.weave]:-}") r=$(med "${TIMES[$1.rsync]:-}")
    [[ -n $w && -n $r && -z ${FAILED[$1.weave]:-}${FAILED[$1.rsync]:-} ]] || { echo "- $2: not measured"; return; }
    if awk -v w="$w" -v r="$r" 'BEGIN{exit !(w <= r)}'; then echo "- $2: met (weave ${w}s vs rsync ${r}s)"
    else echo "- $2: **MISSED** (weave ${w}s vs rsync ${r}s, ratio $(div "$w" "$r"))"; ANOMALIES+=("goal missed: $2 (weave ${w}s vs rsync ${r}s)"); fi
}
declare -A LABEL=(
    [1a]="(1a) first copy of a $(human $BIG) file (1 run; setup for 1 and 3)"
    [1]="(1) $(human $BIG) file, 1 byte changed in the middle (median of $REPS)"
    [2a]="(2a) first copy of a $(human $MID) file (1 run; setup for 2)"
    [2]="(2) $(human $MID) file, $INSERT bytes inserted at the start (median of $REPS)"
    [3]="(3) $(human $BIG) file renamed, vs plain \`rsync -a\` (median of $REPS)"
    [3f]="(3) $(human $BIG) file renamed, vs \`rsync -a --fuzzy --delete-after\` (median of $REPS)"
    [4]="(4) initial copy: $A_FILES x 4 KiB in $A_DIRS dirs + $A_BIG x $(human $A_BIG_SIZE), empty remote (median of $REPS_INIT)"
    [4s]="(4) the same, vs \`rsync -a --fsync\` (every file flushed to disk, as weave does; informational, RSYNC_FSYNC=1)"
    [4y]="(4) the same, vs \`rsync -a\` then \`sync -f\` of the remote filesystem (all data on disk when it returns, as with weave; informational, RSYNC_FSYNC=1)"
    [4t]="(4) the same, vs \`tar c \\| ssh tar x\` (the tree as one plain stream: no checks, no temporary files, nothing flushed; the floor of a first copy; informational, TAR_PIPE=1)"
)
if [[ $NET_FS == loop ]]; then
    FS_LINE="filesystems: NET_FS=loop: local sources on one loop-mounted ext4 image, weave's and rsync's remote trees of 1-3 on one image each, and every initial copy of 4 into a freshly made ext4 image (loop devices with direct I/O), all images in NET_DIR on $HOST_FS"
else
    FS_LINE="filesystems: NET_FS=plain ($FS_WHY): everything in NET_DIR on $HOST_FS"
fi
REPORT=$(
    echo "# weave over ssh vs rsync over ssh, $STAMP"
    echo
    echo "weave: \`$WEAVE\` ($("$WEAVE" --version 2>/dev/null || echo '?'), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$([[ -n $(git -C "$ROOT" status --porcelain -- crates 2>/dev/null) ]] && echo ', crates/ has uncommitted changes')), the same binary locally and as --remote-weave"
    echo "$(rsync --version | head -n 1) (both ends); $(ssh -V 2>&1); private sshd on $HOST:$PORT, cipher ${CIPHER:-?}, Compression=no"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); local and \"remote\" on the same machine (ssh to $HOST as $(id -un))"
    echo "mode: $([[ $QUICK == 1 ]] && echo 'QUICK=1 (shrunk)' || echo full); page cache warm; total ${ELAPSED}s; CPU ${BUSY_START}% busy before, ${BUSY_END}% after; load average $LOAD_START at start, $LOAD_END at the end"
    echo "$FS_LINE"
    echo
    echo "Bytes: what each tool wrote into and read out of ssh (its protocol stream before ssh encryption), counted by \`bench/count_pipe.py\` as the remote shell of both tools, sent + received, all sessions of the run. Times: wall clock of the whole command, including ssh connection setup and the remote side's start."
    echo
    echo "| workload | weave bytes | rsync bytes | weave time (s) | rsync time (s) | bytes weave/rsync | time weave/rsync |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for k in 1a 1 2a 2 3; do row "$k" "${LABEL[$k]}"; done
    row 3 "${LABEL[3f]}" rsync-fuzzy
    row 4 "${LABEL[4]}"
    if [[ $RSYNC_FSYNC == 1 ]]; then
        row 4 "${LABEL[4s]}" rsync-fsync
        row 4 "${LABEL[4y]}" rsync-sync
    fi
    [[ $TAR_PIPE == 1 ]] && row 4 "${LABEL[4t]}" tar
    echo
    echo "Goals:"
    echo
    if want 1; then goal_bytes 1 "(1) weave under 100 KiB on the wire"; goal_time 1 "(1) weave no slower than rsync"; fi
    if want 3; then goal_bytes 3 "(3) weave under 100 KiB on the wire for the rename"; fi
    echo
    echo "Commands (\$RSH is the remote shell of both tools; the per-run byte log is given in the environment as COUNT_PIPE_LOG):"
    echo
    echo "    RSH='${RSH//"$NET_DIR"/'$NET_DIR'}'"
    for k in "${!CMDS[@]}"; do echo "$k"; done | sort | while read -r k; do echo "    # $k: ${CMDS[$k]}"; done
    echo
    echo "Reproduce: \`$INVOCATION\` (as root for NET_FS=loop)"
    echo
    echo "Raw figures, in run order (bytes = sent+received through ssh; weave's own --json bytes_on_wire; machine CPU = CPU seconds used by all processes on the machine during the run; relay = count_pipe.py's own CPU):"
    echo
    for k in 1a 1 2a 2 3 4; do
        for t in weave rsync rsync-fuzzy rsync-fsync rsync-sync tar; do
            [[ -n ${TIMES[$k.$t]:-} ]] || continue
            echo "- $k $t: time s:${TIMES[$k.$t]}; bytes:${BYTES[$k.$t]} (sent:${SENT[$k.$t]}; received:${RECV[$k.$t]})$([[ $t == weave ]] && echo "; --json bytes_on_wire:${JBYTES[$k.$t]:-}"); machine CPU s:${MCPU[$k.$t]}; relay CPU s:${RELAY[$k.$t]}"
        done
    done
    echo
    echo "weave phase timings (RUST_LOG=$WEAVE_LOG; $([[ $REMOTE_LOG == 1 ]] && echo "local side, and the remote side through the REMOTE_LOG wrapper" || echo "local side only: the remote side's need REMOTE_LOG=1")):"
    echo
    for k in 1a 1 2a 2 3 4; do
        for ((n = 1; n <= ${RUNS[$k.weave]:-0}; n++)); do
            f=$LOGS/$k.weave.$n.err
            [[ -s $f ]] || continue
            echo "- $k run $n: $(phases "$f")"
            [[ -s $LOGS/$k.weave.$n.remote.err ]] && echo "  - remote side: $(phases "$LOGS/$k.weave.$n.remote.err")"
        done
    done
    if ((${#FAILED[@]})); then
        echo
        echo "Failures:"
        echo
        for k in "${!FAILED[@]}"; do echo "- $k: ${FAILED[$k]}"; done
    fi
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
suffix=""; [[ $QUICK == 1 ]] && suffix=-quick
OUT=$OUT_DIR/net-$(date +%Y-%m-%d-%H%M%S)$suffix.md
echo "$REPORT" >"$OUT"
echo
echo "written to $OUT"
if ((${#FAILED[@]})); then exit 1; fi
