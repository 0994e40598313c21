#!/usr/bin/env python3
"""Live-sync latency of weave, Syncthing and lsyncd, side by side, on loopback.

For each tool: set up a pair A -> B, wait until a probe file written on A shows up on B, then
N times: write a new small file (random size and bytes, unique name) on A with open+write+close,
take t0 right after close(), poll B every 1 ms until the file is there with exactly those bytes
(t1 = the start of the successful check), latency = t1 - t0. The next change is written only
after the previous one arrived (or timed out) plus a gap, so at most one change is in flight.

    python3 bench/daemon/latency.py                                   # all tools, 200 changes
    python3 bench/daemon/latency.py --tools syncthing,lsyncd --changes 20
    python3 bench/daemon/latency.py --tools weave,weave0 --json /tmp/lat.json

Tools: weave (two daemons, default watch delay 50 ms), weave0 (the same with --watch-delay 0),
syncthing (fsWatcherDelayS=1, its minimum), lsyncd (-delay 0, rsync to a local directory).
See bench/daemon/README.md.
"""

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_WEAVE, BenchError, LsyncdPair, Procs, SyncthingPair,  # noqa: E402
                    WeavePair, cleanup, cpu_ticks, file_matches, rss_kib, install_signal_handlers, log, percentile,
                    tool_versions, wait_probe, weave_cli_missing)

TOOLS = ("weave", "weave0", "syncthing", "lsyncd")
POLL_S = 0.001          # how often B is checked
ALIVE_EVERY_S = 0.2     # how often the tool's processes are checked while waiting
MAX_CONSECUTIVE_TIMEOUTS = 5


def make_pair(tool, base, procs, args):
    if tool in ("weave", "weave0"):
        why = weave_cli_missing(args.weave)
        if why:
            return None, why
        return WeavePair(args.weave, base, procs, name=tool,
                         watch_delay_ms=0 if tool == "weave0" else None), None
    if tool == "syncthing":
        return SyncthingPair(base, procs, watch_delay_s=1), None
    if tool == "lsyncd":
        return LsyncdPair(base, procs), None
    raise ValueError(tool)


def measure(pair, tool, args, rng):
    """Run warm-up + measured changes on a ready pair; return (latencies in ms, timeouts, gap_ms)."""
    gap_ms = args.gap_ms if tool != "syncthing" else max(args.gap_ms, args.syncthing_gap_ms)
    lat, timeouts, consecutive = [], 0, 0
    total = args.warmup + args.changes
    for i in range(total):
        warm = i < args.warmup
        size = rng.randint(args.min_size, args.max_size)
        data = rng.randbytes(size)
        name = f"lat-{i:05d}-{rng.getrandbits(32):08x}.bin"
        a_path, b_path = os.path.join(pair.a_dir, name), os.path.join(pair.b_dir, name)

        with open(a_path, "wb") as f:
            f.write(data)
        t0 = time.perf_counter()
        deadline = t0 + args.timeout
        next_alive = t0 + ALIVE_EVERY_S
        t1 = None
        while True:
            now = time.perf_counter()
            if file_matches(b_path, data):
                t1 = now
                break
            if now >= deadline:
                break
            if now >= next_alive:
                pair.check_alive()
                next_alive = now + ALIVE_EVERY_S
            time.sleep(POLL_S)

        if t1 is None:
            log(f"{tool}: {'warm-up' if warm else 'change'} {name} timed out after {args.timeout}s")
            if not warm:
                timeouts += 1
            consecutive += 1
            if consecutive >= MAX_CONSECUTIVE_TIMEOUTS:
                raise BenchError(f"{consecutive} timeouts in a row; giving up on {tool}")
        else:
            consecutive = 0
            ms = (t1 - t0) * 1000.0
            if not warm:
                lat.append(ms)
            if args.verbose:
                label = f"warm-up {i + 1}" if warm else f"change {i + 1 - args.warmup}"
                log(f"{tool}: {label}: {size} B {ms:.1f} ms")
        done = i + 1 - args.warmup
        if done > 0 and done % 50 == 0:
            log(f"{tool}: {done}/{args.changes} changes")
        time.sleep((gap_ms + rng.uniform(0, args.jitter_ms)) / 1000.0)
    return lat, timeouts, gap_ms


