"""Shared pieces of the live-sync benchmarks (latency.py, throughput.py, idle.py).

- Procs: every process the harness starts, each in its own process group, so that
  stop_all() (called from a `finally`) ends the process and anything it spawned.
- free ports on 127.0.0.1, bounded waits, the tool versions for the report.
- Three "pairs" with one interface (setup(), a_dir, b_dir, check_alive(), stop()):
    WeavePair      two `weave daemon`s sharing one folder
    SyncthingPair  two headless Syncthing instances sharing one send-receive folder
    LsyncdPair     lsyncd one-way A -> B with rsync to a local directory
  All of them listen on and dial 127.0.0.1 only.

Nothing here loops without a bound: every wait has a timeout.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

DEFAULT_WEAVE = "/work/main/target/release/weave"


class BenchError(Exception):
    """A tool could not be set up or died; the harness reports it and goes on with the next tool."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def install_signal_handlers():
    """Turn SIGTERM/SIGHUP into SystemExit so that `finally` blocks (process cleanup) run."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join("    " + l for l in lines[-n:])
    except OSError:
        return "    (no log)"


# ------------------------------------------------------------------ processes

class Procs:
    """Processes started by the harness. Each one leads its own process group."""

    def __init__(self):
        self.items = []  # (name, Popen, log path)

    def start(self, name, argv, log_path, env=None, cwd=None):
        with open(log_path, "ab") as logf:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env=env, cwd=cwd)
        self.items.append((name, p, log_path))
        log(f"started {name} (pid {p.pid}): {' '.join(map(str, argv))}")
        return p

    @staticmethod
    def _killpg(pid, sig):
        try:
            os.killpg(pid, sig)  # pgid == pid: start_new_session made it a group leader
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, p, grace=10.0):
        """SIGTERM the process group, wait up to `grace` s, then SIGKILL whatever is left."""
        if p.poll() is None:
            self._killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while children of the group remain
        self._killpg(p.pid, signal.SIGKILL)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"pid {p.pid} did not exit after SIGKILL")

    def stop_all(self):
        while self.items:
            name, p, _ = self.items.pop()
            self.stop(p)

    def dead(self, procs):
        """The (name, exit code, log) of the first process of `procs` that has exited, else None."""
        for name, p, path in self.items:
            if p in procs and p.poll() is not None:
                return name, p.returncode, path
        return None


def cleanup(procs, root, keep):
    """Stop every process started, then remove the work directory (unless keep)."""
    if procs.items:
        log(f"stopping {len(procs.items)} process(es)")
    procs.stop_all()
    if keep:
        log(f"kept {root}")
    else:
        log(f"removing {root}")
        shutil.rmtree(root, ignore_errors=True)


def run(argv, timeout=60, check=True, env=None):
    """Run a short command; return its CompletedProcess (text). Raises BenchError on failure."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env=env)
    except FileNotFoundError as e:
        raise BenchError(f"{argv[0]}: not found") from e
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out after {timeout}s: {' '.join(map(str, argv))}") from e
    if check and r.returncode != 0:
        raise BenchError(f"exit {r.returncode}: {' '.join(map(str, argv))}\n"
                         f"{(r.stderr or r.stdout).strip()[-2000:]}")
    return r


