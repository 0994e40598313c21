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

# (a)/(b): 10,000 x 4 KiB in 100 dirs + 8 x 64 MiB;  (c): 100,000 x 1 KiB in 1000 dirs.
if [[ $QUICK == 1 ]]; then div=10; else div=1; fi
A_FILES=$((10000 / div)) A_DIRS=$((100 / div)) A_SIZE=4096
A_BIG=8 A_BIG_SIZE=$((64 * 1024 * 1024 / div))
C_FILES=$((100000 / div)) C_DIRS=$((1000 / div)) C_SIZE=1024

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

TOOLS=(weave rsync unison)
declare -A TIMES=() RSS=() FAILED=() RUNS=() OTHER=()
HZ=$(getconf CLK_TCK)
ANOMALIES=()

# ---------------------------------------------------------------- workdir
case $BENCH_DIR in "" | / | "$HOME" | "$ROOT" | "$ROOT"/*) echo "refusing BENCH_DIR=$BENCH_DIR" >&2; exit 2 ;; esac
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/logs"
LOGS=$BENCH_DIR/logs
cleanup() { # keep the workdir (logs, trees) when a tool failed, or with KEEP=1
    if [[ $KEEP != 1 && ${#FAILED[@]} == 0 ]]; then rm -rf "$BENCH_DIR"; else echo "# kept $BENCH_DIR" >&2; fi
}
trap cleanup EXIT

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
    c0=$(busy_ticks)
    t0=$(date +%s%N)
    /usr/bin/time -f '%U %S %M' -o "$rssf" "${CMD[@]}" </dev/null >"$log" 2>&1 || rc=$?
    t1=$(date +%s%N)
    c1=$(busy_ticks)
    if [[ $rc != 0 ]]; then
        FAILED[$key]="exit $rc"
        anomaly "$tool failed (exit $rc) in $key run $n: ${CMD[*]}"
        echo "----- output of the failed run ($log) -----" >&2
        tail -n 60 "$log" >&2
        echo "-----" >&2
        return 1
    fi
    local secs rss other
    secs=$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d/1e9}')
    read -r _ _ rss < <(tail -n 1 "$rssf")
    # CPU time the whole machine spent outside this tool during the run (other
    # processes, VM steal, kernel writeback threads): a contamination indicator
    other=$(tail -n 1 "$rssf" | awk -v b=$((c1 - c0)) -v hz="$HZ" '{o = b/hz - ($1 + $2); printf "%.2f", (o < 0 ? 0 : o)}')
    TIMES[$key]="${TIMES[$key]:-} $secs"
    RSS[$key]="${RSS[$key]:-} $rss"
    OTHER[$key]="${OTHER[$key]:-} $other"
    if awk -v o="$other" -v s="$secs" 'BEGIN{ exit !(o > 0.1 && o > 0.25*s) }'; then
        anomaly "$key run $n of $tool: ${other}s of CPU went to other work during its ${secs}s (competing load?)"
    fi
    if [[ $tool == weave ]] && ! grep -q '"in_sync": true' "$log"; then
        anomaly "weave reported in_sync != true in $key run $n (see $log)"
    fi
    note "$key run $n: ${secs}s, max RSS $((rss / 1024)) MiB, other CPU ${other}s"
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

median() { # numbers... -> median (3 decimals) or empty
    printf '%s\n' "$@" | { grep . || true; } | sort -g | awk '{a[NR]=$1} END{ if (NR==0) exit;
        if (NR%2) printf "%.3f", a[(NR+1)/2]; else printf "%.3f", (a[NR/2]+a[NR/2+1])/2 }'
}
maxof() { printf '%s\n' "$@" | { grep . || true; } | sort -g | tail -n 1; }
# the tools, rotated by $1, so each tool goes first in some repetition
rotated() { local i k=${#TOOLS[@]}; for ((i = 0; i < k; i++)); do echo "${TOOLS[$(((i + $1) % k))]}"; done; }

# fresh_dest TOOL SRC DST UNISON_DIR: empty destination, no archive/state for this pair
fresh_dest() {
    local tool=$1 src=$2 dst=$3 udir=$4
    rm -rf "$dst"
    mkdir -p "$dst"
    case $tool in
        weave) rm -rf "$src/.weave" ;;    # A must be fresh too: no index, no replica id
        unison) rm -rf "$udir"; mkdir -p "$udir" ;;
    esac
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

# initial_copy WL SRC REPS KEYPREFIX: REPS timed initial copies per tool into fresh dests.
# The last repetition leaves each tool's pair synced (input to the no-change reruns).
initial_copy() {
    local wl=$1 src=$2 reps=$3 key=$4 r tool
    for ((r = 0; r < reps; r++)); do
        while read -r tool; do
            fresh_dest "$tool" "$src" "$BENCH_DIR/$wl-$tool" "$BENCH_DIR/unison-$wl"
            measure "$key.$tool" "$tool" "$src" "$BENCH_DIR/$wl-$tool" "$BENCH_DIR/unison-$wl" || true
        done < <(rotated "$r")
    done
    for tool in "${TOOLS[@]}"; do
        if [[ -z ${FAILED[$key.$tool]:-} ]]; then verify "$src" "$BENCH_DIR/$wl-$tool" "$key $tool"; fi
    done
}

nochange() { # WL SRC REPS KEY: timed reruns on the already-synced pairs
    local wl=$1 src=$2 reps=$3 key=$4 r tool
    settle
    for ((r = 0; r < reps; r++)); do
        while read -r tool; do
            measure "$key.$tool" "$tool" "$src" "$BENCH_DIR/$wl-$tool" "$BENCH_DIR/unison-$wl" || true
        done < <(rotated "$r")
    done
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

if want a || want b; then
    note "generating (a) data: $A_FILES x $A_SIZE B in $A_DIRS dirs + $A_BIG x $A_BIG_SIZE B"
    python3 "$HERE/gen.py" "$BENCH_DIR/A" --files "$A_FILES" --dirs "$A_DIRS" --size "$A_SIZE" \
        --big-files "$A_BIG" --big-size "$A_BIG_SIZE" --seed 1
    settle
    if want a; then
        note "(a) initial copy, $REPS_A repetitions"
        initial_copy a "$BENCH_DIR/A" "$REPS_A" a
    else
        note "(a) not selected: one untimed initial copy per tool as setup for (b)"
        initial_copy a "$BENCH_DIR/A" 1 a-setup
    fi
    if want b; then
        note "(b) no-change rerun, $REPS_NC repetitions"
        nochange a "$BENCH_DIR/A" "$REPS_NC" b
    fi
    # free the space before (c)
    rm -rf "$BENCH_DIR/A" "$BENCH_DIR"/a-* "$BENCH_DIR/unison-a"
fi

if want c; then
    note "generating (c) data: $C_FILES x $C_SIZE B in $C_DIRS dirs"
    python3 "$HERE/gen.py" "$BENCH_DIR/C" --files "$C_FILES" --dirs "$C_DIRS" --size "$C_SIZE" --seed 3
    settle
    note "(c0) initial copy of the many-small-files tree (1 run each)"
    initial_copy c "$BENCH_DIR/C" 1 c0
    note "(c) no-change rerun, $REPS_NC repetitions"
    nochange c "$BENCH_DIR/C" "$REPS_NC" c
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
ratio() { # KEY: weave/rsync
    local w r
    w=$(median ${TIMES[$1.weave]:-}); r=$(median ${TIMES[$1.rsync]:-})
    [[ -n $w && -n $r && -z ${FAILED[$1.weave]:-} ]] || { echo "-"; return; }
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

slowfirst() { # KEY: flag a first run much slower than the median of the runs (warm-up effects)
    local t first m
    for t in "${TOOLS[@]}"; do
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
    for t in "${TOOLS[@]}"; do
        if [[ -n ${TIMES[$k.$t]:-} ]]; then
            TIMES[${k}1.$t]=$(echo ${TIMES[$k.$t]} | awk '{print $1}')
            RSS[${k}1.$t]=$(echo ${RSS[$k.$t]} | awk '{print $1}')
        fi
    done
done
REPORT=$(
    echo "# weave benchmark, $STAMP"
    echo
    echo "weave: \`$WEAVE\` ($("$WEAVE" --version 2>/dev/null || echo '?'), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n $(git -C "$ROOT" status --porcelain -- crates 2>/dev/null) ]] && echo ', crates/ has uncommitted changes'))"
    echo "$(rsync --version | head -n 1); $(unison -version 2>/dev/null | head -n 1)"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), BENCH_DIR=$BENCH_DIR on $(df -T "$BENCH_DIR" | awk 'NR==2{print $2}')"
    echo "mode: $([[ $QUICK == 1 ]] && echo 'QUICK=1 (workloads /10)' || echo full); medians of $REPS_A runs (a) and $REPS_NC runs (b, c); page cache warm; total ${ELAPSED}s"
    echo "other work: CPU ${BUSY_START}% busy (of $(nproc) cores) in the second before the start, ${BUSY_END}% after the end; load average $LOAD_START at start (lags a minute: includes the build), $LOAD_END at the end"
    echo
    echo "| workload | weave (s) | rsync (s) | unison (s) | weave/rsync ratio |"
    echo "|---|---:|---:|---:|---:|"
    for k in a b b1 c0 c c1; do
        [[ -n ${TIMES[$k.weave]:-}${TIMES[$k.rsync]:-}${FAILED[$k.weave]:-}${FAILED[$k.rsync]:-} ]] || continue
        echo "| ${LABEL[$k]} | $(cell $k.weave) | $(cell $k.rsync) | $(cell $k.unison) | $(ratio $k) |"
    done
    echo
    echo "Peak memory (max RSS over the runs, MiB; GNU time %M):"
    echo
    echo "| workload | weave | rsync | unison |"
    echo "|---|---:|---:|---:|"
    for k in a b b1 c0 c c1; do
        [[ -n ${RSS[$k.weave]:-}${RSS[$k.rsync]:-} ]] || continue
        echo "| ${SHORT[$k]} | $(mib "$(maxof ${RSS[$k.weave]:-})") | $(mib "$(maxof ${RSS[$k.rsync]:-})") | $(mib "$(maxof ${RSS[$k.unison]:-})") |"
    done
    echo
    [[ -n ${RSS[a.weave]:-} ]] && echo "weave peak RSS (a, initial copy): $(mib "$(maxof ${RSS[a.weave]})") MiB"
    [[ -n ${RSS[c.weave]:-} ]] && echo "weave peak RSS (c, no-change reruns): $(mib "$(maxof ${RSS[c.weave]})") MiB"
    [[ -n ${RSS[c0.weave]:-} ]] && echo "weave peak RSS (c0, initial copy of the same tree): $(mib "$(maxof ${RSS[c0.weave]})") MiB"
    echo
    echo "Goals:"
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
    echo
    for k in b c; do slowfirst $k; done
    echo "Raw times (s), in run order; with each run's max RSS and the CPU time the machine spent on other work during it:"
    echo
    for k in a b c0 c; do
        for tool in "${TOOLS[@]}"; do
            [[ -n ${TIMES[$k.$tool]:-} ]] && echo "- $k $tool:${TIMES[$k.$tool]}  (max RSS MiB:$(for x in ${RSS[$k.$tool]}; do printf ' %d' $((x / 1024)); done); other CPU s:${OTHER[$k.$tool]})"
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
