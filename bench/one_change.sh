#!/bin/sh
# One-shot `weave sync` of two trees of N small files after one file changed,
# against `rsync -a` doing the same one-way (and, with WEAVE_BEFORE, against
# another weave build), timed alternately by farm-bench. On tmpfs by default.
#
#   WEAVE=target/release/weave [WEAVE_BEFORE=/path/old/weave] [N=100000] [DIR=/dev/shm/one-change] sh bench/one_change.sh
set -eu
WEAVE=${WEAVE:-target/release/weave}
N=${N:-100000}
DIR=${DIR:-/dev/shm/one-change}
WEAVE=$(readlink -f "$WEAVE")
rm -rf "$DIR" && mkdir -p "$DIR"
python3 - "$DIR/A1" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{root}/d{i // 1000:03d}"
    if i % 1000 == 0:
        os.makedirs(d)
    with open(f"{d}/f{i:06d}.txt", "wb") as f:
        f.write(b"x%d\n" % i * 3)
PY
# the file changed each time: one in the middle of the tree
CHANGED=d$(printf %03d $((N / 2000)))/f$(printf %06d $((N / 2000 * 1000)))
cp -a "$DIR/A1" "$DIR/A2"
cp -a "$DIR/A1" "$DIR/A3"
mkdir "$DIR/B1" "$DIR/B2"
rsync -a "$DIR/A3/" "$DIR/B3/"
"$WEAVE" sync --quiet "$DIR/A2" "$DIR/B2"
# one change, then a sync: $1 = command kind, $2 = binary
cat > "$DIR/one.sh" <<SH
#!/bin/sh
set -e
case "\$1" in
  weave) date +%s%N > "$DIR/A2/$CHANGED"; exec "\$2" sync --quiet "$DIR/A2" "$DIR/B2" ;;
  before) date +%s%N > "$DIR/A1/$CHANGED"; exec "\$2" sync --quiet "$DIR/A1" "$DIR/B1" ;;
  rsync) date +%s%N > "$DIR/A3/$CHANGED"; exec rsync -a "$DIR/A3/" "$DIR/B3/" ;;
esac
SH
chmod +x "$DIR/one.sh"
farm-bench -n 8 --timeout 300 --vs "$DIR/one.sh rsync" -- "$DIR/one.sh" weave "$WEAVE"
if [ -n "${WEAVE_BEFORE:-}" ]; then
    "$WEAVE_BEFORE" sync --quiet "$DIR/A1" "$DIR/B1"
    farm-bench -n 8 --timeout 300 --vs "$DIR/one.sh before $(readlink -f "$WEAVE_BEFORE")" -- "$DIR/one.sh" weave "$WEAVE"
fi
[ -n "${KEEP:-}" ] || rm -rf "$DIR"
