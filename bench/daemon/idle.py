#!/usr/bin/env python3
"""Idle cost of one `weave daemon` watching a large folder: CPU % and resident memory.

Generates a folder of 100,000 small files (0-2 KiB of random bytes, in 10 x 100 nested
directories of 100 files each), gives it to one weave daemon whose only peer is down (an
address nobody listens on), waits until the daemon's first scan is done, then for 60 s
samples the daemon's CPU time (utime + stime from /proc/PID/stat, all threads) and its RSS
(VmRSS from /proc/PID/status, once a second). Nothing changes in the folder meanwhile.

    python3 bench/daemon/idle.py
    python3 bench/daemon/idle.py --files 20000 --sample-s 30 --json /tmp/idle.json

"First scan done" is read from `weave --config-dir DIR status --json` (polled every second) if
that command works and its output says so (see scan_state()); otherwise the script waits a fixed
--scan-wait seconds (60) and says so in the report.
"""

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_WEAVE, BenchError, Procs, free_ports,  # noqa: E402
                    install_signal_handlers, log, run, tail, weave_cli_missing, weave_init)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def generate(root, files, seed):
    """files small files under root/dXX/eY/fNNNNNNN.dat, 100 per leaf directory."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    per_leaf = 100
    for i in range(files):
        leaf = i // per_leaf
        d = os.path.join(root, f"d{leaf // 10:03d}", f"e{leaf % 10}")
        if i % per_leaf == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.dat"), "wb") as f:
            f.write(rng.randbytes(rng.randint(0, 2048)))
    log(f"generated {files} files in {time.monotonic() - t0:.1f}s")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


# status --json: words that say a folder is still busy with its first scan, or done with it.
BUSY = {"starting", "scanning", "scan", "indexing", "hashing", "initializing", "init", "loading"}
DONE = {"idle", "watching", "ready", "synced", "in_sync", "up_to_date", "scanned", "done"}


def scan_state(obj):
    """From parsed `status --json`: True (every scan signal says done), False (some says busy),
    None (no field recognized). Looks, at any depth, at booleans named scanning / scan_done /
    initial_scan_done / scanned / ready, and strings under state / status / phase."""
    signals = []

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                kl = k.lower()
                if isinstance(v, bool):
                    if kl in ("scanning", "initial_scanning"):
                        signals.append(not v)
                    elif kl in ("scan_done", "initial_scan_done", "scanned", "ready",
                                "first_scan_done"):
                        signals.append(v)
                elif isinstance(v, str) and kl in ("state", "status", "phase"):
                    w = v.lower().replace("-", "_").replace(" ", "_")
                    if w in BUSY:
                        signals.append(False)
                    elif w in DONE:
                        signals.append(True)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(obj)
    return all(signals) if signals else None


def wait_first_scan(weave, cfg, p, args):
    """Returns (how it was decided, seconds since start). Bounded by --scan-timeout."""
    t0 = time.monotonic()
    deadline = t0 + args.scan_timeout
    shown = False
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"weave daemon exited with {p.returncode}")
        try:
            r = subprocess.run([weave, "--config-dir", cfg, "status", "--json"], capture_output=True,
                               text=True, timeout=30)
        except subprocess.TimeoutExpired:
            r = None
        if r is None or r.returncode != 0:
            why = "timed out" if r is None else f"exited {r.returncode}: {(r.stderr or '').strip()[:200]}"
            log(f"`weave status --json` {why}; waiting a fixed {args.scan_wait}s instead")
            break
        try:
            st = json.loads(r.stdout)
        except ValueError:
            log(f"`weave status --json` is not JSON; waiting a fixed {args.scan_wait}s instead")
            break
        done = scan_state(st)
        if not shown:
            log(f"status --json: {json.dumps(st)[:600]}")
            shown = True
        if done is None:
            log(f"no scan state recognized in `status --json` (adapt scan_state()); "
                f"waiting a fixed {args.scan_wait}s instead")
            break
        if done:
            log(f"status --json: {json.dumps(st)[:600]}")
            return "status --json", time.monotonic() - t0
        time.sleep(1)
    else:
        raise BenchError(f"first scan not done after {args.scan_timeout}s (status --json)")
    end = min(time.monotonic() + args.scan_wait, deadline)
    while time.monotonic() < end:
        if p.poll() is not None:
            raise BenchError(f"weave daemon exited with {p.returncode}")
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    return f"fixed wait of {args.scan_wait}s", None


def sample(pid, seconds):
    t_start, c_start = time.monotonic(), cpu_ticks(pid)
    rss = []
    end = t_start + seconds
    while True:
        rss.append(rss_kib(pid))
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(1.0, end - now))
    t_end, c_end = time.monotonic(), cpu_ticks(pid)
    wall = t_end - t_start
    return {"wall_s": wall, "cpu_s": (c_end - c_start) / CLK_TCK,
            "cpu_percent": 100.0 * (c_end - c_start) / CLK_TCK / wall,
            "rss_mib_mean": sum(rss) / len(rss) / 1024, "rss_mib_max": max(rss) / 1024,
            "rss_mib_end": rss[-1] / 1024, "rss_samples": len(rss)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="files in the folder (100000)")
    ap.add_argument("--sample-s", type=float, default=60, help="sampling period, s (60)")
    ap.add_argument("--scan-wait", type=float, default=60,
                    help="fixed wait for the first scan when status --json can't tell, s (60)")
    ap.add_argument("--scan-timeout", type=float, default=900,
                    help="give up if the first scan is not done after this, s (900)")
    ap.add_argument("--weave", default=DEFAULT_WEAVE, help=f"weave binary ({DEFAULT_WEAVE})")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.files < 1 or args.sample_s <= 0:
        ap.error("need --files >= 1 and --sample-s > 0")

    why = weave_cli_missing(args.weave)
    if why:
        print(f"weave idle: skipped: {why}")
        return 0

    install_signal_handlers()
    procs = Procs()
    root = tempfile.mkdtemp(prefix="weave-idle-", dir=args.tmp)
    log(f"work directory {root}")
    result = None
    try:
        data, cfg = os.path.join(root, "data"), os.path.join(root, "config")
        os.makedirs(data)
        generate(data, args.files, args.seed)
        listen, dead_peer = free_ports(2)  # nothing will listen on dead_peer
        dev = weave_init(args.weave, cfg, f"127.0.0.1:{listen}", "idle-A")
        # a syntactically valid id for the missing peer: a second config dir's own id
        peer_id = weave_init(args.weave, os.path.join(root, "peer-config"),
                             f"127.0.0.1:{dead_peer}", "idle-B")
        run([args.weave, "--config-dir", cfg, "peer", "add", "idle-B", peer_id,
             f"127.0.0.1:{dead_peer}"])
        run([args.weave, "--config-dir", cfg, "folder", "add", "idle", data, "--peer", "idle-B"])
        log_path = os.path.join(root, "daemon.log")
        t_start = time.monotonic()
        p = procs.start("weave-daemon", [args.weave, "--config-dir", cfg, "daemon"], log_path)
        log(f"daemon {dev} started; waiting for its first scan of {args.files} files")
        try:
            how, scan_s = wait_first_scan(args.weave, cfg, p, args)
            log(f"first scan done ({how}) {time.monotonic() - t_start:.1f}s after start; "
                f"sampling for {args.sample_s:g}s")
            s = sample(p.pid, args.sample_s)
            if p.poll() is not None:
                raise BenchError(f"weave daemon exited with {p.returncode} while sampled")
        except (BenchError, OSError) as e:
            raise BenchError(f"{e}; daemon log tail:\n{tail(log_path)}") from e
        result = dict(s, files=args.files, scan_detected_by=how, first_scan_s=scan_s,
                      threads=threads(p.pid))
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    r = result
    print(f"\nweave daemon idle, {r['files']} files, first scan "
          + (f"{r['first_scan_s']:.1f}s" if r["first_scan_s"] is not None else "(not measured)")
          + f" (detected by {r['scan_detected_by']})")
    print(f"CPU over {r['wall_s']:.0f}s: {r['cpu_percent']:.2f} % of one core ({r['cpu_s']:.2f} s)")
    print(f"RSS: mean {r['rss_mib_mean']:.1f} MiB, max {r['rss_mib_max']:.1f} MiB, "
          f"end {r['rss_mib_end']:.1f} MiB; threads {r['threads']}")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "cpus": os.cpu_count(), "args": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "result": r}, f, indent=1)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
