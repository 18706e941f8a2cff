"""The faults of the chaos harness (tests/reliability/chaos): a seeded schedule over the pipeline's progress, and how each is injected.

A fault fires at a point of progress, not at a wall-clock time, so that the same seed injects the same kinds at
the same points however fast the machine is: "at epoch e of unit u" (the line `[u] epoch e/E` first appears in
the unit's unit.log) or "after k units done" (k units have their result.json or logits table on disk). The
points come from the undisturbed run (its units and their epoch counts).

Kinds, and the victim each takes (found through /proc, among the processes of this run's own Ray cluster):
- worker:     SIGKILL the Ray Train worker (`ray::RayTrainWorker`) of a teacher, pid from its unit.log
- trial:      SIGKILL the Tune trial actor (`ray::ImplicitFunc`) of a student, pid from its unit.log
- aggregator: SIGKILL the `ray::LogitAggregatorImpl` actor
- raylet:     SIGKILL the raylet of the worker node that runs the unit; a new node joins in its place
- driver:     SIGKILL the pipeline's driver, then the same command again (as a user would)
- mlflow:     SIGKILL the `mlflow server` (its whole session), then start it again on the same store and port
A victim that is gone by the time its point comes (a unit that finished fast) is taken from the same kind's
live processes, else the fault waits for the next epoch of any unit.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.wait import unit_logs

from asc_ray.layout import Layout
from asc_ray.pipeline.watch import RANK_LINE
from asc_ray.procs import running

KINDS = ("worker", "trial", "aggregator", "raylet", "driver", "mlflow")
TITLE = {"worker": "RayTrainWorker", "trial": "ImplicitFunc", "aggregator": "LogitAggregatorImpl"}
EPOCH_LINE = re.compile(r"\] epoch (\d+)/(\d+) ")  # asc_ray.train.Trainer.fit (in the unit's own unit.log)


@dataclass
class Fault:
    n: int  # 1-based, in schedule order
    kind: str
    at: tuple  # ("epoch", unit, e) | ("done", k)
    fired: float | None = None  # when it was injected (time.time())
    victim: str = ""
    pid: int | None = None  # (worker, trial, aggregator) the process it killed
    unit_name: str | None = None  # the unit it hit, as the driver names it
    overtaken: bool = False  # a driver kill came before the run could say it
    met_calls: bool = False  # (mlflow) calls were spooled during the outage
    rearmed: tuple | None = (
        None  # (role, epoch lines seen) when its victim was gone: waits for the next epoch
    )
    notes: list[str] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)  # (driver) its processes still alive after 120 s

    def point(self, units: dict) -> str:
        if self.at[0] == "epoch":
            return f"epoch {self.at[2]} of {units[self.at[1]]['name']}"
        return f"{self.at[1]} units done"


def day_s(hms: str) -> int:
    h, m, sec = map(int, hms.split(":"))
    return 3600 * h + 60 * m + sec


def progress_map(out: Path) -> tuple[dict[str, dict], list[float]]:
    """From a finished run: unit (its folder under the output dir) -> {"name", "role", "epochs": E, "at": {e: when
    epoch e ended}}, and when each unit (tables too) was done, in order (seconds of the day: only to number the
    points in the order the run met them)."""
    units = {}
    for role in ("teacher", "student"):
        for log in unit_logs(out, role):
            text = log.read_text(errors="replace")
            u = {"name": RANK_LINE.search(text)["unit"], "role": role, "epochs": 0, "at": {}}
            for line in text.splitlines():
                if m := EPOCH_LINE.search(line):
                    u["epochs"], u["at"][int(m.group(1))] = int(m.group(2)), day_s(line.split(" ", 1)[0])
            units[str(log.parent.relative_to(out))] = u
    done = []
    for p in [*Layout(out).records(), *out.glob("logits/*.parquet")]:
        t = time.localtime(p.stat().st_mtime)
        done.append(3600 * t.tm_hour + 60 * t.tm_min + t.tm_sec)
    return units, sorted(done)


def draw_schedule(seed: int, n: int, units: dict[str, dict], done: list[float]) -> list[Fault]:
    """n faults (n >= len(KINDS): every kind at least once), each at a point drawn from the run's progress,
    numbered in the order the undisturbed run met their points."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    kinds += [rng.choice(KINDS) for _ in range(n - len(KINDS))]

    def mid(role):  # (unit, epoch) strictly inside a unit's training
        return [
            (u, e)
            for u, v in sorted(units.items())
            if role in (None, v["role"])
            for e in range(1, v["epochs"])
        ]

    finished = [("done", k) for k in range(1, len(done))]
    faults, taken = [], set()
    for kind in kinds:
        if kind in ("worker", "trial", "raylet"):
            points = [("epoch", u, e) for u, e in mid({"worker": "teacher", "trial": "student"}.get(kind))]
        elif kind == "aggregator":  # right after a unit finished: the driver hands its logits over
            points = finished
        else:
            points = [("epoch", u, e) for u, e in mid(None)] + finished
        free = [p for p in points if (kind, p) not in taken] or points
        at = rng.choice(free)
        taken.add((kind, at))
        faults.append(Fault(0, kind, at))
    when = lambda f: units[f.at[1]]["at"][f.at[2]] if f.at[0] == "epoch" else done[f.at[1] - 1]  # noqa: E731
    faults.sort(key=when)  # (stable: the draw order breaks ties)
    for i, f in enumerate(faults, 1):
        f.n = i
    return faults


class Progress:
    """What the faulted run has done so far, from its files: the epochs each unit has ended, its latest worker
    (node, pid), and how many units are done."""

    def __init__(self, out: Path):
        self.out = out
        self.epochs: set[tuple[str, int]] = set()  # (unit, epoch)
        self.lines: list[str] = []  # the unit of every epoch line, in the order seen
        self.workers: dict[str, tuple[str, int]] = {}  # unit -> (node id, pid) of its latest worker
        self.owners: dict[int, str] = {}  # pid -> unit, of every worker seen
        self._offsets: dict[Path, int] = {}

    def poll(self) -> None:
        for role in ("teacher", "student"):
            for log in unit_logs(self.out, role):
                unit = str(log.parent.relative_to(self.out))
                with open(log, "rb") as f:
                    f.seek(self._offsets.get(log, 0))
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                self._offsets[log] = self._offsets.get(log, 0) + end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    if m := EPOCH_LINE.search(line):
                        self.epochs.add((unit, int(m.group(1))))
                        self.lines.append(unit)
                    elif m := RANK_LINE.search(line):
                        self.workers[unit] = (m["node"], int(m["pid"]))
                        self.owners[int(m["pid"])] = unit

    def done(self) -> int:
        return len(Layout(self.out).records()) + len(list((self.out / "logits").glob("*.parquet")))

    def reached(self, at: tuple) -> bool:
        return (at[1], at[2]) in self.epochs if at[0] == "epoch" else self.done() >= at[1]


# ------------------------------------------------------------------------------------------ processes
def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = [p for p in pids if running(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if running(p)]
