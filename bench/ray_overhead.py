"""Ray Tune overhead: the same kd_ensemble student training as a Tune trial vs Trainer.fit() in this process.

    python bench/ray_overhead.py --data-dir D [--split 100] [--epochs 6] [--profile full] [key=value ...]

Both sides run asc_ray.train.Trainer.fit() and finish_unit() with the same config, data, cache and random teachers table (see
bench/student_throughput.py); the Tune side is a minimal Tune function trainable, as
asc_ray.pipeline.students runs it (tune.with_resources, a checkpoint reported every epoch via tune.report).
Both use every core (the trial asks for os.cpu_count() CPUs and train.num_threads is set to it, because Ray
sets OMP_NUM_THREADS to the trial's CPU count inside workers).
Figures: steady-state training samples/s (epochs after the first) inside each, the fit() wall time of each,
and the end-to-end wall time (Tune side: ray.init + Tuner.fit + shutdown; plain side: data + Trainer + fit).
Last line: `overhead_pct <end-to-end Tune wall time over plain, in %>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, figure, footer, header, random_teacher_logits  # noqa: E402

from asc_ray.config import load_config  # noqa: E402
from asc_ray.systems import get_system  # noqa: E402
from asc_ray.train import Trainer, finish_unit, prepare_data  # noqa: E402


def train_once(cfg, data_dir: str, work: str, split: int, table: str, out: str, report=None) -> dict:
    """What both sides run: prepare data (cache hit), build the Trainer, fit and finish the unit (test pass,
    export, record), as a pipeline unit does. Returns timings + history."""
    t0 = time.perf_counter()
    system = get_system("kd_ensemble")
    data = prepare_data(cfg, data_dir, work, split, system, logits=table, progress=False)
    trainer = Trainer(system, cfg, data, out, split, log=lambda m: None)
    t1 = time.perf_counter()
    finish_unit(system, cfg, split, data, out, trainer.fit(report), log=lambda m: None)
    t2 = time.perf_counter()
    sps = [h["samples_per_s"] for h in trainer.history]
    eps = [h["epoch_s"] for h in trainer.history]
    steady = (
        sum(s * e for s, e in zip(sps[1:], eps[1:], strict=True)) / max(sum(eps[1:]), 1e-9)
        if len(sps) > 1
        else sps[0]
    )
    return {"setup_s": t1 - t0, "fit_s": t2 - t1, "steady_sps": steady, "epoch_s": eps}


def tune_side(cfg, a, work, table) -> dict:
    import ray
    from ray import tune

    def trainable(config):
        def report(m, ckpt):
            tune.report(
                {k: v for k, v in m.items() if isinstance(v, (int, float))},
                checkpoint=tune.Checkpoint.from_directory(str(ckpt)) if ckpt else None,
            )

        r = train_once(
            config["cfg"],
            config["data_dir"],
            config["work"],
            config["split"],
            config["table"],
            config["out"],
            report,
        )
        tune.report({"final": 1, "fit_s": r["fit_s"], "setup_s": r["setup_s"], "steady_sps": r["steady_sps"]})

    n = os.cpu_count() or 1
    t0 = time.perf_counter()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(
        address="local",
        num_cpus=n,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    t1 = time.perf_counter()
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": n}),
            param_space={
                "cfg": cfg,
                "data_dir": str(Path(a.data_dir).resolve()),
                "work": str(work),
                "split": a.split,
                "table": str(table),
                "out": str(work / "tune_out"),
            },
            run_config=tune.RunConfig(
                name="ray_overhead",
                storage_path=str(work / "ray_results"),
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        grid = tuner.fit()
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    t3 = time.perf_counter()
    res = grid[0]
    if res.error:
        raise SystemExit(f"the Tune trial failed: {res.error}")
    m = res.metrics
    return {
        "init_s": t1 - t0,
        "tuner_fit_s": t2 - t1,
        "shutdown_s": t3 - t2,
        "total_s": t3 - t0,
        "fit_s": m["fit_s"],
        "setup_s": m["setup_s"],
        "steady_sps": m["steady_sps"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", type=int, default=100)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--profile", default="full", choices=("full", "smoke"))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--work-dir", default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    header("ray_overhead (Tune trial vs plain Trainer.fit, kd_ensemble)")
    overrides = [f"train.num_threads={os.cpu_count()}", *a.overrides, f"bcbl.epochs={a.epochs}"]
    if a.batch_size:
        overrides.append(f"bcbl.batch_size={a.batch_size}")
    cfg = load_config(a.profile, None, overrides)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="asc_bench_ray_")).resolve()
    table = random_teacher_logits(a.data_dir, a.split, work / "logits" / f"teachers_split{a.split}.parquet")
    print(f"# teachers table with RANDOM logits: {table}", flush=True)
    # build the cache once, outside both measurements
    prepare_data(cfg, a.data_dir, work, a.split, get_system("kd_ensemble"), logits=table, progress=False)

    t0 = time.perf_counter()
    plain = train_once(cfg, a.data_dir, str(work), a.split, str(table), str(work / "plain_out"))
    plain_total = time.perf_counter() - t0
    print(f"  plain: epochs {[round(e, 1) for e in plain['epoch_s']]} s", flush=True)
    tuned = tune_side(cfg, a, work, table)
    figure("plain_steady samples/s", plain["steady_sps"])
    figure("tune_steady samples/s", tuned["steady_sps"])
    figure("steady_overhead_pct", 100 * (plain["steady_sps"] / tuned["steady_sps"] - 1))
    figure("plain_fit_s", plain["fit_s"], ".2f")
    figure("tune_fit_s (inside the trial)", tuned["fit_s"], ".2f")
    figure("fit_overhead_pct", 100 * (tuned["fit_s"] / plain["fit_s"] - 1))
    figure("ray_init_s", tuned["init_s"], ".2f")
    figure("tuner_fit_s", tuned["tuner_fit_s"], ".2f")
    figure("ray_shutdown_s", tuned["shutdown_s"], ".2f")
    figure("fixed_startup_s", tuned["total_s"] - tuned["fit_s"] - tuned["setup_s"], ".2f")
    figure("plain_total_s", plain_total, ".2f")
    figure("tune_total_s", tuned["total_s"], ".2f")
    footer()
    figure("overhead_pct", 100 * (tuned["total_s"] / plain_total - 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
