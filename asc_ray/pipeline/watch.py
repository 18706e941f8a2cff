"""What the driver says about the faults Ray and asc-ray get over by themselves, one console line each, as they
happen: a node lost, a teacher's worker restarted by Ray Train (from its unit.log: the new worker's line, then
where it resumed), the LogitAggregator restarted, MLflow calls spooled during a tracking server outage. A student
trial's retry is Tune's to say (students.TrialRetried); a driver that died is said by the next run's output
dir lock ("... is stale ...: taken over").
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import ray

from asc_ray.console import log
from asc_ray.layout import UnitFiles

# a worker started: the line asc_ray.pipeline.unit writes first in its unit.log (the chaos harness and the
# fault tests read it too)
RANK_LINE = re.compile(r"\[(?P<unit>[^\]]+)\] rank 0 on node (?P<node>\w+) \(pid (?P<pid>\d+)\)")
RESUMED = re.compile(r"\] (resumed from epoch (\d+)|no readable checkpoint left|epoch 1/)")
# what it says
NODE_LOST = (
    "Ray node {address} ({node}) lost: what ran there retries on the other nodes from its last checkpoint "
    "(teachers.max_failures, students.max_failures)"
)
WORKER_RESTARTED = (
    "{unit}: its Ray Train worker died; Ray Train restarted it on node {node}, {where} "
    "(failure {failure}, teachers.max_failures={max_failures})"
)
AGGREGATOR_RESTARTED = (
    "the LogitAggregator's process ({pid}) died; Ray restarted it (pid {new_pid}) and retried its calls: its "
    "tables and parts are on disk, nothing lost"
)
SPOOLING = (
    "MLflow unreachable: {n} process(es) keep their calls in {spool_dir} and send them once the tracking "
    "server answers (training goes on)"
)


class Watcher:
    """Polls every `interval` seconds in a daemon thread from start() to stop()."""

    def __init__(self, aggregator, spool_dir: str | Path | None, max_failures: int, interval: float = 2.0):
        self.aggregator, self.max_failures = aggregator, max_failures
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.interval = interval
        self._teachers: dict[str, dict] = {}  # unit -> {log, offset, workers, restarted}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._alive: dict[str, str] | None = None  # node id -> address
        self._aggregator_pid: int | None = None
        self._leftover = set(self._spooled())  # a killed earlier run's: replayed at the end, not news
        self._spooling = False

    # -- the teachers it follows (asc_ray.pipeline.run: while their Ray Train run is fitted)
    def follow(self, unit: str, unit_dir: Path) -> None:
        path = UnitFiles(unit_dir).log
        offset = path.stat().st_size if path.is_file() else 0  # earlier runs' lines are not news
        with self._lock:
            self._teachers[unit] = {"log": path, "offset": offset, "workers": 0, "restarted": None}

    def unfollow(self, unit: str) -> None:
        with self._lock:
            self._teachers.pop(unit, None)

    # -- the thread
    def start(self) -> None:
        threading.Thread(target=self._run, name="asc-ray-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for check in (self.check_nodes, self.check_teachers, self.check_aggregator, self.check_spool):
                try:
                    check()
                except Exception:  # noqa: BLE001 - a watcher never stops a run; the next round tries again
                    pass

    def check_nodes(self) -> None:
        nodes = {n["NodeID"]: n for n in ray.nodes()}
        alive = {i: n.get("NodeManagerAddress", "?") for i, n in nodes.items() if n.get("Alive")}
        for node_id, address in (self._alive or {}).items():
            if node_id not in alive:
                log(NODE_LOST.format(address=address, node=node_id[:8]))
        self._alive = alive

    def check_teachers(self) -> None:
        with self._lock:
            followed = list(self._teachers.items())
        for unit, t in followed:
            if not t["log"].is_file():
                continue
            with open(t["log"], "rb") as f:
                f.seek(t["offset"])
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only
            t["offset"] += end
            for line in chunk[:end].decode(errors="replace").splitlines():
                self._teacher_line(unit, t, line)

    def _teacher_line(self, unit: str, t: dict, line: str) -> None:
        if m := RANK_LINE.search(line):
            t["workers"] += 1
            if t["workers"] > 1:  # the first is this run's own start (maybe a resume of an earlier run's)
                t["restarted"] = m["node"]
        elif t["restarted"] and (m := RESUMED.search(line)):
            where = f"resumed from epoch {m.group(2)}" if m.group(2) else "started again from epoch 0"
            failure, node = t["workers"] - 1, t["restarted"][:8]
            log(
                WORKER_RESTARTED.format(
                    unit=unit, node=node, where=where, failure=failure, max_failures=self.max_failures
                )
            )
            t["restarted"] = None

    def check_aggregator(self) -> None:
        pid = ray.get(self.aggregator.pid.remote(), timeout=10)  # times out while Ray restarts it
        if self._aggregator_pid is not None and pid != self._aggregator_pid:
            log(AGGREGATOR_RESTARTED.format(pid=self._aggregator_pid, new_pid=pid))
        self._aggregator_pid = pid

    def _spooled(self) -> list[Path]:
        return (
            sorted(self.spool_dir.glob("spool-*.jsonl*"))
            if self.spool_dir and self.spool_dir.is_dir()
            else []
        )

    def check_spool(self) -> None:
        files = [f for f in self._spooled() if f not in self._leftover]  # this run's processes only
        if files and not self._spooling:
            log(SPOOLING.format(n=len(files), spool_dir=self.spool_dir))
        self._spooling = bool(files)
