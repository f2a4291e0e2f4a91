"""Loopback port checks and ownership-checked process control (Linux /proc based).

Every process of the stack is launched through a throw-away ``/bin/sh`` that starts the
real command in the background and exits: the service is then re-parented to init (no
zombies, no ``Popen`` objects to keep alive) and sits in its own session / process group,
whose id we record next to the pid.  Before any signal is sent, the recorded pid must
still be alive, must still be in the recorded process group, and its ``/proc/<pid>/cmdline``
must still contain the markers recorded at launch (our run dir paths), so a recycled pid is
never signalled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .models import LOOPBACK, StackError

#: Environment variable set on every process we launch; children (e.g. PyFlink's Python
#: workers) inherit it, which lets `down` recognise orphans of a dead group leader.
OWNER_ENV = "SLUICE_STACK_RUN_DIR"


# ---------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------
def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True if something accepts connections on, or holds a bind of, ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            if s.connect_ex((host, port)) == 0:
                return True
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like the JVM servers do, so TIME_WAIT leftovers do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def wait_for_port(
    port: int, host: str = LOOPBACK, timeout: float = 30.0, interval: float = 0.25
) -> bool:
    """Wait until ``host:port`` accepts a TCP connection; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(min(1.0, max(0.05, deadline - time.monotonic())))
            try:
                if s.connect_ex((host, port)) == 0:
                    return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != "0A":  # 0A == LISTEN
                continue
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def port_owner(port: int) -> str | None:
    """Best effort "pid N (command …)" of the process listening on ``port`` (same user only)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        cmd = read_cmdline(int(proc.name)) or "?"
                        return f"pid {proc.name} ({_shorten(cmd)})"
        except OSError:
            continue
    return None


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------
def read_cmdline(pid: int) -> str | None:
    """The command line of ``pid`` joined by spaces, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ..." - comm may contain spaces/parens.
    return text[text.rindex(")") + 2 :].split()


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    st = _stat_fields(pid)
    if st is None:
        return False
    if st[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        return False
    return True


def process_group(pid: int) -> int | None:
    st = _stat_fields(pid)
    return int(st[2]) if st else None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is ``pgid``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        st = _stat_fields(int(proc.name))
        if st and st[0] not in ("Z", "X") and int(st[2]) == pgid:
            out.append(int(proc.name))
    return out


def _environ_has(pid: int, key: str, value: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{key}={value}".encode() in env


def owns(pid: int | None, markers: Sequence[str], pgid: int | None = None) -> bool:
    """True if ``pid`` is alive, still in group ``pgid`` (if given) and its command line
    contains every marker."""
    if not pid or not pid_alive(pid):
        return False
    cmd = read_cmdline(pid)
    if cmd is None or not all(m in cmd for m in markers):
        return False
    return pgid is None or process_group(pid) == pgid


def signal_owned(
    pid: int, markers: Sequence[str], sig: int, *, pgid: int | None = None, what: str = "process"
) -> None:
    """Send ``sig`` to ``pid``'s process group (or to ``pid`` if no group is recorded),
    after verifying ownership; raise StackError instead of signalling a foreign pid."""
    if not owns(pid, markers, pgid):
        cmd = read_cmdline(pid)
        state = "is not running" if cmd is None else f"now runs: {_shorten(cmd)}"
        raise StackError(
            f"refusing to signal {what} pid {pid}: its command line does not match what was "
            f"started ({', '.join(markers)}); the pid {state}",
            component=what,
        )
    with contextlib.suppress(ProcessLookupError):
        if pgid is not None:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


def owned_orphans(pgid: int, run_dir: str) -> list[int]:
    """Members of ``pgid`` that carry our owner marker in their environment."""
    return [p for p in group_members(pgid) if _environ_has(p, OWNER_ENV, run_dir)]


def spawn(cmd: Sequence[str], *, log_file: Path, cwd: Path, env: dict[str, str]) -> tuple[int, int]:
    """Start ``cmd`` detached (own session, stdin /dev/null, stdout+stderr appended to
    ``log_file``). Returns ``(pid, pgid)``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    script = 'log="$1"; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    res = subprocess.run(
        ["/bin/sh", "-c", script, "sluice-stack-launch", str(log_file), *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
        check=False,
    )
    if res.returncode != 0 or not res.stdout.strip().isdigit():
        raise StackError(f"could not launch {cmd[0]}: {res.stderr.strip() or res.stdout.strip()}")
    pid = int(res.stdout.strip())
    pgid = process_group(pid)
    if pgid is None:  # exited already; the caller's health wait will report the log
        pgid = pid
    return pid, pgid


def wait_gone(
    check: Iterable[tuple[int, int, Sequence[str]]], timeout: float, run_dir: str
) -> list[int]:
    """Wait until none of ``(pid, pgid, markers)`` is alive (leader owned, or orphans with
    our env marker). Returns the pgids that are still alive after ``timeout``."""
    items = list(check)
    deadline = time.monotonic() + timeout
    while True:
        alive = [
            pgid
            for pid, pgid, markers in items
            if owns(pid, markers, pgid) or owned_orphans(pgid, run_dir)
        ]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def kill_group(pid: int, pgid: int, markers: Sequence[str], sig: int, run_dir: str) -> bool:
    """Signal the group if its leader is verified ours; if the leader is gone, signal only
    the members that carry our owner marker. Returns True if anything was signalled."""
    if owns(pid, markers, pgid):
        signal_owned(pid, markers, sig, pgid=pgid)
        return True
    sent = False
    for member in owned_orphans(pgid, run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, sig)
            sent = True
    return sent


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
