"""Makespan of the per-split graph schedule: simulated for the full paper on N GPUs (--simulate), or run for real
against v0.1's four global stages on a local multi-node Ray.

--simulate: no Ray, no training. The full profile's graph (every split, system and seed of students.seeds) is
scheduled on N GPUs as the pipeline schedules it (a unit is ready when its inputs are, the longest first; a
teacher takes a GPU, a student a quarter), each unit lasting its clip passes (the official split sizes x its
epochs) over a per-model rate, with and without critical-path workers (teachers/students.critical_path_workers:
the package's own critical_path and share_idle decide who gets how many idle GPUs). Rates:
    measured  H200, 2026-11-28, today's path (docs/benchmarks.md): student 8,285 samples/s alone and 26,336 for
              four on a GPU, 32-BCBL teacher 6,248, PaSST-S 2,177; each step's GPU-bound share = the GPU
              utilisation measured beside them (5 / 10 / 21 %)
    target    the issue's targets with the speed switches, NOT measured: student 25,000, 32-BCBL teacher 18,000,
              PaSST-S as measured; a step 90 % GPU-bound (CUDA graphs leave the host little to do), four
              students on a GPU together at 25,000 / 0.9
A data-parallel run on n GPUs keeps the recipe's batch (batch / n per rank), so only the GPU-bound share of a
step shrinks: time(n) = time(1) x ((1 - g) + g / n) (Amdahl; gradient all-reduce not counted). bcbl24 (44.1 kHz
input, not measured) is taken at a student's rate x 6,248 / 8,285 (the 44.1 vs 32 kHz ratio of the 32-BCBL).
Validation and test passes are not counted (a few %). Prints makespan, GPU-hours held by units and paid
(GPUs x makespan) for 2/4/8 GPUs.

    python bench/schedule_makespan.py --simulate [--rates measured|target|both] [--gpus 2,4,8]

A local multi-node Ray (`local_nodes`, as tests/helpers/cluster.py starts one): a head that trains nothing and NODES
worker nodes with GPUS "gpu_slot" resources each ("gpu_slot", a custom resource standing in for GPUs:
TorchTrainer(use_gpu=True) would ask for NCCL on this CPU machine). Teachers take one "gpu", students a quarter,
as on a real cluster (teachers.resources / students.resources). The same 2-split smoke pipeline with tiny
epochs runs twice through bench/makespan_driver.py (the pipeline with a chosen scheduler), into fresh output
dirs:

    graph        the pipeline as it is (units start when their inputs exist, longest first)
    four_stage   makespan_driver.py's FourStageScheduler: every teacher, then tables, then students, then tfs;
                 smallest split first

Figures: each run's makespan (first unit start -> last unit end, from timeline.json) and wall time, and the
ratio. Each run's plots/timeline.png shows the bars per node.

    python bench/schedule_makespan.py [--splits 10,100] [--nodes 2] [--gpus 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, figure, footer, header


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulate", action="store_true", help="simulate the full paper on N GPUs (no Ray)")
    ap.add_argument("--rates", default="both", choices=("measured", "target", "both"), help="with --simulate")
    ap.add_argument("--splits", default=None, help="default: 10,100 (a real run), every split (--simulate)")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpus", default=None, help="per worker node (a real run, default 2); --simulate: 2,4,8")
    ap.add_argument("--epochs", type=int, default=2, help="bcbl.epochs (passt.epochs = 1)")
    ap.add_argument("--out", default=None, help="keep outputs here (default: a temp dir, deleted)")
    ap.add_argument(
        "overrides", nargs="*", help="--simulate: full-profile overrides, e.g. students.seeds=[0]"
    )
    a = ap.parse_args(argv)
    if a.simulate:
        header("schedule_makespan --simulate (full profile, per-model GPU rates)")
        simulate_all(a)
        footer()
        return
    a.splits, a.gpus = a.splits or "10,100", int(a.gpus or 2)
    header("schedule_makespan")
    from asc_ray.data.synth import generate

    base = Path(a.out or tempfile.mkdtemp(prefix="asc_ray_makespan_"))
    base.mkdir(parents=True, exist_ok=True)
    data = base / "tau"
    if not (data / "meta.csv").is_file():
        generate(data, clips_per_class=20, seed=0)
    nodes = [{"num_cpus": a.gpus, "resources": {"gpu_slot": a.gpus}} for _ in range(a.nodes)]  # a CPU per GPU
    try:
        with local_nodes(nodes) as driver_env:
            spans = {mode: run(mode, a, driver_env, base, data) for mode in ("graph", "four_stage")}
        figure("makespan_ratio_graph_over_four_stage", spans["graph"] / spans["four_stage"], ".2f")
    finally:
        if not a.out:
            shutil.rmtree(base, ignore_errors=True)
    footer()


# ------------------------------------------------------------------------------------------ simulation
SPLIT_CLIPS = {5: 6_980, 10: 13_960, 25: 34_900, 50: 69_800, 100: 139_620}  # DCASE 2024's official splits
BCBL24 = (
    6_248 / 8_285
)  # a 24-BCBL hears 44.1 kHz like the 32-BCBL teachers: their rate relative to a student's


@dataclass(frozen=True)
class Rates:
    student: float  # samples/s of one student alone on a GPU
    student_packed: float  # samples/s of each of four students sharing a GPU (students.gpus_per_trial 0.25)
    teacher: float  # a 32-BCBL teacher (44.1 kHz) on a GPU
    passt: float  # a PaSST-S teacher
    gpu_bound: (
        dict  # per model: the share of a step that shrinks with a smaller batch (the rest is host work)
    )


RATES = {
    "measured": Rates(8_285, 26_336 / 4, 6_248, 2_177, {"student": 0.05, "teacher": 0.10, "passt": 0.21}),
    "target": Rates(25_000, 25_000 / 0.9 / 4, 18_000, 2_177, {"student": 0.9, "teacher": 0.9, "passt": 0.21}),
}


def model_of(u) -> str:
    from asc_ray.systems import get_system

    s = get_system(u.system)
    return "passt" if s.model == "passt" else "teacher" if s.role == "teacher" else "student"


def passes(u, cfg) -> float:
    """Clip passes of a unit: its split's clips x its epochs (the full profile keeps the whole split)."""
    from asc_ray.systems import epochs, get_system

    return 0.0 if u.kind == "table" else SPLIT_CLIPS[u.split] * epochs(get_system(u.system), cfg)


