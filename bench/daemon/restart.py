#!/usr/bin/env python3
"""A weave daemon pair restarted on an unchanged, synced folder: how long until both say "in sync"
again, and what the restart costs in memory.

A folder of N small files is made on A, the pair started and left to sync everything to B and
go quiet; both daemons are then stopped (SIGTERM) and started again, and `weave status --json`
of each is asked every 100 ms until its folder is idle and in sync with the other.

    python3 bench/daemon/restart.py --files 1000000 --tmp /dev/shm --ready-timeout 2400

See bench/daemon/README.md.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_WEAVE, BenchError, Procs, WeavePair, cleanup,  # noqa: E402
                    install_signal_handlers, log, rss_kib, wait_probe, weave_cli_missing)
from latency import prefill, settle, wait_count  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--weave", default=DEFAULT_WEAVE)
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--timeout", type=float, default=600, help="for the restarted pair, s")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    why = weave_cli_missing(args.weave)
    if why:
        print(f"weave skipped: {why}")
        return 1
    install_signal_handlers()
    procs = Procs()
    root = tempfile.mkdtemp(prefix="weave-restart-", dir=args.tmp)
    try:
        pair = WeavePair(args.weave, os.path.join(root, "weave"), procs)
        prefill(pair.a_dir, args.files)
        pair.setup()
        wait_probe(pair, args.ready_timeout)
        wait_count(pair, args.files, args.ready_timeout)
        settle([p.pid for p in pair.p.values()], "weave")
        pair.stop()
        log("both daemons stopped; starting them again")
        t0 = time.monotonic()
        pair.start()
        pending = {"A", "B"}
        took = {}
        while pending:
            if time.monotonic() - t0 > args.timeout:
                raise BenchError(f"{sorted(pending)} not in sync {args.timeout}s after the restart")
            pair.check_alive()
            for n in sorted(pending):
                if pair.in_sync(n):
                    took[n] = time.monotonic() - t0
                    pending.discard(n)
                    log(f"{n} in sync {took[n]:.2f}s after the restart")
            time.sleep(0.1)
        peaks = {n: rss_kib(p.pid, "VmHWM") / 1024 for n, p in pair.p.items()}
        settle([p.pid for p in pair.p.values()], "weave")
        idle = {n: rss_kib(p.pid) / 1024 for n, p in pair.p.items()}
        pair.stop()
    finally:
        cleanup(procs, root, args.keep)
    print(f"\nrestart of a synced pair holding {args.files} files: back in sync after "
          f"A {took['A']:.2f}s, B {took['B']:.2f}s; peak RSS A {peaks['A']:.0f} MiB, "
          f"B {peaks['B']:.0f} MiB; RSS once quiet A {idle['A']:.0f} MiB, B {idle['B']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
