#!/usr/bin/env python3
"""How long a change on device A takes to reach device B through a bucket
remote (issue 24: within one poll interval plus 1 s). Two daemons, no
peers, one folder each with `--remote file://DIR --poll POLL`; each change
is a new small file on A, timed until it is on B. With `--via untrusted`,
through a third daemon U instead, which keeps the folder encrypted only
(receive-encrypted; A and B mark it `--untrusted`).

    python3 bench/daemon/bucket_latency.py --weave target/release/weave --poll 5 --changes 10
    python3 bench/daemon/bucket_latency.py --via untrusted --poll 5 --changes 10
"""
import argparse, os, shutil, socket, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--weave", default="target/release/weave")
ap.add_argument("--poll", type=int, default=5)
ap.add_argument("--changes", type=int, default=10)
ap.add_argument("--tmp", default="/dev/shm")
ap.add_argument("--via", choices=["bucket", "untrusted"], default="bucket")
args = ap.parse_args()
root = tempfile.mkdtemp(dir=args.tmp, prefix="weave-bucket-lat.")
env = dict(os.environ, WEAVE_PASSPHRASE="bench")
procs = []


def weave(cfg, *a):
    return subprocess.run([args.weave, "--config-dir", cfg, *a], check=True,
                          capture_output=True, text=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:
    devices = ("a", "b") if args.via == "bucket" else ("a", "b", "u")
    addr, ids = {}, {}
    for d in devices:
        cfg = f"{root}/{d}/cfg"
        addr[d] = f"127.0.0.1:{free_port()}"
        ids[d] = weave(cfg, "init", "--listen", addr[d], "--name", d)
    for d in devices:
        cfg = f"{root}/{d}/cfg"
        common = ["--poll", str(args.poll), "--watch-delay", "0"]
        if args.via == "bucket":
            weave(cfg, "folder", "add", "docs", f"{root}/{d}/docs", "--remote",
                  f"file://{root}/bucket", *common)
        elif d == "u":
            for p in ("a", "b"):
                weave(cfg, "peer", "add", p, ids[p], addr[p])
            weave(cfg, "folder", "add", "docs", f"{root}/u/kept", "--peer", "a", "--peer", "b",
                  "--mode", "receive-encrypted")
        else:
            weave(cfg, "peer", "add", "u", ids["u"], addr["u"])
            weave(cfg, "folder", "add", "docs", f"{root}/{d}/docs", "--untrusted", "u", *common)
    for d in devices:
        log = open(f"{root}/{d}.log", "w")
        procs.append(subprocess.Popen([args.weave, "--config-dir", f"{root}/{d}/cfg", "daemon"],
                                      env=env, stdout=log, stderr=log))
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
    print(f"via {args.via}, poll {args.poll} s, {len(lat)} changes: p50 {statistics.median(lat):.2f} s, "
          f"max {lat[-1]:.2f} s (goal: every one within {args.poll + 1} s)")
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)
