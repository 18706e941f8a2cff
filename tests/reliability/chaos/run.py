"""Chaos: the pipeline once undisturbed and once under a seeded schedule of faults, then what must hold.

    python tests/reliability/chaos [--data-dir D] [--splits 25,100] [--seed 0] [--faults 8] [--work DIR]
                          [--keep] [--reference DIR] [--max-runs 10] [key=value ...] [-- pipeline options ...]

1. The undisturbed run: `python jobs/full_pipeline.py --profile smoke` as the README runs it (its own local Ray,
   a SQLite MLflow store). With --reference DIR it is kept there and reused by later calls with the same data,
   splits and overrides.
2. The schedule: --faults faults, every kind at least once, drawn with --seed over the undisturbed run's points
   of progress (faults.py): the same seed injects the same kinds at the same points.
3. The faulted run: the same command as the job driver (RAY_ADDRESS) of a local Ray cluster (a head without
   CPUs and two 1-CPU worker nodes: tests/helpers/cluster.py), logging to a real `mlflow server`
   (scripts/mlflow_server.sh on SQLite). Whenever the driver stops (killed, or a failure) the same command runs
   again, as a user would, up to --max-runs.
4. The checks (checks.py); then neither run may have left a process behind.

Prints the schedule, one line per fault as it is injected (time, kind, victim, seed), each check's findings,
and last `chaos_failures N`. Exit status 0 when everything held. tests/reliability/test_chaos.py runs it with one
schedule per commit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from helpers.procs import TINY_PRETRAIN
from reliability.chaos import checks
from reliability.chaos.env import ROOT, MlflowServer, Seen, raylet_pid
from reliability.chaos.faults import TITLE, Fault, Progress, draw_schedule, kill, progress_map, wait_gone

from asc_ray.procs import cmdline, descendants, running

PY = sys.executable
T0 = time.time()
FAULT = "fault {n}/{total} (seed {seed}): {kind}: {victim} at {point}"  # one line per fault as it fires
VERDICT = "verdict: {verdict} (seed {seed})"
FAILURES = "chaos_failures {n}"  # the last line


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def figure(name: str, value: float, fmt: str = ".1f") -> None:
    print(f"{name} {value:{fmt}}", flush=True)


def pipeline_cmd(data: Path, out: Path, splits: str, overrides: list[str]) -> list[str]:
    return [PY, str(ROOT / "jobs" / "full_pipeline.py"), "--data-dir", str(data), "--output-dir", str(out),
            "--profile", "smoke", "--splits", splits, *TINY_PRETRAIN, *overrides]  # fmt: skip


# ------------------------------------------------------------------------------------ the undisturbed run
def reference(args, data: Path, ref_dir: Path) -> tuple[Path, str, list[str]]:
    """(its output dir, its MLflow URI, processes it left behind)."""
    out, uri = ref_dir / "out", f"sqlite:///{ref_dir / 'mlflow.db'}"
    want = {"data": str(data), "splits": args.splits, "overrides": args.overrides}
    done = ref_dir / "reference.json"
    if done.is_file() and json.loads(done.read_text()) == want and (out / "results.csv").is_file():
        say(f"undisturbed run: reusing {out}")
        return out, uri, []
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    say(f"undisturbed run -> {out}")
    t0, seen = time.time(), Seen()
    with open(ref_dir / "driver.log", "w") as log:
        p = subprocess.Popen(pipeline_cmd(data, out, args.splits, args.overrides), env=env, cwd=ref_dir,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        while p.poll() is None:
            seen.add(descendants(p.pid) | {p.pid})
            time.sleep(1)
    if p.returncode != 0:
        sys.exit(
            f"the undisturbed run failed ({p.returncode}):\n{(ref_dir / 'driver.log').read_text()[-3000:]}"
        )
    figure("reference_wall_s", time.time() - t0)
    done.write_text(json.dumps(want))
    return out, uri, seen.left()


# ------------------------------------------------------------------------------------------ the chaos run
class Chaos:
    def __init__(
        self, args, data: Path, work: Path, units: dict, faults: list[Fault], lc, server: MlflowServer
    ):
        self.args, self.data, self.work, self.units, self.faults = args, data, work, units, faults
        self.lc, self.server = lc, server
        self.out = work / "faulted"
        self.progress = Progress(self.out)
        self.seen = server.seen
        self.driver: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self.exits: list[int] = []
        self.runs_of: list[int] = [0] * len(faults)  # the driver run each fault hit
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()  # the cluster's node list, changed by a node's replacement
        self.replace: list = []  # worker nodes whose raylet was killed, to replace

    # -- the driver
    def start_driver(self) -> None:
        self.server.up.wait(300)  # a user starts the tracking server again before the next try
        self.logs.append(self.work / f"driver-{len(self.logs) + 1}.log")
        env = self.lc.driver_env(MLFLOW_TRACKING_URI=self.server.uri)
        cmd = pipeline_cmd(self.data, self.out, self.args.splits, self.args.overrides)
        with open(self.logs[-1], "w") as log:
            self.driver = subprocess.Popen(cmd, env=env, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)  # fmt: skip
        self.seen.add([self.driver.pid])
        say(f"driver run {len(self.logs)}: pid {self.driver.pid} ({' '.join(cmd[1:])})")

    def run(self) -> None:
        self.start_driver()
        deadline = time.monotonic() + self.args.timeout
        while True:
            self.poll()
            for f in self.faults:
                if f.fired is None and self.due(f):
                    self.inject(f)
            while self.replace:
                self._replace(self.replace.pop(0))
            rc = self.driver.poll()
            if rc is not None:
                self.exits.append(rc)
                last = [ln for ln in self.logs[-1].read_text(errors="replace").splitlines() if ln.strip()]
                if rc == 0:
                    say(f"driver run {len(self.logs)} finished (exit 0)")
                    break
                say(f"driver run {len(self.logs)} ended with exit {rc}: {(last or [''])[-1][:200]}")
                if len(self.logs) >= self.args.max_runs:
                    raise SystemExit(f"the faulted run did not finish in {self.args.max_runs} runs")
                self.start_driver()
            if time.monotonic() > deadline:
                self.driver.kill()
                raise SystemExit(f"the faulted run did not finish within {self.args.timeout}s")
            time.sleep(0.2)
        for t in self.threads:
            t.join(300)

    def poll(self) -> None:
        self.progress.poll()
        self.seen.add(self.ours() | descendants(os.getpid()))  # Ray's nodes, the drivers, the MLflow server

    def epoch_lines(self, role: str | None) -> int:
        return sum(1 for u in self.progress.lines if role in (None, self.units.get(u, {}).get("role")))

    def due(self, f: Fault) -> bool:
        if f.rearmed is not None:
            role, count = f.rearmed
            return self.epoch_lines(role) > count
        return self.progress.reached(f.at)

    def rearm(self, f: Fault, why: str) -> None:
        """No victim now: wait for the next epoch of a unit of the kind it needs (any unit for the others)."""
        role = {"worker": "teacher", "trial": "student"}.get(f.kind)
        f.rearmed = (role, self.epoch_lines(role))
        f.notes.append(why)

    # -- the cluster
    def ours(self) -> set[int]:
        """Every process of this cluster's nodes (their raylets and all they started)."""
        with self.lock:
            nodes = [self.lc.cluster.head_node, *(w.handle for w in self.lc.workers)]
        raylets = {pid for pid in map(raylet_pid, nodes) if pid is not None}
        return raylets | descendants(*raylets)

    def victim(self, f: Fault) -> int | None:
        """The process of kind f.kind that the fault's unit runs in, else any live one of that kind of ours."""
        ours = self.ours()
        unit = f.at[1] if f.at[0] == "epoch" else None
        pid = self.progress.workers.get(unit, (None, None))[1] if unit else None
        title = TITLE[f.kind]
        if not (pid in ours and title in cmdline(pid)):
            live = sorted(p for p in ours if title in cmdline(p))
            # Ray titles an actor running a call `ray::<Class>.<method>`: a Tune trial actor kept idle for the
            # next trial (reuse_actors) trains nothing, and its loss might be said nowhere
            busy = [p for p in live if f"{title}." in cmdline(p)]
            pool = busy if f.kind == "trial" and busy else live
            pid = random.Random(f"{self.args.seed}-{f.n}").choice(pool) if pool else None
        f.pid = pid
        self.name_victim(f)
        return pid

    def name_victim(self, f: Fault) -> None:
        """The unit whose rank line names f's victim (its process may have been killed before that line was
        read: the run's end asks again)."""
        owner = self.progress.owners.get(f.pid) if f.pid is not None else None
        f.unit_name = self.units[owner]["name"] if owner in self.units else f.unit_name

    # -- the faults
    def inject(self, f: Fault) -> None:
        what = getattr(self, f"_{f.kind}")(f)
        if what is None:
            return  # re-armed: no victim now
        f.fired, f.victim = time.time(), what
        self.runs_of[f.n - 1] = len(self.logs) - 1
        for g in self.faults:  # a fault the driver had no time to say before this kill
            same_run = g.fired is not None and g is not f and self.runs_of[g.n - 1] == self.runs_of[f.n - 1]
            g.overtaken |= f.kind == "driver" and same_run
            # and one that came after this run's driver was killed (in the same poll): no driver to say it
            f.overtaken |= g.kind == "driver" and same_run
        point = f.point(self.units) + (f" (re-armed: {'; '.join(f.notes)})" if f.notes else "")
        say(
            FAULT.format(
                n=f.n, total=len(self.faults), seed=self.args.seed, kind=f.kind, victim=what, point=point
            )
        )

    def _worker(self, f: Fault) -> str | None:
        pid = self.victim(f)
        if pid is None:
            return self.rearm(f, f"no ray::{TITLE[f.kind]} was running")
        kill(pid)
        return f"SIGKILL ray::{TITLE[f.kind]} pid {pid} ({f.unit_name or 'unit unknown'})"

    _trial = _worker
    _aggregator = _worker

    def _raylet(self, f: Fault) -> str | None:
        unit = f.at[1] if f.at[0] == "epoch" else None
        node_id = self.progress.workers.get(unit, (None,))[0] if unit else None
        with self.lock:
            workers = [w for w in self.lc.workers if running(raylet_pid(w.handle) or -1)]
        if not workers:
            return self.rearm(f, "no worker node was up")
        node = next((w for w in workers if w.node_id == node_id), None)
        if node is None:
            node = random.Random(f"{self.args.seed}-{f.n}").choice(workers)
        f.unit_name = self.units[unit]["name"] if unit and node.node_id == node_id else None
        pid = raylet_pid(node.handle)
        kill(pid)
        self.replace.append(node)  # by the main loop: Ray's Cluster starts nodes from the main thread only
        return f"SIGKILL raylet pid {pid} of node {node.node_id[:8]} (a new node joins in its place)"

    def _replace(self, node) -> None:
        """The machine is gone: the rest of its processes go too; a new one joins, as an autoscaler's would."""
        from helpers.cluster import Node

        self.lc.cluster.remove_node(node.handle, allow_graceful=False)
        new = self.lc.cluster.add_node(num_cpus=1, env_vars={"ASC_RAY_CACHE_DIR": str(node.cache_dir)})
        with self.lock:
            self.lc.workers[:] = [w for w in self.lc.workers if w is not node] + [
                Node(new.node_id, node.cache_dir, new)
            ]
        say(f"node {new.node_id[:8]} joined in place of {node.node_id[:8]}")

    def _driver(self, f: Fault) -> str | None:
        pid = self.driver.pid
        actors = ("RayTrainWorker", "ImplicitFunc", "TrainController", "LogitAggregator")
        job = [p for p in self.ours() if any(a in cmdline(p) for a in actors)]
        kill(pid)
        self.driver.wait()
        t = threading.Thread(target=self._job_gone, args=(f, job), daemon=True)
        t.start()
        self.threads.append(t)
        return f"SIGKILL driver pid {pid} (then the same command again)"

    def _job_gone(self, f: Fault, job: list[int]) -> None:
        t0 = time.time()
        left = wait_gone(job, 120)
        f.left_behind = [f"{p} {cmdline(p)[:80]}" for p in left]
        say(f"fault {f.n}: the killed driver's {len(job)} actor processes "
            + (f"gone in {time.time() - t0:.0f}s" if not left else f"NOT gone after 120 s: {f.left_behind}"))  # fmt: skip

    def _mlflow(self, f: Fault) -> str | None:
        if not self.server.up.is_set():
            return self.rearm(f, "the server was down already")
        spool = self.out / "mlflow_spool"
        before = {p.name for p in spool.glob("spool-*")} if spool.is_dir() else set()
        pid = self.server.kill()

        def restart():
            time.sleep(self.args.mlflow_down_s)
            self.server.start()
            now = {p.name for p in spool.glob("spool-*")} if spool.is_dir() else set()
            f.met_calls = bool(now - before)
            say(f"mlflow server up again after {time.time() - f.fired:.0f}s")

        t = threading.Thread(target=restart, daemon=True)
        t.start()
        self.threads.append(t)
        return f"SIGKILL mlflow server session {pid}, started again on the same store and port"


