"""The environment of bench/chaos.py's faulted run: the processes it saw (none may be left), this run's Ray
cluster's processes, and the MLflow server it restarts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _chaos_faults import alive, children_of, cmdline, kill, wait_gone

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class Seen:
    """Every process of a run, as (pid, start time): after the run, none may be left."""

    def __init__(self):
        self.procs: set[tuple[int, str]] = set()

    def add(self, pids) -> None:
        self.procs |= {(p, start_time(p)) for p in pids if start_time(p)}

    def left(self, timeout: float = 60) -> list[str]:
        end = time.monotonic() + timeout
        while True:
            left = [(p, t) for p, t in self.procs if start_time(p) == t and alive(p)]
            if not left or time.monotonic() > end:
                return [f"{p} {cmdline(p)[:100]}" for p, _ in left]
            time.sleep(0.5)


def descendants(root: int) -> set[int]:
    out, frontier = set(), {root}
    while frontier:
        frontier = set(children_of(frontier)) - out
        out |= frontier
    return out


# --------------------------------------------------------------------------------------- the MLflow server
class MlflowServer:
    """scripts/mlflow_server.sh on 127.0.0.1 (SQLite, artifacts through the server), in a session of its own:
    a restart kills the whole session (its workers too) and starts it again on the same store and port."""

    def __init__(self, root: Path, seen: Seen):
        from helpers.procs import free_port

        self.root, self.seen = root, seen
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.p: subprocess.Popen | None = None
        self.up = threading.Event()

    def start(self) -> None:
        from helpers.wait import wait_for_http

        env = dict(os.environ, HOST="127.0.0.1", PORT=str(self.port), WORKERS="1",
                   BACKEND_STORE_URI=f"sqlite:///{self.root / 'mlflow.db'}",
                   ARTIFACTS_DESTINATION=str(self.root / "artifacts"), MLFLOW=str(Path(PY).parent / "mlflow"),
                   PATH=f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "server.log", "a") as log:
            self.p = subprocess.Popen(["bash", str(ROOT / "scripts" / "mlflow_server.sh")], env=env, cwd=self.root,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        wait_for_http(self.uri + "/health", 300, proc=self.p)
        self.seen.add(self.session())
        self.up.set()

    def session(self) -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    if self.p is not None and os.getsid(int(d.name)) == self.p.pid:
                        pids.append(int(d.name))
        return pids

    def kill(self) -> int:
        self.up.clear()
        pids = self.session()
        for pid in pids:
            kill(pid)
        self.p.wait()
        wait_gone(pids, 30)
        return self.p.pid

    def restart(self) -> None:
        self.kill()
        self.start()


def raylet_pid(node) -> int | None:
    """The pid of a node's raylet (None once the node is being removed)."""
    from ray._private import ray_constants

    try:
        return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    except (KeyError, IndexError, AttributeError):
        return None


def descendants_of(roots: set[int]) -> set[int]:
    out, frontier = set(), set(roots)
    while frontier:
        frontier = set(children_of(frontier)) - out
        out |= frontier
    return out
