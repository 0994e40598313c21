#!/usr/bin/env python3
"""Live-sync throughput: one big random file written on A, time until it is complete on B.

For each tool: set up a pair A -> B (the same setups as latency.py), wait until a probe file
reaches B, then copy a pre-generated random payload (default 1 GiB, made once outside the synced
folders) into A with plain 1 MiB write()s and close(). B is polled every 10 ms; once B's file has
the full size its bytes are compared with the payload; t_done is the start of the check that
matched. Reported: how long the write on A took, close -> complete on B, first byte -> complete
on B, and size / (first byte -> complete) as MiB/s.

    python3 bench/daemon/throughput.py                           # weave and Syncthing, 1 GiB
    python3 bench/daemon/throughput.py --tools syncthing --size 64M
    python3 bench/daemon/throughput.py --size 256M --reps 3 --json /tmp/tp.json

Each repetition writes a new file (big-N.bin); nothing is deleted in between, so the disk
needs about (2 * reps + 1) * size free, plus whatever the tools keep.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_WEAVE, BenchError, Procs, SyncthingPair, WeavePair,  # noqa: E402
                    cleanup, install_signal_handlers, log, parse_size, tool_versions, wait_probe,
                    weave_cli_missing)

TOOLS = ("weave", "weave0", "syncthing")
CHUNK = 1 << 20
POLL_S = 0.01


def make_payload(path, size):
    t0 = time.monotonic()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    log(f"payload: {size} random bytes in {time.monotonic() - t0:.1f}s")


def same_bytes(a, b, size):
    """True if files a and b both hold exactly `size` identical bytes (b may change meanwhile)."""
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            left = size
            while left > 0:
                x, y = fa.read(min(CHUNK, left)), fb.read(min(CHUNK, left))
                if x != y or not x:
                    return False
                left -= len(x)
            return fb.read(1) == b""
    except OSError:
        return False


def one_transfer(pair, payload, size, name, timeout):
    src, dst = os.path.join(pair.a_dir, name), os.path.join(pair.b_dir, name)
    t_start = time.perf_counter()
    with open(payload, "rb") as fi, open(src, "wb") as fo:
        while True:
            buf = fi.read(CHUNK)
            if not buf:
                break
            fo.write(buf)
    t_close = time.perf_counter()
    deadline = t_close + timeout
    last_checked = None  # (inode, size, mtime_ns) of the last full-size version that did not match
    next_alive = t_close
    while True:
        now = time.perf_counter()
        try:
            st = os.stat(dst)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            if st.st_size == size and sig != last_checked:
                if same_bytes(payload, dst, size):
                    return {"write_s": t_close - t_start, "close_to_done_s": now - t_close,
                            "start_to_done_s": now - t_start,
                            "mib_per_s": size / (1 << 20) / (now - t_start)}
                last_checked = sig
        except OSError:
            pass
        if now >= deadline:
            return None
        if now >= next_alive:
            pair.check_alive()
            next_alive = now + 0.5
        time.sleep(POLL_S)


def run_tool(tool, root, procs, payload, size, args):
    base = os.path.join(root, tool)
    os.makedirs(base)
    if tool in ("weave", "weave0"):
        why = weave_cli_missing(args.weave)
        if why:
            log(f"{tool}: SKIPPED: {why}")
            return {"skipped": why}
        pair = WeavePair(args.weave, base, procs, name=tool,
                         watch_delay_ms=0 if tool == "weave0" else None)
    else:
        pair = SyncthingPair(base, procs, watch_delay_s=1)
    log(f"{tool}: {pair.describe()}")
    try:
        pair.setup()
        wait_probe(pair, args.ready_timeout)
        reps, timeouts = [], 0
        for i in range(args.reps):
            r = one_transfer(pair, payload, size, f"big-{i}.bin", args.timeout)
            if r is None:
                timeouts += 1
                log(f"{tool}: rep {i + 1}: timed out after {args.timeout}s")
            else:
                reps.append(r)
                log(f"{tool}: rep {i + 1}: write {r['write_s']:.2f}s, close->B complete "
                    f"{r['close_to_done_s']:.2f}s, start->B complete {r['start_to_done_s']:.2f}s "
                    f"({r['mib_per_s']:.0f} MiB/s)")
            if i + 1 < args.reps:
                time.sleep(args.pause)
        return {"setup": pair.describe(), "reps": reps, "timeouts": timeouts}
    except BenchError as e:
        log(f"{tool}: FAILED: {e}")
        return {"failed": str(e)}
    finally:
        pair.stop()


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def print_table(results, size, args):
    print(f"\none file of {size} bytes ({size / (1 << 20):.0f} MiB) written on A; median of "
          f"{args.reps} rep(s); seconds")
    print(f"{'tool':<10} {'write':>7} {'close->B':>9} {'start->B':>9} {'MiB/s':>7} {'timeouts':>9}")
    for tool, r in results.items():
        if "skipped" in r or "failed" in r:
            what = "skipped" if "skipped" in r else "FAILED"
            print(f"{tool:<10} {what}: {(r.get('skipped') or r.get('failed')).splitlines()[0]}")
            continue
        if not r["reps"]:
            print(f"{tool:<10} {'-':>7} {'-':>9} {'-':>9} {'-':>7} {r['timeouts']:>9}")
            continue
        m = {k: median([x[k] for x in r["reps"]]) for k in r["reps"][0]}
        print(f"{tool:<10} {m['write_s']:>7.2f} {m['close_to_done_s']:>9.2f} "
              f"{m['start_to_done_s']:>9.2f} {m['mib_per_s']:>7.0f} {r['timeouts']:>9}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", default="weave,syncthing",
                    help=f"comma-separated, from {','.join(TOOLS)} (default: weave,syncthing)")
    ap.add_argument("--size", default="1G", help="file size, e.g. 1G, 256M, 10M (1G)")
    ap.add_argument("--reps", type=int, default=1, help="files per tool, one after the other (1)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between repetitions (2)")
    ap.add_argument("--timeout", type=float, default=600, help="per-file timeout, s (600)")
    ap.add_argument("--ready-timeout", type=float, default=60)
    ap.add_argument("--weave", default=DEFAULT_WEAVE, help=f"weave binary ({DEFAULT_WEAVE})")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--tmp", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        ap.error(f"--tools: choose from {','.join(TOOLS)}")
    try:
        size = parse_size(args.size)
    except ValueError as e:
        ap.error(str(e))
    if size < 1 or args.reps < 1:
        ap.error("need --size >= 1 and --reps >= 1")

    install_signal_handlers()
    procs = Procs()
    root = tempfile.mkdtemp(prefix="weave-throughput-", dir=args.tmp)
    free = shutil.disk_usage(root).free
    need = (2 * args.reps + 1) * size  # payload + A + B of one tool at a time
    if free < need:
        shutil.rmtree(root, ignore_errors=True)
        sys.exit(f"not enough disk space in {root}: need about {need >> 20} MiB, have {free >> 20}")
    results = {}
    log(f"work directory {root}")
    try:
        payload = os.path.join(root, "payload.bin")
        make_payload(payload, size)
        for tool in tools:
            results[tool] = run_tool(tool, root, procs, payload, size, args)
            # free the disk before the next tool
            if not args.keep:
                shutil.rmtree(os.path.join(root, tool), ignore_errors=True)
    finally:
        cleanup(procs, root, args.keep)

    print_table(results, size, args)
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "cpus": os.cpu_count(), "size": size, "args": vars(args),
                "versions": tool_versions(args.weave)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        log(f"wrote {args.json}")
    return 1 if any("failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
