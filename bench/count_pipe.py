#!/usr/bin/env python3
"""Run a remote-shell command and count the bytes that go through it.

    COUNT_PIPE_LOG=FILE count_pipe.py CMD [ARGS...]

Used by bench/net.sh as the remote shell of both weave (`--rsh`) and rsync
(`-e`): it runs CMD (the real `ssh ...`, with the host and remote command
that the tool appends), relays its own stdin to CMD's stdin and CMD's stdout
to its own stdout, and counts the bytes each way. These are the bytes the
tool itself writes into and reads out of ssh, i.e. the tool's protocol
stream before ssh encrypts and frames it; CMD's stderr is not relayed
through here (it goes straight to ours) and not counted.

When CMD ends, one line is appended to FILE (if COUNT_PIPE_LOG is set):

    sent=N received=M wall=S relay_cpu=S cmd_cpu=S rc=R

sent: bytes from the tool to CMD (to the remote side); received: bytes from
CMD to the tool; wall: seconds the session lasted; relay_cpu: CPU seconds of
this relay itself (user+sys, to check it is not a bottleneck); cmd_cpu: CPU
seconds of CMD (the local ssh client); rc: CMD's exit status, which is also
ours.

Each direction is relayed by its own thread with os.readv/os.write and one
1 MiB buffer (the pipes to CMD are enlarged to 1 MiB where the kernel allows), so
the relay costs one extra memory copy per direction.
"""
import fcntl
import os
import resource
import signal
import subprocess
import sys
import threading
import time

BUF = 1 << 20
F_SETPIPE_SZ = 1031  # Linux fcntl


def grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, BUF)
    except OSError:
        pass  # not a pipe, or above /proc/sys/fs/pipe-max-size: keep the default


def relay(src: int, dst: int, count: list, close_dst, close_src=None) -> None:
    n = 0
    # One buffer for the whole session: os.read would allocate a fresh 1 MiB
    # object per call, which glibc maps and unmaps, faulting its pages in
    # anew every time (a cost that then depended on each tool's write sizes).
    buf = bytearray(BUF)
    whole = memoryview(buf)
    try:
        while True:
            try:
                got = os.readv(src, [buf])
            except OSError:
                break
            if not got:
                break
            view = whole[:got]
            while view:
                w = os.write(dst, view)
                n += w
                count[0] = n
                view = view[w:]
    except OSError:
        pass  # the other end went away (EPIPE): nothing more can be relayed
    finally:
        count[0] = n
        close_dst()
        if close_src:
            close_src()  # so that a writer into src gets EPIPE instead of blocking


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    log = os.environ.get("COUNT_PIPE_LOG")
    t0 = time.monotonic()
    proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    to_cmd, from_cmd = proc.stdin.fileno(), proc.stdout.fileno()
    for fd in (0, 1, to_cmd, from_cmd):
        grow_pipe(fd)

    # pass termination signals on to CMD; the session then ends normally and is logged
    def forward(sig, _frame):
        try:
            proc.send_signal(sig)
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    sent, received = [0], [0]

    def close_to_cmd():
        try:
            proc.stdin.close()
        except OSError:
            pass

    def close_stdout():
        try:
            os.close(1)
        except OSError:
            pass

    up = threading.Thread(target=relay, args=(0, to_cmd, sent, close_to_cmd), daemon=True)
    def close_from_cmd():
        try:
            proc.stdout.close()
        except OSError:
            pass

    down = threading.Thread(target=relay, args=(from_cmd, 1, received, close_stdout, close_from_cmd),
                            daemon=True)
    up.start()
    down.start()
    rc = proc.wait()
    down.join()  # CMD has exited: its stdout reaches EOF once drained
    # `up` may still be blocked reading our stdin (the tool need not close it
    # before we exit); whatever it could still read cannot reach CMD any more.
    wall = time.monotonic() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    if log:
        line = "sent=%d received=%d wall=%.3f relay_cpu=%.3f cmd_cpu=%.3f rc=%d\n" % (
            sent[0], received[0], wall, me.ru_utime + me.ru_stime, ch.ru_utime + ch.ru_stime, rc)
        with open(log, "a") as f:
            f.write(line)
    os._exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    sys.exit(main())
