"""Makespan of the per-split graph schedule against v0.1's four global stages, on a simulated cluster.

A local multi-node Ray (tests/helpers/cluster.py, the tests' own set-up): a head that trains nothing and NODES
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
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, figure, footer, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="10,100")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=2, help="gpu_slot resources per worker node")
    ap.add_argument("--epochs", type=int, default=2, help="bcbl.epochs (passt.epochs = 1)")
    ap.add_argument("--out", default=None, help="keep outputs here (default: a temp dir, deleted)")
    a = ap.parse_args()
    header("schedule_makespan")
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.cluster import local_cluster  # the tests' local multi-node Ray: one set-up for both

    from asc_ray.data.synth import generate

    base = Path(a.out or tempfile.mkdtemp(prefix="asc_ray_makespan_"))
    base.mkdir(parents=True, exist_ok=True)
    data = base / "tau"
    if not (data / "meta.csv").is_file():
        generate(data, clips_per_class=20, seed=0)
    nodes = [{"num_cpus": a.gpus, "resources": {"gpu_slot": a.gpus}} for _ in range(a.nodes)]  # a CPU per GPU
    try:
        with local_cluster(nodes, prefix="asmk") as c:
            spans = {mode: run(mode, a, c, base, data) for mode in ("graph", "four_stage")}
        figure("makespan_ratio_graph_over_four_stage", spans["graph"] / spans["four_stage"], ".2f")
    finally:
        if not a.out:
            shutil.rmtree(base, ignore_errors=True)
    footer()


def run(mode: str, a, c, base: Path, data: Path) -> float:
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
    env = c.driver_env(MLFLOW_TRACKING_URI=f"sqlite:///{base}/mlflow.db")
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
