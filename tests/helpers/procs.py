"""Running the entry points as users run them, and the sockets a process listens on, from /proc (Linux); the
processes themselves: asc_ray.procs."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

from asc_ray.procs import cmdline, descendants, free_port
from asc_ray.procs import running as alive
from helpers.wait import wait_for

__all__ = ["alive", "cmdline", "descendants", "free_port"]  # (asc_ray.procs's, for the tests)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
PROBE_DIR = Path(__file__).parent / "probe"  # sitecustomize.py: see there
# variables a test's child must not inherit from the person running the tests
FOREIGN_ENV = ("RAY_ADDRESS", "ASC_RAY_PASST_CHECKPOINT", "ASC_RAY_PROBE_DIR", "ASC_RAY_PROBE_MODULES")


def cli_env(mlflow_uri: str | None = None, probe: bool = False, **extra: str) -> dict:
    """The environment of a CLI run: this one (the tests' isolated environment) without a cluster address, with
    the checkout importable and, with `probe`, the test probe (helpers/probe/sitecustomize.py) on the path of
    the child and of every Ray worker it starts."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    path = [str(ROOT), *([str(PROBE_DIR)] if probe else [])]
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    env.update(extra)
    return env


def run_py(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """`python ARGS`, its output captured."""
    env = env if env is not None else cli_env()
    return subprocess.run([PY, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# the smoke profile's PaSST pretraining cut to seconds (3,200 clips for 20 epochs otherwise): every test pipeline
# that trains a PaSST teacher runs it once
TINY_PRETRAIN = (
    "pretrain.classes=3",
    "pretrain.clips_per_class=8",
    "pretrain.epochs=1",
    "pretrain.batch_size=8",
)


def pipeline_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`jobs/full_pipeline.py` on a data set and an output dir, as a user runs it (`run_py`'s args), with
    TINY_PRETRAIN (`extra` may override it)."""
    return [
        str(ROOT / "jobs" / "full_pipeline.py"),
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        *TINY_PRETRAIN,
        *extra,
    ]


def sigint_default() -> None:
    """`preexec_fn` for a child that must see Ctrl-C as a terminal's foreground job does: pytest started in the
    background (`cmd &`) passes SIGINT on ignored, and the child's SIGINT would then never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A CLI run in the background, in its own session (a Ctrl-C can reach the whole group, as in a terminal),
    its output in `log`."""

    def __init__(self, args: list[str], env: dict, cwd: Path, log: Path):
        self.log = log
        with open(log, "w") as fh:
            self.p = subprocess.Popen(
                [PY, *args],
                env=env,
                cwd=cwd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=sigint_default,
            )

    @property
    def pid(self) -> int:
        return self.p.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition, timeout: float = 300, what: str = "the condition"):
        """Until `condition()` holds; fails at once when the run exits first."""
        try:
            return wait_for(condition, timeout, what, self.p, lambda: self.text()[-4000:])
        except AssertionError:
            self.kill()
            raise

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def signal_group(self, sig: int) -> None:
        os.killpg(self.p.pid, sig)

    def kill(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


# ------------------------------------------------------------------------------------------- sockets
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


# ------------------------------------------------------------------------------- the installed command
ASC_RAY = Path(PY).parent / "asc-ray"  # the console script, as a user runs it


def asc_ray(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """`asc-ray ARGS` (the installed entry point), its output captured."""
    env = env if env is not None else cli_env()
    return subprocess.run(
        [str(ASC_RAY), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def user_env(**extra: str) -> dict:
    """A user's environment: no MLFLOW_TRACKING_URI (the store is found by asc-ray's own rule), no GPU, no
    proxy."""
    env = {k: v for k, v in cli_env().items() if k != "MLFLOW_TRACKING_URI" and "proxy" not in k.lower()}
    env.update(CUDA_VISIBLE_DEVICES="", **extra)
    return env
