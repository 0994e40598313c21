#!/usr/bin/env python3
"""A burst of small files copied into a watched folder: how long until the peer holds them all,
and how much the watching daemon slows the copy (the user's own work), weave beside Syncthing.

For each tool: set up a pair A <-> B on loopback, wait until a probe file reaches B, then time
`cp -a SRC A/burst` (SRC: N small files made beforehand, outside every watched folder, on the
same file system), and poll B until it holds all N (t = from the start of the cp). Beforehand,
the same `cp -a` into a directory nobody watches gives the copy's own time.

    python3 bench/daemon/burst.py --files 100000 --tmp /dev/shm     # weave and syncthing
    python3 bench/daemon/burst.py --tools weave --files 20000

See bench/daemon/README.md.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_WEAVE, BenchError, Procs, SyncthingPair, WeavePair,  # noqa: E402
                    cleanup, install_signal_handlers, log, wait_probe, weave_cli_missing)

TOOLS = ("weave", "syncthing")


def make_source(root, n):
    """n small files (20-200 bytes), 1000 per directory."""
    src = os.path.join(root, "src")
    for i in range(n):
        d = os.path.join(src, f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            f.write((b"burst %d " % i) * (1 + i % 20))
    return src


def timed_copy(src, dst):
    t = time.monotonic()
    subprocess.run(["cp", "-a", src, dst], check=True)
    return time.monotonic() - t


def count(root):
    return sum(len(files) for _, _, files in os.walk(root)) if os.path.isdir(root) else 0


def run_tool(tool, root, src, n, procs, args):
    base = os.path.join(root, tool)
    os.makedirs(base)
    if tool == "weave":
        why = weave_cli_missing(args.weave)
        if why:
            return {"skipped": why}
        pair = WeavePair(args.weave, base, procs)
    else:
        pair = SyncthingPair(base, procs, watch_delay_s=1)
    log(f"{tool}: {pair.describe()}")
    try:
        pair.setup()
        wait_probe(pair, args.ready_timeout)
        t0 = time.monotonic()
        cp = timed_copy(src, os.path.join(pair.a_dir, "burst"))
        log(f"{tool}: cp -a of {n} files into A took {cp:.2f}s")
        target = os.path.join(pair.b_dir, "burst")
        while True:
            have = count(target)
            if have >= n:
                break
            if time.monotonic() - t0 > args.timeout:
                raise BenchError(f"only {have} of {n} files reached B in {args.timeout}s")
            pair.check_alive()
            time.sleep(0.2)
        done = time.monotonic() - t0
        log(f"{tool}: B holds all {n} files {done:.2f}s after the cp started")
        return {"cp_s": cp, "all_on_b_s": done}
    except BenchError as e:
        log(f"{tool}: FAILED: {e}")
        return {"failed": str(e)}
    finally:
        pair.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--weave", default=DEFAULT_WEAVE)
    ap.add_argument("--ready-timeout", type=float, default=60)
    ap.add_argument("--timeout", type=float, default=900, help="for B to hold everything, s")
    ap.add_argument("--tmp", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    if any(t not in TOOLS for t in tools):
        ap.error(f"tools are {','.join(TOOLS)}")

    install_signal_handlers()
    procs = Procs()
    root = tempfile.mkdtemp(prefix="weave-burst-", dir=args.tmp)
    results = {}
    try:
        src = make_source(root, args.files)
        alone = timed_copy(src, os.path.join(root, "unwatched"))
        shutil.rmtree(os.path.join(root, "unwatched"))
        log(f"cp -a of {args.files} files into a directory nobody watches: {alone:.2f}s")
        for tool in tools:
            results[tool] = run_tool(tool, root, src, args.files, procs, args)
    finally:
        cleanup(procs, root, args.keep)

    print(f"\n{args.files} small files copied with cp -a into A; the copy alone: {alone:.2f}s")
    print(f"{'tool':<10} {'cp s':>8} {'cp slowdown':>12} {'all on B s':>11}")
    for tool, r in results.items():
        if "cp_s" not in r:
            print(f"{tool:<10} {r}")
            continue
        print(f"{tool:<10} {r['cp_s']:>8.2f} {r['cp_s'] / alone:>11.2f}x {r['all_on_b_s']:>11.2f}")
    return 1 if any("failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