def rate(u, workers: int, sharing: int, rates: Rates) -> float:
    """Clip passes per second of unit u on `workers` whole GPUs, or (a student's one worker) on a GPU that
    `sharing` students share: each at most its rate alone, together at most four's measured total."""
    from asc_ray.systems import get_system

    m = model_of(u)
    slow = BCBL24 if get_system(u.system).model == "bcbl24" else 1.0
    alone = {"student": rates.student * slow, "teacher": rates.teacher, "passt": rates.passt}[m]
    if m == "student" and workers == 1:
        return min(alone, 4 * rates.student_packed * slow / max(1, sharing))
    g = rates.gpu_bound[m]
    return alone / ((1 - g) + g / workers)


def gpus_held(u, workers: int, cfg) -> float:
    if u.kind == "table":
        return 0.0
    if workers > 1:
        return float(workers)
    return cfg.students.gpus_per_trial if u.role == "student" else cfg.teachers.gpus_per_worker


def place(free: list[float], need: float, whole: int) -> list[int] | None:
    """GPUs for a unit: `whole` free GPUs, or one GPU with `need` free (the fullest that fits: Ray packs
    fractions)."""
    if whole:
        idle = [i for i, f in enumerate(free) if f >= 1.0 - 1e-9]
        return idle[:whole] if len(idle) >= whole else None
    fits = [i for i, f in enumerate(free) if f >= need - 1e-9]
    return [min(fits, key=lambda i: free[i])] if fits else None