def prefill(a_dir, n):
    """n small files on A before the pair starts, 1000 per directory."""
    for i in range(n):
        d = os.path.join(a_dir, "prefill", f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            f.write(b"prefill %d\n" % i)


def wait_count(pair, n, timeout):
    """Wait (bounded) until B holds the n prefilled files."""
    root = os.path.join(pair.b_dir, "prefill")
    t0 = time.monotonic()
    while True:
        have = sum(len(files) for _, _, files in os.walk(root)) if os.path.isdir(root) else 0
        if have >= n:
            log(f"{pair.name}: the {n} prefilled files are on B ({time.monotonic() - t0:.1f}s after the probe)")
            return
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"only {have} of the {n} prefilled files reached B in {timeout}s")
        pair.check_alive()
        time.sleep(1.0)


def summarize(lat, timeouts):
    s = sorted(lat)
    return {"n": len(s), "timeouts": timeouts,
            "p50_ms": percentile(s, 50), "p90_ms": percentile(s, 90),
            "p99_ms": percentile(s, 99), "max_ms": s[-1] if s else None,
            "min_ms": s[0] if s else None,
            "mean_ms": sum(s) / len(s) if s else None}


def settle(pids, tool, quiet_ticks=3, timeout=300):
    """Waits (bounded) until the processes use almost no CPU (at most `quiet_ticks` clock ticks in a
    second, all of them together): what the first sync left to do is done before CPU is counted."""
    if not pids:
        return
    t0 = time.monotonic()
    last = sum(cpu_ticks(pid) for pid in pids)
    while time.monotonic() - t0 < timeout:
        time.sleep(1)
        now = sum(cpu_ticks(pid) for pid in pids)
        if now - last <= quiet_ticks:
            log(f"{tool}: quiet after {time.monotonic() - t0:.0f}s")
            return
        last = now
    log(f"{tool}: still busy after {timeout}s; CPU per change includes that")


def run_tool(tool, root, procs, args, rng):
    base = os.path.join(root, tool)
    os.makedirs(base)
    pair, why = make_pair(tool, base, procs, args)
    if pair is None:
        log(f"{tool}: SKIPPED: {why}")
        return {"skipped": why}
    log(f"{tool}: {pair.describe()}")
    try:
        if args.prefill:
            t = time.monotonic()
            prefill(pair.a_dir, args.prefill)
            log(f"{tool}: {args.prefill} files written on A in {time.monotonic() - t:.1f}s")
        pair.setup()
        wait_probe(pair, args.ready_timeout)
        if args.prefill:
            wait_count(pair, args.prefill, args.ready_timeout)
        pids = [p.pid for p in getattr(pair, "p", {}).values()]
        peaks = [rss_kib(pid, "VmHWM") for pid in pids]
        first_peak = sum(peaks)
        settle(pids, tool)
        cpu0 = sum(cpu_ticks(pid) for pid in pids)
        lat, timeouts, gap_ms = measure(pair, tool, args, rng)
        res = summarize(lat, timeouts)
        if pids:
            tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
            cpu = (sum(cpu_ticks(pid) for pid in pids) - cpu0) * tick_ms
            res.update(cpu_ms_per_change=cpu / max(1, args.warmup + args.changes),
                       rss_mib=[round(rss_kib(pid) / 1024, 1) for pid in pids],
                       ready_peak_rss_mib=round(first_peak / 1024, 1),
                       ready_peaks_mib=[round(x / 1024, 1) for x in peaks])
        res.update(setup=pair.describe(), gap_ms=gap_ms, samples_ms=[round(x, 3) for x in lat])
        return res
    except BenchError as e:
        log(f"{tool}: FAILED: {e}")
        return {"failed": str(e)}
    finally:
        pair.stop()