def free_ports(n):
    """n distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def wait_until(pred, timeout, interval, what, alive=None):
    """Call pred() every `interval` s until it returns a true value (returned) or `timeout` s pass
    (BenchError). `alive`, if given, is called each round and may raise BenchError."""
    deadline = time.monotonic() + timeout
    last_err = None
    while True:
        if alive:
            alive()
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError, KeyError, BenchError, urllib.error.URLError) as e:
            last_err = e
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}"
                             + (f" (last error: {last_err})" if last_err else ""))
        time.sleep(interval)


def file_matches(path, data):
    """True if `path` exists with exactly the bytes `data`."""
    try:
        if os.stat(path).st_size != len(data):
            return False
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


def wait_probe(pair, timeout):
    """Write a small probe file on A and wait until it is on B: the pair is syncing."""
    name = f"probe-{os.getpid()}-{time.time_ns()}.txt"
    data = f"probe {name}\n".encode()
    t0 = time.monotonic()
    with open(os.path.join(pair.a_dir, name), "wb") as f:
        f.write(data)
    wait_until(lambda: file_matches(os.path.join(pair.b_dir, name), data), timeout, 0.01,
               f"{pair.name}: probe file to reach B", alive=pair.check_alive)
    log(f"{pair.name}: ready (probe reached B in {time.monotonic() - t0:.2f}s)")


def tool_versions(weave=None):
    cmds = {"syncthing": ["syncthing", "--version"], "lsyncd": ["lsyncd", "--version"],
            "rsync": ["rsync", "--version"]}
    if weave:
        cmds["weave"] = [weave, "--version"]
    out = {}
    for k, argv in cmds.items():
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out[k] = ((r.stdout or r.stderr).strip().splitlines() or [""])[0]
        except (OSError, subprocess.TimeoutExpired):
            out[k] = None
    return out


def cpu_ticks(pid):
    """utime + stime of a process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def rss_kib(pid, field="VmRSS"):
    """A memory figure of a process from /proc/PID/status (VmRSS, or VmHWM: its peak), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def percentile(sorted_vals, p):
    """Nearest-rank percentile of an ascending list (a value that was actually measured)."""
    if not sorted_vals:
        return None
    k = max(1, -(-len(sorted_vals) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_vals[min(len(sorted_vals), int(k)) - 1]


def parse_size(s):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", s.lower())
    if not m:
        raise ValueError(f"bad size: {s!r} (examples: 1G, 64M, 100k, 4096)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * mult)


# ---------------------------------------------------------------------- weave

def weave_cli_missing(weave):
    """None if `weave init --help` works (the daemon CLI exists), else why weave is skipped."""
    if not os.path.isfile(weave) or not os.access(weave, os.X_OK):
        return f"weave binary not found or not executable: {weave}"
    try:
        r = subprocess.run([weave, "init", "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{weave} init --help` failed: {e}"
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        return (f"`{weave} init --help` exited {r.returncode} ({msg[0] if msg else 'no output'}): "
                f"this weave has no daemon CLI yet")
    return None


def weave_init(weave, cfg, listen, name):
    """`weave --config-dir CFG init --listen ADDR --name NAME`; returns the device id (last stdout line)."""
    os.makedirs(cfg, exist_ok=True)
    r = run([weave, "--config-dir", cfg, "init", "--listen", listen, "--name", name])
    lines = [l.strip() for l in r.stdout.splitlines() if l.strip()]
    if not lines:
        raise BenchError(f"weave init ({name}) printed no device id")
    return lines[-1]


class WeavePair:
    """Two `weave daemon`s on loopback, each with the other as peer, sharing FOLDER_ID."""

    FOLDER_ID = "bench"

    def __init__(self, weave, base, procs, name="weave", watch_delay_ms=None):
        self.weave, self.base, self.procs, self.name = weave, base, procs, name
        self.watch_delay_ms = watch_delay_ms
        self.a_dir = os.path.join(base, "A", "data")
        self.b_dir = os.path.join(base, "B", "data")
        self.cfg = {n: os.path.join(base, n, "config") for n in "AB"}
        self.ids = {}
        self.p = {}

    def describe(self):
        d = "default (50 ms)" if self.watch_delay_ms is None else f"{self.watch_delay_ms} ms"
        return f"two weave daemons on 127.0.0.1, watch delay {d}"

    def setup(self):
        w = self.weave
        port = dict(zip("AB", free_ports(2)))
        cfg, ids = self.cfg, self.ids
        data = {"A": self.a_dir, "B": self.b_dir}
        for n in "AB":
            os.makedirs(data[n], exist_ok=True)
            ids[n] = weave_init(w, cfg[n], f"127.0.0.1:{port[n]}", f"peer-{n}")
        for n, o in (("A", "B"), ("B", "A")):
            run([w, "--config-dir", cfg[n], "peer", "add", f"peer-{o}", ids[o], f"127.0.0.1:{port[o]}"])
            argv = [w, "--config-dir", cfg[n], "folder", "add", self.FOLDER_ID, data[n],
                    "--peer", f"peer-{o}"]
            if self.watch_delay_ms is not None:
                argv += ["--watch-delay", str(self.watch_delay_ms)]
            run(argv)
        self.start()
        log(f"{self.name}: A={ids['A']} on :{port['A']}, B={ids['B']} on :{port['B']}")

    def start(self):
        """Starts both daemons (again, after `stop`)."""
        for n in "AB":
            self.p[n] = self.procs.start(f"{self.name}-{n}",
                                         [self.weave, "--config-dir", self.cfg[n], "daemon"],
                                         os.path.join(self.base, n, "daemon.log"))

    def in_sync(self, n):
        """Whether daemon `n` ("A" or "B") says its folder is idle and in sync with its peer."""
        r = subprocess.run([self.weave, "--config-dir", self.cfg[n], "status", "--json"],
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            return False
        s = json.loads(r.stdout)
        other = "peer-B" if n == "A" else "peer-A"
        return any(f.get("id") == self.FOLDER_ID and f.get("state") == "idle"
                   and other in f.get("in_sync_with", []) for f in s.get("folders", []))

    def check_alive(self):
        d = self.procs.dead(list(self.p.values()))
        if d:
            raise BenchError(f"{d[0]} exited with {d[1]}; log tail:\n{tail(d[2])}")

    def stop(self):
        for p in self.p.values():
            self.procs.stop(p)


# ------------------------------------------------------------------ syncthing

class SyncthingPair:
    """Two headless Syncthing instances on 127.0.0.1 sharing one send-receive folder.

    Discovery (global and local), relays, NAT traversal, usage and crash reporting, auto-upgrade
    and the browser are switched off in config.xml before the first start. Quirks of 1.19
    (Debian bookworm): `cli config devices add --addresses` panics, so the address is set in a
    second step; fsWatcherDelayS is whole seconds, at least 1.
    """

    FOLDER_ID = "bench"

    def __init__(self, base, procs, watch_delay_s=1, binary="syncthing", name="syncthing"):
        self.base, self.procs, self.st, self.name = base, procs, binary, name
        self.watch_delay_s = watch_delay_s
        self.a_dir = os.path.join(base, "A", "data")
        self.b_dir = os.path.join(base, "B", "data")
        self.home = {n: os.path.join(base, n, "home") for n in "AB"}
        self.gui, self.listen, self.key, self.ids, self.p = {}, {}, {}, {}, {}
        self.env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1")

    def describe(self):
        return (f"two Syncthing instances on 127.0.0.1, send-receive folder, "
                f"fsWatcherDelayS={self.watch_delay_s}")

    def api(self, n, method, path, timeout=10):
        req = urllib.request.Request(f"http://{self.gui[n]}{path}", method=method,
                                     headers={"X-API-Key": self.key[n]})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body.strip() else None

    def cli(self, n, *args):
        return run([self.st, "cli", "--home", self.home[n], *args], env=self.env)

    def _generate(self, n):
        h = self.home[n]
        os.makedirs(h, exist_ok=True)
        os.makedirs(os.path.join(self.base, n, "data"), exist_ok=True)
        run([self.st, "generate", "--home", h, "--no-default-folder", "--skip-port-probing"],
            env=self.env)
        path = os.path.join(h, "config.xml")
        with open(path) as f:
            xml = f.read()
        subs = [  # (pattern, replacement, required)
            (r"<address>127\.0\.0\.1:8384</address>", f"<address>{self.gui[n]}</address>", True),
            (r"<apikey>.*?</apikey>", f"<apikey>{self.key[n]}</apikey>", True),
            (r"<listenAddress>default</listenAddress>",
             f"<listenAddress>{self.listen[n]}</listenAddress>", True),
            (r"<globalAnnounceEnabled>true<", "<globalAnnounceEnabled>false<", True),
            (r"<localAnnounceEnabled>true<", "<localAnnounceEnabled>false<", True),
            (r"<relaysEnabled>true<", "<relaysEnabled>false<", True),
            (r"<natEnabled>true<", "<natEnabled>false<", False),
            (r"<startBrowser>true<", "<startBrowser>false<", False),
            (r"<urAccepted>0<", "<urAccepted>-1<", False),
            (r"<crashReportingEnabled>true<", "<crashReportingEnabled>false<", False),
            (r"<autoUpgradeIntervalH>12<", "<autoUpgradeIntervalH>0<", False),
            (r"<stunKeepaliveStartS>180<", "<stunKeepaliveStartS>0<", False),
            (r"<stunKeepaliveMinS>20<", "<stunKeepaliveMinS>0<", False),
        ]
        for pat, rep, required in subs:
            xml, k = re.subn(pat, rep, xml)
            if k == 0 and required:
                raise BenchError(f"syncthing {n}: config.xml has no match for {pat}")
        with open(path, "w") as f:
            f.write(xml)
        self.ids[n] = run([self.st, "serve", "--home", h, "--device-id"], env=self.env).stdout.strip()

    def _start(self, n):
        self.p[n] = self.procs.start(
            f"{self.name}-{n}",
            [self.st, "serve", "--home", self.home[n], "--no-browser", "--no-restart",
             "--no-upgrade", "--logflags=3"],
            os.path.join(self.base, n, "syncthing.log"), env=self.env)
        wait_until(lambda: self.api(n, "GET", "/rest/system/ping"), 30, 0.2,
                   f"syncthing {n} REST API", alive=self.check_alive)

    def setup(self):
        if not shutil.which(self.st):
            raise BenchError(f"{self.st} not installed (apt-get install syncthing)")
        ports = free_ports(4)
        for i, n in enumerate("AB"):
            self.gui[n] = f"127.0.0.1:{ports[i]}"
            self.listen[n] = f"tcp://127.0.0.1:{ports[2 + i]}"
            self.key[n] = f"bench-apikey-{n}-{os.getpid()}"
        for n in "AB":
            self._generate(n)
        for n in "AB":
            self._start(n)
        for n, o in (("A", "B"), ("B", "A")):
            self.cli(n, "config", "devices", "add", "--device-id", self.ids[o], "--name", f"peer-{o}")
            self.cli(n, "config", "devices", self.ids[o], "addresses", "0", "set", self.listen[o])
        for n, o in (("A", "B"), ("B", "A")):
            data = os.path.join(self.base, n, "data")
            self.cli(n, "config", "folders", "add", "--id", self.FOLDER_ID, "--label", self.FOLDER_ID,
                     "--path", data, "--type", "sendreceive", "--rescan-intervals", "3600",
                     "--fswatcher-enabled", "--fswatcher-delays", str(self.watch_delay_s))
            self.cli(n, "config", "folders", self.FOLDER_ID, "devices", "add", "--device-id", self.ids[o])

        def ready():
            c = self.api("A", "GET", "/rest/system/connections")["connections"]
            if not c.get(self.ids["B"], {}).get("connected"):
                return False
            return all(self.api(n, "GET", f"/rest/db/status?folder={self.FOLDER_ID}")["state"] == "idle"
                       for n in "AB")
        wait_until(ready, 60, 0.2, "syncthing A and B connected and idle", alive=self.check_alive)
        log(f"{self.name}: A={self.ids['A'][:7]} B={self.ids['B'][:7]} connected, folder idle")

    def check_alive(self):
        d = self.procs.dead(list(self.p.values()))
        if d:
            raise BenchError(f"{d[0]} exited with {d[1]}; log tail:\n{tail(d[2])}")

    def stop(self):
        for p in self.p.values():
            self.procs.stop(p)


# --------------------------------------------------------------------- lsyncd

class LsyncdPair:
    """lsyncd watching A (inotify), rsync to the local directory B on every change, delay 0.
    One-way only; there is no daemon on B."""

    def __init__(self, base, procs, name="lsyncd"):
        self.base, self.procs, self.name = base, procs, name
        self.a_dir = os.path.join(base, "A")
        self.b_dir = os.path.join(base, "B")
        self.p = None

    def describe(self):
        return "lsyncd -delay 0 -rsync A B (one-way, rsync to a local directory)"

    def setup(self):
        for t in ("lsyncd", "rsync"):
            if not shutil.which(t):
                raise BenchError(f"{t} not installed (apt-get install lsyncd rsync)")
        os.makedirs(self.a_dir, exist_ok=True)
        os.makedirs(self.b_dir, exist_ok=True)
        self.p = self.procs.start(self.name, ["lsyncd", "-nodaemon", "-delay", "0", "-rsync",
                                              self.a_dir, self.b_dir],
                                  os.path.join(self.base, "lsyncd.log"))

    def check_alive(self):
        d = self.procs.dead([self.p])
        if d:
            raise BenchError(f"{d[0]} exited with {d[1]}; log tail:\n{tail(d[2])}")

    def stop(self):
        self.procs.stop(self.p)