def simulate(cfg, n_gpus: int, rates: Rates, cp_workers: int) -> dict:
    """The pipeline's schedule of the full graph on n_gpus, in the order Ray and the Scheduler act: a unit's
    end frees its GPUs and Ray starts what waits (the first in launch order that fits), then the units it made
    ready are launched (tables written at once), a critical-path unit with up to cp_workers idle GPUs
    (asc_ray.pipeline.graph.share_idle; cp_workers <= 1: off). Rates change as students come and go on a GPU."""
    from asc_ray.pipeline.graph import build_graph, critical_path, launch_rank, share_idle

    graph = build_graph(
        [*cfg.teachers.systems, *cfg.students.systems], sorted(SPLIT_CLIPS), cfg.students.seeds
    )
    # the Scheduler's estimate with each model's cost as these rates have it (seconds alone on a GPU)
    cost = lambda u: passes(u, cfg) / rate(u, 1, 1, rates) if u.kind == "train" else 0.0  # noqa: E731
    critical, rank = critical_path(graph, graph, cost), launch_rank(graph, graph, cost)
    free = [1.0] * n_gpus
    done, workers, queue, spans = set(), {}, [], {}
    running: dict = {}  # unit -> [passes left, its GPUs, its share of each]
    t, held = 0.0, 0.0

    def start_what_fits():
        queue.sort(key=lambda u: -rank[u])
        for u in list(queue):
            n = workers[u]
            whole = n > 1 or u.role == "teacher"
            gpus = place(free, gpus_held(u, n, cfg), n if whole else 0)
            if gpus is None:
                continue
            share = 1.0 if whole else gpus_held(u, 1, cfg)
            for i in gpus:
                free[i] -= share
            running[u] = [passes(u, cfg), gpus, share]
            spans[u] = [t, None]
            queue.remove(u)

    def sharing(gpu: int) -> int:
        return sum(1 for v, (_, g, sh) in running.items() if sh < 1.0 and gpu in g)

    while True:
        while True:  # tables whose inputs are done are written at once, and may make units ready
            tables = [
                u for u in graph if u.kind == "table" and u not in done and all(d in done for d in graph[u])
            ]
            if not tables:
                break
            done.update(tables)
        ready = [
            u for u in graph if u not in workers and u.kind == "train" and all(d in done for d in graph[u])
        ]
        if cp_workers > 1:
            plan = share_idle(
                ready, critical, sum(free), lambda u, n: gpus_held(u, n, cfg), lambda u: cp_workers
            )
        else:
            plan = {}
        for u in ready:
            workers[u] = plan.get(u, 1)
            queue.append(u)
        start_what_fits()
        if not running:
            break
        speed = {u: rate(u, workers[u], sharing(g[0]), rates) for u, (_, g, _) in running.items()}
        dt = min(left / speed[u] for u, (left, _, _) in running.items())
        t += dt
        held += dt * sum(gpus_held(u, workers[u], cfg) for u in running)
        for u in list(running):
            running[u][0] -= speed[u] * dt
            if running[u][0] <= 1e-6 * passes(u, cfg):
                _, g, sh = running.pop(u)
                for i in g:
                    free[i] += sh
                done.add(u)
                spans[u][1] = t
        start_what_fits()  # Ray hands the freed GPUs to what waits before the driver launches more
    if len(done) < len(graph):
        raise RuntimeError(f"simulation stuck: {len(graph) - len(done)} units never ran (do they fit a GPU?)")
    length = {u: e - s for u, (s, e) in spans.items()}
    teacher = max(length[u] for u in critical if u.kind == "train" and u.role == "teacher")
    seeds = {u.seed for u in critical if u.role == "student"}
    students = max(sum(length[u] for u in critical if u.role == "student" and u.seed == s) for s in seeds)
    return {
        "makespan_h": t / 3600,
        "held_gpu_h": held / 3600,
        "paid_gpu_h": n_gpus * t / 3600,
        "chain_h": (teacher + students) / 3600,
        "spans": spans,
        "workers": workers,
    }


