#!/usr/bin/env python3
"""How long a change on device A takes to reach device B through a bucket
remote (issue 24: within one poll interval plus 1 s). Two daemons, no
peers, one folder each with `--remote file://DIR --poll POLL`; each change
is a new small file on A, timed until it is on B.

    python3 bench/daemon/bucket_latency.py --weave target/release/weave --poll 5 --changes 10
"""
import argparse, os, shutil, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--weave", default="target/release/weave")
ap.add_argument("--poll", type=int, default=5)
ap.add_argument("--changes", type=int, default=10)
ap.add_argument("--tmp", default="/dev/shm")
args = ap.parse_args()
root = tempfile.mkdtemp(dir=args.tmp, prefix="weave-bucket-lat.")
env = dict(os.environ, WEAVE_PASSPHRASE="bench")
procs = []
try:
    bucket = f"file://{root}/bucket"
    for d in ("a", "b"):
        cfg = f"{root}/{d}/cfg"
        subprocess.run([args.weave, "--config-dir", cfg, "init", "--listen", "127.0.0.1:0", "--name", d],
                       check=True, capture_output=True)
        subprocess.run([args.weave, "--config-dir", cfg, "folder", "add", "docs", f"{root}/{d}/docs",
                        "--remote", bucket, "--poll", str(args.poll), "--watch-delay", "0"],
                       check=True, capture_output=True)
        log = open(f"{root}/{d}.log", "w")
        procs.append(subprocess.Popen([args.weave, "--config-dir", cfg, "daemon"], env=env,
                                      stdout=log, stderr=log))
    time.sleep(2)
    lat = []
    for i in range(args.changes):
        name = f"change-{i}.txt"
        t0 = time.monotonic()
        with open(f"{root}/a/docs/{name}", "w") as f:
            f.write(f"change {i}\n")
        deadline = t0 + 10 * args.poll + 30
        while not os.path.exists(f"{root}/b/docs/{name}") and time.monotonic() < deadline:
            time.sleep(0.02)
        lat.append(time.monotonic() - t0)
        time.sleep(0.3)
    lat.sort()
    print(f"poll {args.poll} s, {len(lat)} changes: p50 {statistics.median(lat):.2f} s, "
          f"max {lat[-1]:.2f} s (goal: every one within {args.poll + 1} s)")
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)
