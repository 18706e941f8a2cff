"""The environment of the chaos harness's faulted run: the processes it saw (none may be left), this run's Ray
cluster's processes, and the MLflow server it restarts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from reliability.chaos.faults import kill, wait_gone

from asc_ray.procs import cmdline, free_port, pid_start, running, session

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable


class Seen:
    """Every process of a run, as (pid, start time): after the run, none may be left."""

    def __init__(self):
        self.procs: set[tuple[int, str]] = set()

    def add(self, pids) -> None:
        self.procs |= {(p, pid_start(p)) for p in pids if pid_start(p)}

    def left(self, timeout: float = 60) -> list[str]:
        end = time.monotonic() + timeout
        while True:
            left = [(p, t) for p, t in self.procs if pid_start(p) == t and running(p)]
            if not left or time.monotonic() > end:
                return [f"{p} {cmdline(p)[:100]}" for p, _ in left]
            time.sleep(0.5)


# --------------------------------------------------------------------------------------- the MLflow server
class MlflowServer:
    """scripts/mlflow_server.sh on 127.0.0.1 (SQLite, artifacts through the server), in a session of its own:
    a restart kills the whole session (its workers too) and starts it again on the same store and port."""

    def __init__(self, root: Path, seen: Seen):
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
        return session(self.p.pid) if self.p is not None else []

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