# ---------------------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="default: a synthetic set in the TAU layout, made in --work")
    p.add_argument("--splits", default="25,100")
    p.add_argument("--seed", type=int, default=0, help="the schedule's seed (default: %(default)s)")
    p.add_argument("--faults", type=int, default=8, help="faults per run, >= 6 (default: %(default)s)")
    p.add_argument(
        "--work", type=Path, help="where both runs go (default: a temp dir, removed unless --keep)"
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument(
        "--reference", type=Path, help="keep the undisturbed run here; reused when its arguments match"
    )
    p.add_argument("--max-runs", type=int, default=10, help="driver runs at most (default: %(default)s)")
    p.add_argument(
        "--timeout", type=float, default=5400, help="seconds for the faulted run (default: %(default)s)"
    )
    p.add_argument(
        "--mlflow-down-s", type=float, default=5.0, help="how long the server stays down per restart"
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides for both runs; pipeline options after --"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    a.overrides += argv[cut + 1 :]
    if a.faults < 6:
        p.error("--faults must be >= 6: every kind at least once")
    return a


def main(argv=None) -> int:
    args = parse(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="asc_chaos_"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data_dir
    if data is None:
        from asc_ray.data.synth import generate

        data = work / "data"
        if not (data / "meta.csv").is_file():
            generate(data)
    failures: list[str] = []
    try:
        ref, ref_uri, left = reference(args, data, args.reference or work / "reference")
        failures += [f"the undisturbed run left a process: {p}" for p in left]
        units, done = progress_map(ref)
        faults = draw_schedule(args.seed, args.faults, units, done)
        say(
            f"schedule seed {args.seed} (replay: python tests/reliability/chaos --seed {args.seed} ...): "
            f"{len(faults)} faults"
        )
        for f in faults:
            say(f"  {f.n}. {f.kind} at {f.point(units)}")
        failures += faulted(args, data, work, ref, ref_uri, units, faults)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for problem in failures:
        say(f"FAIL: {problem}")
    say(VERDICT.format(verdict="PASS" if not failures else "FAIL", seed=args.seed))
    print(FAILURES.format(n=len(failures)), flush=True)
    return 0 if not failures else 1


def faulted(args, data, work, ref, ref_uri, units, faults) -> list[str]:
    from helpers.cluster import local_cluster

    seen, failures = Seen(), []
    t0 = time.time()
    server = MlflowServer(work / "mlflow", seen)
    node = {"num_cpus": 1, "cache_dir": work / "node_cache"}  # each node's copy of the waveform caches
    with local_cluster([node, node], prefix="achaos") as lc:
        seen.add({raylet_pid(lc.cluster.head_node), *(raylet_pid(w.handle) for w in lc.workers)})
        server.start()
        try:
            chaos = Chaos(args, data, work, units, faults, lc, server)
            chaos.run()
            figure("faulted_wall_s", time.time() - t0)
            figure("driver_runs", len(chaos.logs), "d")
            figure("faults_injected", sum(f.fired is not None for f in faults), "d")
            logs = [p.read_text(errors="replace") for p in chaos.logs]
            chaos.progress.poll()
            for f in faults:
                chaos.name_victim(f)
            found = {
                "every unit finished once": checks.units_once(ref, chaos.out, logs),
                "outputs equal the undisturbed run's": checks.same_outputs(ref, chaos.out),
                "MLflow": checks.mlflow_runs(
                    server.uri, ref_uri, ref, chaos.out, {u: v["epochs"] for u, v in units.items()}
                ),  # fmt: skip
                "the console said what happened": checks.console_says(faults, logs, chaos.runs_of),
            }
            missed = [
                f"fault {f.n} ({f.kind} at {f.point(units)}) was never injected"
                for f in faults
                if f.fired is None
            ]
            found["every fault injected"] = missed
            found["the killed drivers' processes went"] = [
                f"fault {f.n}: {f.left_behind}" for f in faults if f.left_behind
            ]
            for name, problems in found.items():
                say(f"check: {name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
                failures += [f"{name}: {p}" for p in problems]
            for f in faults:
                if f.notes:
                    say(f"fault {f.n} notes: {'; '.join(f.notes)}")
        finally:
            with contextlib.suppress(Exception):
                server.kill()
    left = seen.left()
    say(f"check: no process left behind: {'ok' if not left else f'{len(left)} left'}")
    return failures + [f"process left behind: {p}" for p in left]


if __name__ == "__main__":
    sys.exit(main())
