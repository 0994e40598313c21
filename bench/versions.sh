#!/usr/bin/env bash
# Version store figures (issue: version history, restore, backup folders):
#   1. store size for 100 versions of a 64 MiB file, each version with 3
#      random 1 KiB edits, kept by a sync from A to B (B's store);
#      beside it restic's repository for the same 100 versions, if restic
#      is installed (apt-get install restic).
#   2. restore throughput of a 1 GiB version (weave restore --to) as a
#      ratio to cp of the same file, caches dropped by neither (both warm).
#
#   bash bench/versions.sh            # ~3-5 minutes on 2 cores
#   QUICK=1 bash bench/versions.sh    # 16 MiB x 20 versions, 256 MiB restore
#
# Environment: WEAVE (binary; default: cargo build --release), BENCH_DIR
# (default /tmp/weave-versions-bench, removed at the end unless KEEP=1).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
QUICK=${QUICK:-0}
KEEP=${KEEP:-0}
D=${BENCH_DIR:-/tmp/weave-versions-bench}
if [[ $QUICK == 1 ]]; then SIZE=$((16 << 20)) N=20 BIG=$((256 << 20)); else SIZE=$((64 << 20)) N=100 BIG=$((1 << 30)); fi
if [[ -z ${WEAVE:-} ]]; then
    (cd "$ROOT" && cargo build --release -p weave) >&2
    WEAVE=$ROOT/target/release/weave
fi
WEAVE=$(realpath "$WEAVE")
rm -rf "$D" && mkdir -p "$D/A" "$D/B"
trap '[[ $KEEP == 1 ]] || rm -rf "$D"' EXIT
cd "$D"

python3 - "$SIZE" <<'PY'
import random, sys
random.seed(1)
open("A/file.bin", "wb").write(random.randbytes(int(sys.argv[1])))
PY
"$WEAVE" sync -q A B
have_restic=0
if command -v restic >/dev/null; then
    have_restic=1
    export RESTIC_PASSWORD=bench
    restic init -q --repo "$D/restic" >/dev/null
fi
for i in $(seq 1 "$N"); do
    python3 - "$i" <<'PY'
import random, sys, os
i = int(sys.argv[1])
r = random.Random(i)
size = os.path.getsize("A/file.bin")
with open("A/file.bin", "r+b") as f:
    for _ in range(3):
        f.seek(r.randrange(0, size - 1024))
        f.write(r.randbytes(1024))
PY
    # a distinct mtime: weave re-reads a file changed within the last second anyway
    touch -d "@$((1600000000 + i * 60))" A/file.bin
    "$WEAVE" sync -q A B
    if [[ $have_restic == 1 ]]; then restic backup -q --repo "$D/restic" B/file.bin >/dev/null; fi
done
versions=$("$WEAVE" history --json B/file.bin | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["versions"]))')
store=$(du -sb B/.weave/versions | cut -f1)
echo "store: $versions versions of a $SIZE-byte file take $store bytes = $(python3 -c "print(round($store/$SIZE, 3))") x the file"
if [[ $have_restic == 1 ]]; then
    rs=$(du -sb "$D/restic" | cut -f1)
    echo "restic: $N snapshots of B/file.bin take $rs bytes = $(python3 -c "print(round($rs/$SIZE, 3))") x the file"
else
    echo "restic: not installed (apt-get install restic), no figure"
fi

# 2. restore throughput
rm -rf A B && mkdir A B
head -c "$BIG" /dev/urandom >A/big
"$WEAVE" sync -q A B
cp A/big orig
printf 'x' | dd of=A/big bs=1 seek=$((BIG / 2)) conv=notrunc status=none
touch -d @1600000000 A/big
"$WEAVE" sync -q A B
id=$("$WEAVE" history --json B/big | python3 -c 'import json,sys; print(json.load(sys.stdin)["versions"][0]["version"])')
for r in 1 2 3; do
    rm -f restored copied; sync
    s=$(date +%s.%N); "$WEAVE" restore B/big --version "$id" --to restored >/dev/null; e=$(date +%s.%N)
    w=$(python3 -c "print($e-$s)")
    sync
    s=$(date +%s.%N); cp B/big copied; sync copied; e=$(date +%s.%N)
    c=$(python3 -c "print($e-$s)")
    cmp -s restored orig || { echo "restored file differs from the version" >&2; exit 1; }
    echo "restore run $r: weave restore $w s, cp+sync $c s, ratio $(python3 -c "print(round($w/$c, 2))")"
done
if [[ $QUICK == 1 ]]; then echo "reproduce: QUICK=1 bash bench/versions.sh"; else echo "reproduce: bash bench/versions.sh"; fi