def simulate_all(a) -> None:
    from asc_ray.config import load_config

    cfg = load_config("full", None, a.overrides)
    gpus = [int(g) for g in (a.gpus or "2,4,8").split(",")]
    kinds = ("measured", "target") if a.rates == "both" else (a.rates,)
    n_students = len(cfg.students.systems) * len(cfg.students.seeds)
    print(
        f"# {len(cfg.teachers.systems)} teachers and {n_students} student runs per split "
        f"(students.seeds={cfg.students.seeds}), splits {sorted(SPLIT_CLIPS)}",
        flush=True,
    )
    print(
        "| rates | GPUs | critical-path workers | makespan (h) | GPU-hours held | GPU-hours paid | split-100 chain (h) |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        for n in gpus:
            for cp in (0, n):
                r = simulate(cfg, n, RATES[kind], cp)
                print(
                    f"| {kind} | {n} | {'up to ' + str(cp) if cp else 'off'} | {r['makespan_h']:.2f} | "
                    f"{r['held_gpu_h']:.1f} | {r['paid_gpu_h']:.1f} | {r['chain_h']:.2f} |",
                    flush=True,
                )
                tag = f"sim_{kind}_gpus{n}_{'cp' if cp else 'plain'}"
                figure(f"{tag}_makespan_h", r["makespan_h"], ".2f")
                figure(f"{tag}_held_gpu_h", r["held_gpu_h"], ".1f")
    figure(
        f"sim_{kinds[-1]}_gpus{gpus[-1]}_makespan_h",
        simulate(cfg, gpus[-1], RATES[kinds[-1]], gpus[-1])["makespan_h"],
        ".2f",
    )


@contextlib.contextmanager
def local_nodes(workers: list[dict]):
    """Several Ray nodes on this machine (Ray's ray.cluster_utils.Cluster, in a temp dir of their own): a head
    with no CPUs, like cluster.yaml's, and a worker node per dict (num_cpus, resources). Yields a job driver's
    environment (RAY_ADDRESS). tests/helpers/cluster.py starts the same for the tests."""
    from ray.cluster_utils import Cluster

    from asc_ray.procs import free_port

    tmp = Path(tempfile.mkdtemp(prefix="asmk", dir="/tmp"))  # short: Ray's unix sockets live under it
    saved = {k: os.environ.pop(k, None) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = str(tmp)  # the cluster's address file stays in here, not /tmp/ray
    c = Cluster(shutdown_at_exit=True)
    try:
        c.add_node(num_cpus=0, temp_dir=str(tmp / "ray"), gcs_server_port=free_port(), include_dashboard=False,
                   dashboard_agent_listen_port=free_port())  # fmt: skip
        for w in workers:
            c.add_node(num_cpus=w["num_cpus"], resources=w["resources"])
        c.wait_for_nodes()
        env = {k: v for k, v in os.environ.items() if k != "ASC_RAY_CACHE_DIR"}
        bin_dir = Path(sys.executable).parent
        env.update(RAY_ADDRESS=c.address, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1")
        yield env
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def run(mode: str, a, driver_env: dict, base: Path, data: Path) -> float:
    """One pipeline run on the cluster with the `mode` scheduler; its makespan."""
    out = base / mode
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "makespan_driver.py"),
        "--scheduler",
        mode,
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--splits",
        a.splits,
        "--profile",
        "smoke",
        f"bcbl.epochs={a.epochs}",
        "passt.epochs=1",
        "teachers.max_concurrent=0",
        "teachers.cpus_per_worker=0.01",
        "teachers.resources={gpu_slot: 1}",
        "students.cpus_per_trial=0.01",
        "students.resources={gpu_slot: 0.25}",
        f"data.cache_dir={base / 'node_cache'}",  # the nodes' copies stay in the bench's folder
    ]
    t0 = time.time()
    env = {**driver_env, "MLFLOW_TRACKING_URI": f"sqlite:///{base}/mlflow.db"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=base)
    wall = time.time() - t0
    (base / f"{mode}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        sys.exit(f"{mode} run failed (rc {r.returncode}); see {base / f'{mode}.log'}\n{r.stderr[-2000:]}")
    tl = json.loads((out / "timeline.json").read_text())
    span = max(t["end"] for t in tl) - min(t["start"] for t in tl)
    figure(f"{mode}_makespan_s", span)
    figure(f"{mode}_wall_s", wall)
    print(
        f"# {mode}: {len(tl)} units on {len({t['node'] for t in tl})} nodes; "
        f"timeline {out / 'plots' / 'timeline.png'}",
        flush=True,
    )
    return span


if __name__ == "__main__":
    main()
