#!/usr/bin/env bash
# A sparse file, first copy: weave beside `rsync -aSXAH`, locally and over
# ssh (a private sshd on 127.0.0.1, both tools through bench/count_pipe.py
# as their remote shell, so the bytes on the wire are counted the same way).
#
#   WEAVE=target/release/weave bash bench/sparse.sh
#
# The file: SIZE_GIB GiB (default 4) of holes with 1 MiB of random data in
# the middle and a 6-byte header. Every run copies into an empty directory
# and starts without weave's state in the source (a first copy: weave
# reads and hashes the whole file, as rsync does). REPS runs of each tool,
# alternated (default 3); medians. Disk use is `du -B1` of the copy against
# the source's.
#
#   SPARSE_DIR  work directory (default /tmp/weave-sparse-bench; removed at the end)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WEAVE=$(realpath "${WEAVE:-$HERE/../target/release/weave}")
DIR=${SPARSE_DIR:-/tmp/weave-sparse-bench}
SIZE_GIB=${SIZE_GIB:-4}
REPS=${REPS:-3}
PY=$(command -v python3)
for t in rsync ssh ssh-keygen /usr/sbin/sshd python3; do
    command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }
done
[[ -x $WEAVE ]] || { echo "no weave binary at $WEAVE (set WEAVE=...)" >&2; exit 2; }

rm -rf "$DIR"
mkdir -p "$DIR/A" "$DIR/sshd"
SSHD_PID=
cleanup() {
    [[ -n $SSHD_PID ]] && kill "$SSHD_PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the file
"$PY" - "$DIR/A/disk.img" "$SIZE_GIB" <<'PY'
import os, random, sys
path, gib = sys.argv[1], int(sys.argv[2])
size = gib << 30
with open(path, "wb") as f:
    f.truncate(size)
    f.write(b"header")
    f.seek(size // 2)
    f.write(random.Random(27).randbytes(1 << 20))
os.utime(path, (1_600_000_000, 1_600_000_000))
PY
used() { du -B1 "$1" | cut -f1; }
SRC_USED=$(used "$DIR/A/disk.img")

# ---------------------------------------------------------------- private sshd
S=$DIR/sshd
mkdir -p /run/sshd 2>/dev/null || true
ssh-keygen -q -t ed25519 -N '' -f "$S/host"
ssh-keygen -q -t ed25519 -N '' -f "$S/id"
cp "$S/id.pub" "$S/authorized_keys"
chmod 600 "$S/authorized_keys"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$S/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $PORT
HostKey $S/host
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
CFG
/usr/sbin/sshd -D -e -f "$S/sshd_config" 2>"$S/log" &
SSHD_PID=$!
SSH="ssh -F /dev/null -p $PORT -i $S/id -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -o Compression=no"
RSH="$PY $HERE/count_pipe.py $SSH"
for _ in $(seq 100); do
    $SSH 127.0.0.1 true 2>/dev/null && break
    sleep 0.1
done

# ---------------------------------------------------------------- runs
declare -A TIMES USED WIRE
run() { # name, command...
    local name=$1
    shift
    rm -rf "$DIR/A/.weave" "$DIR/B"
    mkdir "$DIR/B"
    sync
    export COUNT_PIPE_LOG=$DIR/pipe.log
    rm -f "$COUNT_PIPE_LOG"
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >"$DIR/out.log" 2>&1 || { echo "$name failed:" >&2; cat "$DIR/out.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    cmp "$DIR/A/disk.img" "$DIR/B/disk.img" || { echo "$name: the copy differs" >&2; exit 1; }
    TIMES[$name]+="$(echo "$t1 - $t0" | bc) "
    USED[$name]=$(used "$DIR/B/disk.img")
    if [[ -e $COUNT_PIPE_LOG ]]; then
        WIRE[$name]=$(awk '{for(i=1;i<=NF;i++){split($i,kv,"="); if(kv[1]=="sent"||kv[1]=="received") s+=kv[2]}} END{print s}' "$COUNT_PIPE_LOG")
    fi
}
for _ in $(seq "$REPS"); do
    run "weave local" "$WEAVE" sync --quiet "$DIR/A" "$DIR/B"
    run "rsync -aSXAH local" rsync -aSXAH --exclude=/.weave "$DIR/A/" "$DIR/B/"
    run "weave ssh" "$WEAVE" sync --quiet --rsh "$RSH" --remote-weave "$WEAVE" "$DIR/A" "127.0.0.1:$DIR/B"
    run "rsync -aSXAH ssh" rsync -aSXAH -e "$RSH" --exclude=/.weave "$DIR/A/" "127.0.0.1:$DIR/B/"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "A ${SIZE_GIB} GiB sparse file with 1 MiB of data; source uses $SRC_USED bytes on disk; $REPS runs each, alternated"
printf '%-20s %10s %14s %12s %14s\n' tool "median s" "copy's disk" "vs source" "bytes on wire"
for name in "weave local" "rsync -aSXAH local" "weave ssh" "rsync -aSXAH ssh"; do
    m=$(echo "${TIMES[$name]}" | median)
    printf '%-20s %10.2f %14s %11.3fx %14s\n' "$name" "$m" "${USED[$name]}" \
        "$(echo "${USED[$name]} / $SRC_USED" | bc -l)" "${WIRE[$name]:--}"
done
