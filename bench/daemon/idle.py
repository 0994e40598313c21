#!/usr/bin/env python3
"""Idle cost of a `weave daemon` watching a large folder: CPU % and resident memory.

Generates a folder of 100,000 small files (0-2 KiB of random bytes, 100 per directory in
1,000 nested directories dNNN/eN/) and gives it to weave daemon A. Then waits until A's first
sync is over (and 5 s more), and for 60 s samples A's CPU time (utime + stime from /proc/PID/stat, all
threads) and RSS (VmRSS from /proc/PID/status, once a second). Nothing changes meanwhile.

Two modes (--peer):
  live (default)  a second daemon B with an empty folder is A's peer: A's first sync indexes
                  the 100,000 files and copies them to B, so A is measured holding a full index.
                  B is sampled too.
  down            A's only peer is at an address nobody listens on. NOTE: weave's daemon scans a
                  folder as part of a sync with a peer, so with the peer down A never indexes the
                  folder: this measures the watcher and the retry loop only.

    python3 bench/daemon/idle.py
    python3 bench/daemon/idle.py --peer down
    python3 bench/daemon/idle.py --files 20000 --sample-s 30 --json /tmp/idle.json

"First sync over" is read from `weave --config-dir DIR status --json`, polled every second (see
first_sync_done()); if that command still fails 30 s after the start, or its output lacks the
expected fields, the script waits a fixed --scan-wait (60 s) instead and says so.
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_WEAVE, BenchError, Procs, WeavePair, cleanup, cpu_ticks, rss_kib,  # noqa: E402
                    free_ports, install_signal_handlers, log, run, tail, weave_cli_missing, weave_init)

CLK_TCK = os.sysconf("SC_CLK_TCK")
STATUS_GRACE_S = 30  # how long `status --json` may fail after the start before it is given up


def generate(root, files, seed):
    """`files` small files under root/dNNN/eN/fNNNNNNN.dat, 100 per leaf directory."""
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


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def first_sync_done(st, mode):
    """From `weave status --json`: True when every folder's first sync is over, False while not,
    None when the fields this relies on are missing (then the caller waits a fixed time).

    A folder's state starts as "idle" before the daemon has looked at it, so idle alone is not
    enough: live mode also wants every folder in sync with all its peers (in_sync_percent 100);
    down mode wants every peer to have been tried (state "disconnected" or a last_error)."""
    folders, peers = st.get("folders"), st.get("peers")
    if not isinstance(folders, list) or not folders or not isinstance(peers, list):
        return None
    try:
        if any(f["state"] != "idle" for f in folders):
            return False
        if mode == "live":
            return all(f["in_sync_percent"] >= 100 for f in folders)
        return all(p["state"] == "disconnected" or p.get("last_error") for p in peers)
    except (KeyError, TypeError):
        return None


def status_json(weave, cfg):
    """Parsed `status --json` of the daemon with config dir cfg, or an error string."""
    try:
        r = subprocess.run([weave, "--config-dir", cfg, "status", "--json"], capture_output=True,
                           text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "timed out"
    if r.returncode != 0:
        return f"exited {r.returncode}: {(r.stderr or '').strip()[:300]}"
    try:
        return json.loads(r.stdout)
    except ValueError:
        return "not JSON"


def wait_first_sync(weave, daemons, mode, args):
    """daemons: {name: (config dir, Popen)}. Returns (how it was decided, seconds or None)."""
    t0 = time.monotonic()
    deadline = t0 + args.scan_timeout
    last_log = 0.0
    while time.monotonic() < deadline:
        for name, (_, p) in daemons.items():
            if p.poll() is not None:
                raise BenchError(f"weave daemon {name} exited with {p.returncode}")
        states = {name: status_json(weave, cfg) for name, (cfg, _) in daemons.items()}
        bad = {n: s for n, s in states.items() if isinstance(s, str)}
        done = {n: first_sync_done(s, mode) for n, s in states.items() if not isinstance(s, str)}
        if bad and time.monotonic() - t0 < STATUS_GRACE_S:
            time.sleep(1)  # the daemon may not have opened its status API yet
            continue
        if bad or any(v is None for v in done.values()):
            why = "; ".join(f"{n}: {s}" for n, s in bad.items()) or \
                f"unexpected fields: {json.dumps(states)[:600]}"
            log(f"`weave status --json` cannot tell ({why}); waiting a fixed {args.scan_wait}s")
            break
        if all(done.values()):
            for n, s in states.items():
                log(f"{n} status: " + json.dumps({"folders": s["folders"], "peers": s["peers"]})[:500])
            return "status --json", time.monotonic() - t0
        if time.monotonic() - last_log >= 15:
            last_log = time.monotonic()
            log("waiting for the first sync: " + ", ".join(
                f"{n} {[(f['state'], f['in_sync_percent']) for f in s['folders']]}"
                for n, s in states.items()))
        time.sleep(1)
    else:
        raise BenchError(f"first sync not over after {args.scan_timeout}s (status --json)")
    end = min(time.monotonic() + args.scan_wait, deadline)
    while time.monotonic() < end:
        for name, (_, p) in daemons.items():
            if p.poll() is not None:
                raise BenchError(f"weave daemon {name} exited with {p.returncode}")
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    return f"fixed wait of {args.scan_wait}s", None


def sample(pids, seconds):
    """CPU % and RSS of each pid over `seconds`; {pid: {...}}."""
    t_start = time.monotonic()
    c_start = {p: cpu_ticks(p) for p in pids}
    rss = {p: [] for p in pids}
    end = t_start + seconds
    while True:
        for p in pids:
            rss[p].append(rss_kib(p))
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(1.0, end - now))
    wall = time.monotonic() - t_start
    out = {}
    for p in pids:
        cpu_s = (cpu_ticks(p) - c_start[p]) / CLK_TCK
        r = rss[p]
        out[p] = {"wall_s": wall, "cpu_s": cpu_s, "cpu_percent": 100.0 * cpu_s / wall,
                  "rss_mib_mean": sum(r) / len(r) / 1024, "rss_mib_max": max(r) / 1024,
                  "rss_mib_end": r[-1] / 1024, "rss_samples": len(r), "threads": threads(p)}
    return out


def start_down(root, procs, args):
    """Daemon A whose only peer is at an address nobody listens on."""
    data, cfg = os.path.join(root, "A", "data"), os.path.join(root, "A", "config")
    listen, dead = free_ports(2)
    weave_init(args.weave, cfg, f"127.0.0.1:{listen}", "idle-A")
    # a valid device id for the absent peer: that of a second, never started, config
    peer_id = weave_init(args.weave, os.path.join(root, "B", "config"), f"127.0.0.1:{dead}", "idle-B")
    run([args.weave, "--config-dir", cfg, "peer", "add", "idle-B", peer_id, f"127.0.0.1:{dead}"])
    run([args.weave, "--config-dir", cfg, "folder", "add", "idle", data, "--peer", "idle-B"])
    log_path = os.path.join(root, "A", "daemon.log")
    p = procs.start("weave-A", [args.weave, "--config-dir", cfg, "daemon"], log_path)
    return {"A": (cfg, p)}, {"A": log_path}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="files in the folder (100000)")
    ap.add_argument("--peer", choices=("live", "down"), default="live",
                    help="live: a second daemon B syncs with A (default); down: A's peer is absent")
    ap.add_argument("--sample-s", type=float, default=60, help="sampling period, s (60)")
    ap.add_argument("--settle-s", type=float, default=5,
                    help="pause between the end of the first sync and the sampling, s (5)")
    ap.add_argument("--scan-wait", type=float, default=60,
                    help="fixed wait for the first sync when status --json can't tell, s (60)")
    ap.add_argument("--scan-timeout", type=float, default=900,
                    help="give up if the first sync is not over after this, s (900)")
    ap.add_argument("--weave", default=DEFAULT_WEAVE, help=f"weave binary ({DEFAULT_WEAVE})")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.files < 1 or args.sample_s <= 0 or not 0 <= args.settle_s <= 600:
        ap.error("need --files >= 1, --sample-s > 0 and 0 <= --settle-s <= 600")

    why = weave_cli_missing(args.weave)
    if why:
        print(f"weave idle: skipped: {why}")
        return 0

    install_signal_handlers()
    procs = Procs()
    root = tempfile.mkdtemp(prefix="weave-idle-", dir=args.tmp)
    log(f"work directory {root}")
    result = None
    logs = {}
    try:
        try:
            if args.peer == "live":
                pair = WeavePair(args.weave, os.path.join(root, "pair"), procs, name="weave")
                os.makedirs(pair.a_dir)
                generate(pair.a_dir, args.files, args.seed)
                t_start = time.monotonic()
                pair.setup()
                daemons = {n: (pair.cfg[n], pair.p[n]) for n in "AB"}
                logs = {n: os.path.join(pair.base, n, "daemon.log") for n in "AB"}
            else:
                os.makedirs(os.path.join(root, "A", "data"))
                generate(os.path.join(root, "A", "data"), args.files, args.seed)
                t_start = time.monotonic()
                daemons, logs = start_down(root, procs, args)
            log(f"daemon(s) started; waiting for the first sync of {args.files} files")
            how, sync_s = wait_first_sync(args.weave, daemons, args.peer, args)
            log(f"first sync over ({how}) {time.monotonic() - t_start:.1f}s after start; "
                f"settling {args.settle_s:g}s, then sampling for {args.sample_s:g}s")
            time.sleep(args.settle_s)
            s = sample([p.pid for _, p in daemons.values()], args.sample_s)
            for name, (_, p) in daemons.items():
                if p.poll() is not None:
                    raise BenchError(f"weave daemon {name} exited with {p.returncode} while sampled")
        except (BenchError, OSError) as e:
            raise BenchError(f"{e}\n" + "\n".join(f"  {n} log tail:\n{tail(l)}"
                                                  for n, l in logs.items())) from e
        result = {"files": args.files, "peer": args.peer, "first_sync_detected_by": how,
                  "first_sync_s": sync_s,
                  "daemons": {n: s[p.pid] for n, (_, p) in daemons.items()}}
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        cleanup(procs, root, args.keep)

    r = result
    first = f"{r['first_sync_s']:.1f}s" if r["first_sync_s"] is not None else "(not measured)"
    print(f"\nweave daemon idle: {r['files']} files, peer {r['peer']}, first sync {first} "
          f"(detected by {r['first_sync_detected_by']})")
    print(f"{'daemon':<7} {'CPU %':>7} {'CPU s':>7} {'RSS mean':>9} {'RSS max':>8} {'threads':>8}")
    for n, d in r["daemons"].items():
        print(f"{n:<7} {d['cpu_percent']:>7.2f} {d['cpu_s']:>7.2f} {d['rss_mib_mean']:>9.1f} "
              f"{d['rss_mib_max']:>8.1f} {d['threads'] or '-':>8}")
    print(f"(CPU % of one core over {r['daemons']['A']['wall_s']:.0f}s; RSS in MiB)")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "cpus": os.cpu_count(), "args": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "result": r}, f, indent=1)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
