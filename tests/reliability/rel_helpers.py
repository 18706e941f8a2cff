"""Helpers of the reliability tests (a unique module name: tests/ is not a package): run the CLI entry points
as users do, break copies of a dataset, and look at processes and sockets through /proc (Linux)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from asc_ray.errors import proc_stat

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


# ------------------------------------------------------------------------------------------ processes
def sigint_default() -> None:
    """`preexec_fn` for a child that must see Ctrl-C as a terminal's foreground job does: pytest started in the
    background (`cmd &`) passes SIGINT on ignored, and the child's SIGINT would then never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ppid(pid: int) -> int | None:
    f = proc_stat(pid)
    return int(f[1]) if f else None


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            pp = _ppid(int(d.name))
            if pp is not None:
                parent[int(d.name)] = pp
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def alive(pid: int) -> bool:
    f = proc_stat(pid)
    return bool(f) and f[0] != "Z"  # a zombie has exited


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -------------------------------------------------------------------------------------------- sockets
def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return out


def _addr(hexaddr: str) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
    return str(ip), int(port_hex, 16)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state held by one of `pids`."""
    inode_pid = {ino: pid for pid in pids for ino in _socket_inodes(pid)}
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inode_pid:  # 0A = LISTEN
                ip, port = _addr(f[1])
                out.append((inode_pid[f[9]], ip, port))
    return out


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ CLI
def cli_env(mlflow_uri: str, **extra: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RAY_ADDRESS", "ASC_RAY_PASST_CHECKPOINT", "ASC_RAY_TEST_PID_DIR"):
        env.pop(k, None)
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict, cwd: Path, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    r = subprocess.run([PY, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0
