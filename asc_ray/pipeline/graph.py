"""The pipeline as a per-split dependency graph, and the scheduler that runs it.

Units are a system trained on a split (a teacher with Ray Train, a student with Ray Tune), a logits
table (written by the LogitAggregator) and, where pretrain.corpus is set, the PaSST pretraining once per run
(asc_ray.train.pretrain), which every split's PaSST teachers fine-tune from. The other edges come from
`System.needs` / `System.feeds`:

    once:     pretrain passt ──> passt_* of every split
    split N:  passt_* , bcbl32_*  ──> table teachers ──> kd_ensemble@s ──> table kd_ensemble@s ──> tfs@s
              bcbl24@s, baseline@s, no_kd@s    (need nothing: start at once)

Students train once per seed s of students.seeds (`@s`); the teachers, and so their table, once per split.

A unit starts as soon as the units it needs are finished and the cluster has room; the longest chain of work
is launched first (split 100's teachers, whose students wait on them, before split 5). The graph's longest path by that estimate (`critical_path`: split
100's longest teacher, its table, kd_ensemble, its table, tfs) bounds the wall time whatever the cluster's
size: with teachers/students.critical_path_workers, a unit on it gets the GPUs that would otherwise idle
(`share_idle`) and trains data parallel. Adding a system to systems.py needs no change here. A finished unit
whose record matches its key is reused.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable

from asc_ray.console import log
from asc_ray.errors import AscRayError, find_user_error
from asc_ray.layout import STAGES, PretrainRef, TableRef, UnitRef
from asc_ray.models import get_architecture
from asc_ray.systems import epochs, get_system

# The scheduler's console lines (asc_ray.console.log stamps each "[asc-ray HH:MM:SS] "): what a person follows a
# run by, and what the tests and the chaos harness read it by
TO_RUN = "{todo} units to run, {reused} reused"
CRITICAL_PATH = "critical path (estimated): {chain}"
START = "start {unit}"
FAILED = "FAILED {unit} after {took:.0f}s: {error}"
DONE = "done {unit} in {took:.0f}s{what}"
PROGRESS = "done {ran}/{total} units, running {running}, ETA {eta}"
SKIPPED = "skipped {unit}: a unit it needs failed"


Unit = (
    UnitRef | TableRef | PretrainRef
)  # a node of the graph: a unit that trains, a logits table, a pretraining


def _seeds(system, seeds: list[int]) -> list[int | None]:
    return list(seeds) if system.role == "student" else [None]


def build_graph(
    systems: Iterable[str], splits: Iterable[int], seeds: Iterable[int] = (0,), pretrain: Iterable[str] = ()
) -> dict[Unit, list[Unit]]:
    """unit -> the units it needs, for every configured system on every split (students once per seed), and the
    pretraining of each architecture in `pretrain` that a configured teacher uses (asc_ray.train.pretrain)."""
    systems, seeds = [get_system(n) for n in systems], list(seeds)
    graph: dict[Unit, list[Unit]] = {}
    pretrained = {s.model for s in systems if s.role == "teacher"} & set(pretrain)
    for model in sorted(pretrained):
        graph[PretrainRef(model)] = []
    for split in splits:
        for s in systems:
            for seed in _seeds(s, seeds):
                u = UnitRef(s.name, split, seed)
                graph[u] = [u.needs] if u.needs else []
                if s.role == "teacher" and s.model in pretrained:
                    graph[u].append(PretrainRef(s.model))
        for source in dict.fromkeys(s.feeds for s in systems if s.feeds):
            feeders = [s for s in systems if s.feeds == source]
            for seed in _seeds(feeders[0], seeds):
                graph[TableRef(source, split, seed)] = [UnitRef(f.name, split, seed) for f in feeders]
    return graph


def select(graph: dict[Unit, list[Unit]], stages: Iterable[str]) -> set[Unit]:
    """The part of the graph the stage jobs run (Unit.stage: teachers, logits, students). The evaluate stage
    runs no unit."""
    stages = set(stages)
    return {u for u in graph if u.stage in stages}


def work(u: Unit, cfg) -> float:
    """Estimated length of the unit's work: clip passes (split x epochs) x its architecture's cost per clip. A
    pretraining corpus counts as ten times split 100 (the smoke profile's corpus holds 11x its 280 clips)."""
    if u.kind == "table":
        return 0.0
    if u.kind == "pretrain":
        return 1000 * cfg.pretrain.epochs * get_architecture(u.model).cost
    s = get_system(u.system)
    return u.split * epochs(s, cfg) * get_architecture(s.model).cost


def priority(u: Unit, cfg) -> float:
    """Launch order: bigger first; a table (seconds of work that unblocks others) always first."""
    return 1e12 if u.kind == "table" else work(u, cfg)


def levels(
    graph: dict[Unit, list[Unit]], units: Iterable[Unit], cost: Callable[[Unit], float]
) -> tuple[dict[Unit, float], dict[Unit, float]]:
    """For each of `units` (edges among them only): the longest path (by `cost`) that ends with it, and the
    longest that starts with it (its "bottom level": its own work and the longest chain waiting on it)."""
    units = set(units)
    after: dict[Unit, list[Unit]] = {u: [] for u in units}
    for u in units:
        for d in graph[u]:
            if d in units:
                after[d].append(u)
    head: dict[Unit, float] = {}
    tail: dict[Unit, float] = {}

    def longest(u, memo, nxt):
        if u not in memo:
            memo[u] = cost(u) + max((longest(v, memo, nxt) for v in nxt(u)), default=0.0)
        return memo[u]

    for u in units:
        longest(u, head, lambda v: [d for d in graph[v] if d in units])
        longest(u, tail, after.__getitem__)
    return head, tail


def critical_path(
    graph: dict[Unit, list[Unit]], units: Iterable[Unit], cost: Callable[[Unit], float]
) -> set[Unit]:
    """The units of `units` on the longest path through them (by `cost`; every path of that length, so the
    seeds of split 100's chain all count): the part of the graph that no number of GPUs shortens unless its
    units themselves train faster."""
    head, tail = levels(graph, units, cost)
    through = {u: head[u] + tail[u] - cost(u) for u in head}
    top = max(through.values(), default=0.0)
    return {u for u, t in through.items() if t > 0 and t >= top * (1 - 1e-9)}


def launch_rank(
    graph: dict[Unit, list[Unit]], units: Iterable[Unit], cost: Callable[[Unit], float]
) -> dict[Unit, float]:
    """Launch order, bigger first: a table at once (seconds of work that unblocks others), then the unit with
    the longest chain of work from its start to the end of what waits on it, so that split 100's teachers and
    the students that learn from them start before work nothing waits for."""
    _, tail = levels(graph, units, cost)
    return {u: 1e12 + t if u.kind == "table" else t for u, t in tail.items()}


def share_idle(
    batch: list[Unit],
    critical: set[Unit],
    idle: float,
    demand: Callable[[Unit, int], float],
    cap: Callable[[Unit], int],
) -> dict[Unit, int]:
    """Workers for each unit of a launch batch: 1, or for a critical-path unit whose cap is above 1, as many as
    fit its even share of what the batch's other units leave of `idle` (GPUs, or CPUs without GPUs), at most
    its cap. `demand(u, n)`: what unit u takes on n workers."""
    grow = [u for u in batch if u in critical and cap(u) > 1]
    left = idle - sum(demand(u, 1) for u in batch if u not in grow)
    out = {u: 1 for u in batch}
    for i, u in enumerate(grow):
        share = left / (len(grow) - i)
        out[u] = next((n for n in range(cap(u), 1, -1) if demand(u, n) <= share + 1e-9), 1)
        left -= demand(u, out[u])
    return out


class Scheduler:
    """Runs the selected units of a graph. `launch(units, done_cb)` starts work in the background and calls
    `done_cb(unit, outcome)` (a record dict or an exception) from any thread; `is_done(unit)` says whether
    a unit's finished record can be reused."""

    def __init__(
        self,
        graph: dict[Unit, list[Unit]],
        selected: set[Unit],
        cfg,
        is_done: Callable[[Unit], dict | None],
        launch: Callable[[list[Unit], Callable], None],
        on_reused: Callable[[Unit, dict], None] = lambda u, r: None,
        describe: Callable[[Unit, dict], str] = lambda u, r: "",
    ):
        self.graph, self.selected, self.cfg = graph, selected, cfg
        self.is_done, self.launch, self.on_reused, self.describe = is_done, launch, on_reused, describe
        self.state: dict[Unit, str] = {}
        self.records: dict[Unit, dict] = {}
        self.failures: dict[Unit, BaseException] = {}
        self.started: dict[Unit, float] = {}
        self.timeline: list[tuple[Unit, dict]] = []  # per unit that ran: (unit, {start, end, node, ...})
        self.critical: set[Unit] = set()  # the units to run on the longest path (critical_path)
        self.rank: dict[Unit, float] = {}  # launch order of the units to run (launch_rank)
        self._events: queue.Queue = queue.Queue()

    # -- the units' states: pending -> running -> done | failed | blocked (a unit it needs failed)
    def _needed(self) -> set[Unit]:
        """Selected units plus what they need, transitively (needed units are reused, never trained here)."""
        need, stack = set(), list(self.selected)
        while stack:
            u = stack.pop()
            if u not in need:
                need.add(u)
                stack.extend(self.graph[u])
        return need

    def ready(self, u: Unit) -> bool:
        """Whether a pending unit may start: everything it needs is done."""
        return all(self.state.get(d) == "done" for d in self.graph[u])

    def order(self, ready: list[Unit]) -> list[Unit]:
        """The ready units in launch order: the longest chain of work first (launch_rank)."""
        return sorted(ready, key=lambda u: -self.rank.get(u, priority(u, self.cfg)))

    def _done_cb(self, unit: Unit, outcome) -> None:
        self._events.put((unit, outcome, time.time()))

    def run(self) -> dict[Unit, dict]:
        for u in sorted(self._needed(), key=lambda u: u.sort_key):
            rec = self.is_done(u)
            if rec is not None:
                self.state[u] = "done"
                self.records[u] = rec
                self.on_reused(u, rec)
            elif u in self.selected:
                self.state[u] = "pending"
            else:
                self.state[u] = "missing"
        missing = [u for u, s in self.state.items() if s == "missing"]
        if missing:
            stage = min((u.stage for u in missing), key=STAGES.index)  # the earliest stage that is missing
            raise AscRayError(
                f"{', '.join(map(str, missing))} not finished, and this job does not run it",
                path=None,
                fix=f"run the {stage} stage first (jobs/{stage}.py) or the whole pipeline (jobs/full_pipeline.py)",
            )
        todo = [u for u, s in self.state.items() if s == "pending"]
        reused = len([u for u in self.selected if self.state[u] == "done"])
        log(TO_RUN.format(todo=len(todo), reused=reused))
        self.critical = critical_path(self.graph, todo, lambda u: work(u, self.cfg))
        self.rank = launch_rank(self.graph, todo, lambda u: work(u, self.cfg))
        if self.critical:
            chain = sorted(self.critical, key=lambda u: (u.sort_key[0], self._depth(u), *u.sort_key[2:]))
            log(CRITICAL_PATH.format(chain=", ".join(map(str, chain))))
        self.total = len(todo)
        self.t0 = time.time()
        cap = self.cfg.teachers.max_concurrent or 10**9
        while any(s in ("pending", "running") for s in self.state.values()):
            ready = self.order([u for u, s in self.state.items() if s == "pending" and self.ready(u)])
            running_teachers = sum(1 for u, s in self.state.items() if s == "running" and u.role == "teacher")
            batch = []
            for u in ready:
                if u.role == "teacher":
                    if running_teachers >= cap:
                        continue
                    running_teachers += 1
                batch.append(u)
            if batch:
                for u in batch:
                    self.state[u] = "running"
                    self.started[u] = time.time()
                    log(START.format(unit=u))
                self.launch(batch, self._done_cb)
                continue
            if not any(s == "running" for s in self.state.values()):
                break  # nothing runs and nothing can start: what is left waits on a failed unit
            unit, outcome, t_end = self._wait()
            self._finish(unit, outcome, t_end)
        for u, s in self.state.items():
            if s == "pending":
                self.state[u] = "blocked"
                log(SKIPPED.format(unit=u))
        return self.records

    def _depth(self, u: Unit) -> int:
        """How many units lie before u on its longest chain of needs (0: it needs nothing)."""
        return 1 + max((self._depth(d) for d in self.graph[u]), default=-1)

    def _wait(self):
        while True:  # a timeout keeps Ctrl-C responsive in the main thread
            try:
                return self._events.get(timeout=0.5)
            except queue.Empty:
                continue

    def _finish(self, unit: Unit, outcome, t_end: float) -> None:
        took = t_end - self.started[unit]
        if isinstance(outcome, BaseException):
            self.state[unit] = "failed"
            self.failures[unit] = outcome
            log(FAILED.format(unit=unit, took=took, error=short_error(outcome)))
        else:
            self.state[unit] = "done"
            self.records[unit] = outcome
            node = (outcome or {}).get("node_id") or "driver"
            # launched: handed to Ray; start: the unit's own code began (after Ray's queue and start-up)
            start = (outcome or {}).get("started") or self.started[unit]
            self.timeline.append(
                (
                    unit,
                    {
                        "launched": self.started[unit],
                        "start": max(start, self.started[unit]),
                        "end": t_end,
                        "node": node,
                        # data-parallel workers, and why more than one (a critical-path unit)
                        "workers": (outcome or {}).get("workers", 1),
                        "workers_why": (outcome or {}).get("workers_why", ""),
                    },
                )
            )
            log(DONE.format(unit=unit, took=took, what=self.describe(unit, outcome)))
        self._progress()

    def _progress(self) -> None:
        ran = [u for u in self.started if self.state[u] in ("done", "failed")]
        running = [u for u, s in self.state.items() if s == "running"]
        left = [u for u, s in self.state.items() if s in ("pending", "running")]
        done = [(self._kind(u), self._work(u), t["end"] - t["start"]) for u, t in self.timeline]
        eta = eta_s(time.time() - self.t0, done, [(self._kind(u), self._work(u)) for u in left])
        log(PROGRESS.format(ran=len(ran), total=self.total, running=len(running), eta=_fmt_eta(eta)))

    def _work(self, u: Unit) -> float:
        return 1.0 if u.kind == "table" else work(u, self.cfg)

    @staticmethod
    def _kind(u: Unit) -> str:
        if u.kind != "train":
            return u.kind
        return f"{u.role}/{get_system(u.system).model}"


ETA_AFTER = 5


def eta_s(
    elapsed: float, done: list[tuple[str, float, float]], left: list[tuple[str, float]]
) -> float | None:
    """Seconds left: the time so far scaled by the work left over the work done. `done`: (kind, estimated work,
    seconds it took) per finished unit; `left`: (kind, estimated work) per unit not finished, each priced at its
    kind's measured seconds per unit of work (an unseen kind: the mean finished unit). Units that share the CPUs
    or wait in a queue are priced as what they will cost, not as done because they were launched long ago. None
    (unknown) before ETA_AFTER units have finished: the first to finish are the quick ones."""
    if not left:
        return 0.0
    if len(done) < ETA_AFTER:
        return None
    rates: dict[str, list[float]] = {}
    for kind, w, secs in done:
        rates.setdefault(kind, []).append(secs / w)
    spent = sum(secs for _, _, secs in done)
    if spent <= 0:
        return None
    mean = spent / len(done)

    def cost(kind: str, w: float) -> float:
        r = rates.get(kind)
        return sum(r) / len(r) * w if r else mean

    return elapsed * sum(cost(k, w) for k, w in left) / spent


def _fmt_eta(s: float | None) -> str:
    return "?" if s is None else _fmt_s(s)


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def short_error(exc) -> str:
    err = find_user_error(exc) if isinstance(exc, BaseException) else None
    if err is not None:
        return str(err).replace("\n ", ";")
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__


def run_in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t