def fmt(v):
    return "-" if v is None else f"{v:.1f}"


def print_table(results, args):
    print(f"\nlatency from close() on A to the complete file on B; {args.changes} changes "
          f"of {args.min_size}-{args.max_size} B each, B polled every {POLL_S * 1000:g} ms; ms"
          + (f"; the folder already holds {args.prefill} files" if args.prefill else ""))
    print(f"{'tool':<10} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'timeouts':>9}")
    for tool, r in results.items():
        if "skipped" in r or "failed" in r:
            what = "skipped" if "skipped" in r else "FAILED"
            reason = (r.get("skipped") or r.get("failed")).splitlines()[0]
            print(f"{tool:<10} {what}: {reason}")
            continue
        print(f"{tool:<10} {r['n']:>5} {fmt(r['p50_ms']):>8} {fmt(r['p90_ms']):>8} "
              f"{fmt(r['p99_ms']):>8} {fmt(r['max_ms']):>8} {r['timeouts']:>9}")
    print("\nCPU of both processes (utime+stime, all threads) per change while measuring, the RSS of "
          "each at the end, and their peak RSS (VmHWM) once the folder was in sync, each and summed")
    for tool, r in results.items():
        if "cpu_ms_per_change" in r:
            rss = " + ".join(f"{x:g}" for x in r["rss_mib"])
            peaks = " + ".join(f"{x:g}" for x in r.get("ready_peaks_mib", []))
            print(f"{tool:<10} cpu {r['cpu_ms_per_change']:.1f} ms/change   rss {rss} MiB   "
                  f"peak by ready {peaks} = {r['ready_peak_rss_mib']:g} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help=f"comma-separated, from {','.join(TOOLS)} (default: all)")
    ap.add_argument("--changes", type=int, default=200, help="measured changes per tool (200)")
    ap.add_argument("--prefill", type=int, default=0,
                    help="files already in the folder (synced before measuring), e.g. 100000 (0)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured changes after the probe (2)")
    ap.add_argument("--weave", default=DEFAULT_WEAVE, help=f"weave binary ({DEFAULT_WEAVE})")
    ap.add_argument("--json", metavar="OUT", help="also write the results (with every sample) here")
    ap.add_argument("--gap-ms", type=float, default=150,
                    help="pause after a change arrived before the next one is written (150)")
    ap.add_argument("--syncthing-gap-ms", type=float, default=1000,
                    help="the pause for Syncthing, at least one fsWatcherDelayS (1000)")
    ap.add_argument("--jitter-ms", type=float, default=50,
                    help="a random 0..J ms added to every pause (50)")
    ap.add_argument("--min-size", type=int, default=100)
    ap.add_argument("--max-size", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=30, help="per-change timeout, s (30)")
    ap.add_argument("--ready-timeout", type=float, default=60,
                    help="how long to wait for the probe file after start, s (60)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every change")
    args = ap.parse_args()

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad or not tools:
        ap.error(f"unknown tool(s) {bad}; choose from {','.join(TOOLS)}")
    if not (0 < args.min_size <= args.max_size) or args.changes < 1:
        ap.error("need 0 < --min-size <= --max-size and --changes >= 1")

    install_signal_handlers()
    rng = random.Random(args.seed)
    procs = Procs()
    root = tempfile.mkdtemp(prefix="weave-latency-", dir=args.tmp)
    results = {}
    log(f"work directory {root}")
    try:
        for tool in tools:
            results[tool] = run_tool(tool, root, procs, args, rng)
    finally:
        cleanup(procs, root, args.keep)

    print_table(results, args)
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "cpus": os.cpu_count(), "kernel": platform.release(),
                "versions": tool_versions(args.weave),
                "args": vars(args), "poll_ms": POLL_S * 1000,
                "percentiles": "nearest rank over the measured (not timed-out) changes"}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        log(f"wrote {args.json}")
    return 1 if any("failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
