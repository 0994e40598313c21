#!/usr/bin/env bash
# Bucket replicas (issue 24), measured side by side:
#   1. one byte changed in a 1 GiB file: bytes uploaded (file:// bucket);
#   2. 100 versions of a 64 MiB file, each with a small edit: the bucket's
#      size against the file's; then (2b) after weave gc --bucket --keep-last 10;
#      (2c) 20 whole rewrites of an 8 MiB file, pruned to --keep-last 2;
#   3. the first upload of bench workload (a) (10,000 x 4 KiB in 100
#      directories + 8 x 64 MiB) to an S3 server on 127.0.0.1 (SeaweedFS,
#      `bash .ci/s3 up`), against a plain upload of the same files with
#      boto3 (10 threads, as `aws s3 cp --recursive`), alternated.
# Usage: WEAVE=target/release/weave bash bench/bucket.sh [1] [2] [3]
# Environment: TMP (default /dev/shm), REPS (default 3) for 3.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
W=${WEAVE:-$ROOT/target/release/weave}
TMP=${TMP:-/dev/shm}
REPS=${REPS:-3}
D=$(mktemp -d "$TMP/weave-bucket-bench.XXXXXX")
trap 'rm -rf "$D"' EXIT
export WEAVE_PASSPHRASE=bench
want() { [ $# -eq 0 ] && return 0; for a in "${ARGS[@]}"; do [ "$a" = "$1" ] && return 0; done; return 1; }
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(1 2 3)
new_bytes() { # objects in $1 not listed in $2, summed
  find "$1" -type f | sort > "$D/now.txt"
  comm -13 "$2" "$D/now.txt" | xargs -r stat -c %s | awk '{s+=$1} END {print s+0}'
}

if want 1; then
  mkdir -p "$D/one/A"
  head -c 1073741824 /dev/urandom > "$D/one/A/big.bin"
  "$W" sync --quiet "$D/one/A" "file://$D/one/bucket"
  find "$D/one/bucket" -type f | sort > "$D/before.txt"
  python3 -c "
f=open('$D/one/A/big.bin','r+b'); f.seek(500_000_000); b=f.read(1); f.seek(500_000_000); f.write(bytes([b[0]^1]))"
  "$W" sync --quiet "$D/one/A" "file://$D/one/bucket"
  echo "1. one byte changed in a 1 GiB file: $(new_bytes "$D/one/bucket" "$D/before.txt") bytes uploaded (goal < 204800)"
  rm -rf "$D/one"
fi

if want 2; then
  mkdir -p "$D/ver/A"
  head -c 67108864 /dev/urandom > "$D/ver/A/f.bin"
  for i in $(seq 100); do
    python3 -c "
import random
random.seed($i)
f=open('$D/ver/A/f.bin','r+b'); f.seek(random.randrange(0, 67108864-100)); f.write(random.randbytes(100))"
    "$W" sync --quiet "$D/ver/A" "file://$D/ver/bucket"
  done
  size=$(du -sb "$D/ver/bucket" | cut -f1)
  python3 -c "print('2. 100 versions of a 64 MiB file, 100 bytes changed in each: bucket %d bytes, %.3fx the file (goal <= 1.3x)' % ($size, $size / 67108864))"
  # Pruned to the last 10 old versions: a gc marks, the next deletes.
  t0=$(date +%s.%N)
  "$W" gc --bucket "file://$D/ver/bucket" --keep-last 10 --grace 0 > /dev/null
  "$W" gc --bucket "file://$D/ver/bucket" --keep-last 10 --grace 0 > /dev/null
  t1=$(date +%s.%N)
  pruned=$(du -sb "$D/ver/bucket" | cut -f1)
  python3 -c "print('2b. the same after weave gc --bucket --keep-last 10 (mark, then sweep): bucket %d bytes, %.3fx the file, %.0f%% of before; both gcs %.2f s' % ($pruned, $pruned / 67108864, 100.0 * $pruned / $size, $t1 - $t0))"
  rm -rf "$D/ver"
  # 2c. 20 versions of an 8 MiB file rewritten whole each time, pruned to
  # the last 2 old versions.
  mkdir -p "$D/rw/A"
  for i in $(seq 20); do
    head -c 8388608 /dev/urandom > "$D/rw/A/f.bin"
    "$W" sync --quiet "$D/rw/A" "file://$D/rw/bucket"
  done
  before=$(du -sb "$D/rw/bucket" | cut -f1)
  "$W" gc --bucket "file://$D/rw/bucket" --keep-last 2 --grace 0 > /dev/null
  "$W" gc --bucket "file://$D/rw/bucket" --keep-last 2 --grace 0 > /dev/null
  after=$(du -sb "$D/rw/bucket" | cut -f1)
  python3 -c "print('2c. 20 versions of an 8 MiB file rewritten whole: bucket %d bytes (%.2fx the file); after weave gc --bucket --keep-last 2: %d bytes (%.2fx the file, 3 versions kept)' % ($before, $before / 8388608, $after, $after / 8388608))"
  rm -rf "$D/rw"
fi

if want 3; then
  eval "$(bash "$ROOT/.ci/s3" up)"
  python3 "$ROOT/.ci/s3-bucket.py" "$WEAVE_TEST_S3_ENDPOINT" "$WEAVE_TEST_S3_KEY" "$WEAVE_TEST_S3_SECRET" bench
  S3DIR=${WEAVE_S3_DIR:-/tmp/weave-s3}
  "$S3DIR/venv/bin/python" -c "import boto3" 2>/dev/null || "$S3DIR/venv/bin/pip" install -q boto3
  mkdir -p "$D/a"
  python3 - "$D/a" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/d{d:03}/f{f:03}", "wb") as fh:
            fh.write(os.urandom(4096))
for b in range(8):
    with open(f"{root}/big{b}.bin", "wb") as fh:
        fh.write(os.urandom(64 << 20))
PY
  export AWS_ENDPOINT_URL=$WEAVE_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID=$WEAVE_TEST_S3_KEY AWS_SECRET_ACCESS_KEY=$WEAVE_TEST_S3_SECRET AWS_REGION=us-east-1
  cat > "$D/plain.py" <<'PY'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
root, prefix = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, max_pool_connections=16))
try:
    s3.create_bucket(Bucket="bench")
except Exception:
    pass
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
cfg = TransferConfig(max_concurrency=10)
def up(p):
    s3.upload_file(p, "bench", prefix + "/" + os.path.relpath(p, root), Config=cfg)
with ThreadPoolExecutor(10) as ex:
    list(ex.map(up, files))
PY
  total=$(du -sb --exclude=.weave "$D/a" | cut -f1)
  for i in $(seq "$REPS"); do
    rm -rf "$D/a/.weave"
    t0=$(date +%s.%N); "$W" sync --quiet "$D/a" "s3://bench/weave-$i-$$"; t1=$(date +%s.%N)
    "$S3DIR/venv/bin/python" "$D/plain.py" "$D/a" "plain-$i-$$"; t2=$(date +%s.%N)
    python3 -c "w=$t1-$t0; p=$t2-$t1; print('3. run $i: weave %.2f s (%.0f MB/s), boto3 %.2f s (%.0f MB/s): weave/boto3 throughput %.2f (goal >= 0.8)' % (w, $total/w/1e6, p, $total/p/1e6, p/w))"
  done
fi
