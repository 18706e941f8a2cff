"""Processes on this machine, from Linux's /proc, and its free ports: what the output-dir lock and the Ray runtime
ask of them (and the tests and benchmarks, which look at the processes a run starts)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (so field 4, the parent pid, is [1]; field 6, the session,
    is [3]; field 22, the start time, is [19]); [] when unknown (no such process, not Linux). The name may hold
    spaces and ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def pids() -> list[int]:
    """Every process of the machine (none where there is no /proc)."""
    return [int(e) for e in (os.listdir("/proc") if os.path.isdir("/proc") else []) if e.isdigit()]


def parents() -> dict[int, int]:
    """pid -> parent pid of every process, in one pass over /proc."""
    return {p: int(f[1]) for p in pids() if (f := proc_stat(p))}


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux; elsewhere none)."""
    return [p for p, pp in parents().items() if pp == pid]


def descendants(*roots: int) -> set[int]:
    """Every live process below the roots (children, grandchildren, ...), the roots themselves not included."""
    parent = parents()
    out, frontier = set(), set(roots)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def session(sid: int) -> list[int]:
    """The processes of session `sid` (started with start_new_session: the session of the process `sid`)."""
    return [p for p in pids() if proc_stat(p)[3:4] == [str(sid)]]


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    f = proc_stat(pid)
    return bool(f) and f[0] != "Z"


def cmdline(pid: int) -> str:
    """Its command line, words joined by spaces ('' when it is gone or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22); '' when unknown."""
    return (proc_stat(pid)[19:20] or [""])[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def boot_id() -> str:
    """This boot of the machine ('' when unknown): a pid from before a reboot is another process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def port_holder(port: int) -> int | None:
    """The pid of a process listening on TCP `port` (any address), from /proc/net/tcp{,6} and the processes'
    sockets; None when unknown (nobody listens, another user's process, not Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = [line.split() for line in Path(table).read_text().splitlines()[1:]]
        except OSError:
            continue
        # local address "0100007F:1388", state 0A = LISTEN, inode
        inodes |= {r[9] for r in rows if r[3] == "0A" and int(r[1].rsplit(":", 1)[1], 16) == port}
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
                return int(entry)
    return None


def command_line(pid: int, limit: int = 120) -> str:
    """The process's command line ('' when unknown), cut at `limit` characters."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    text = " ".join(" ".join(a.decode(errors="replace") for a in args if a).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free_port() -> int:
    """A free TCP port on loopback (bound, then released): for a local Ray's GCS, a test's server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
