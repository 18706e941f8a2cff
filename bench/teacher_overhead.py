"""Where a teacher's Ray Train run spends its time, before its first batch and after its last.

One bcbl32_fms teacher on a tiny split, 1 epoch, fitted exactly as the pipeline does (build_trainer ->
TorchTrainer.fit from the driver, a real local Ray), three times. From the unit's record and the driver's
clock it splits the wall time into phases:

    launch_to_worker_s   fit() called -> the train function runs in a worker (controller actor, placement
                         group, worker process start, imports, process group)
    worker_setup_s       data (cache open, holdout), model, optimizer, MLflow off here
    train_s              the epochs
    finish_s             test pass, complexity, export, plots, record
    record_to_return_s   record written -> fit() returns (report, controller shutdown, worker teardown)
    machine_cpu_s        CPU seconds the whole machine spent during the fit (every Ray process it started):
                         what a 2-core laptop running 30 teachers pays, unlike the wall time of one alone

    python bench/teacher_overhead.py [--repeats 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import busy_cpu_s, figure, footer, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="each reports once: shows the controller's poll")
    ap.add_argument("--data-dir", default=None, help="default: a tiny synthetic set in a temp dir")
    a = ap.parse_args()
    header("teacher_overhead")
    import ray

    from asc_ray.config import load_config
    from asc_ray.data.synth import generate
    from asc_ray.layout import Layout, UnitRef
    from asc_ray.pipeline.preflight import preflight
    from asc_ray.pipeline.runtime import init_ray
    from asc_ray.pipeline.teachers import build_trainer
    from asc_ray.pipeline.unit import UnitJob
    from asc_ray.train import read_record

    tmp = Path(tempfile.mkdtemp(prefix="asc_ray_bench_"))
    data = Path(a.data_dir) if a.data_dir else generate(tmp / "tau", clips_per_class=20, seed=0)
    cfg = load_config(
        "smoke",
        None,
        [
            f"train.epochs={a.epochs}",  # exactly: the smoke floor of 150 steps would hide the overhead
            "teachers.systems=[bcbl32_fms]",
            "students.systems=[baseline]",
            f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
        ],
    )
    ctx = preflight(cfg, data, tmp / "out", [10])
    t = time.time()
    init_ray()
    figure("ray_init_s", time.time() - t)
    phases: dict[str, list[float]] = {}
    for i in range(a.repeats):
        out = tmp / "out" / f"r{i}"
        job = UnitJob(
            system="bcbl32_fms",
            split=10,
            key=f"bench{i}",
            cfg=cfg,
            data_dir=str(data),
            output_dir=str(out),
            unit_dir=str(Layout(out).unit_dir(UnitRef("bcbl32_fms", 10))),
            caches=ctx.caches,  # the pre-flight build, as the pipeline hands it to its units
        )
        c0, t0 = busy_cpu_s(), time.time()
        build_trainer(job, str(tmp / "ray_results"), False).fit()
        t_end, c_end = time.time(), busy_cpu_s()
        rec = read_record(job.unit_dir)
        got = {
            "launch_to_worker_s": rec["started"] - t0,
            "worker_setup_s": rec["fit_started"] - rec["started"],
            "train_s": rec["finish_started"] - rec["fit_started"],
            "finish_s": rec["finished"] - rec["finish_started"],
            "record_to_return_s": t_end - rec["finished"],
            "machine_cpu_s": c_end - c0,
            "teacher_wall_s": t_end - t0,
        }
        for k, v in got.items():
            phases.setdefault(k, []).append(v)
        print(f"# run {i}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items()), flush=True)
    for k, v in phases.items():
        figure(k, statistics.median(v))
    ray.shutdown()
    footer()
    del ctx


if __name__ == "__main__":
    main()
