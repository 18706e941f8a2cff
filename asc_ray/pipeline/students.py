"""Students with Ray Tune: one trial per (system, split), all splits at once, resources per trial from the
config (fractional GPUs on a cluster). With a search space (students.search), several trials per
(system, split) and ASHA stops the weak ones early; the best is chosen on the validation holdout.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from asc_ray.config import with_overrides
from asc_ray.pipeline.unit import run_unit
from asc_ray.systems import get_system


def student_trial(config: dict) -> None:
    """The Tune function trainable: one student on one split (with the trial's search overrides)."""
    trial = config["trial"]
    job = dict(trial["job"])
    job["cfg"] = with_overrides(job["cfg"], trial["overrides"])

    def report(metrics: dict, ckpt: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt)) if ckpt is not None else None
        tune.report(dict(metrics), checkpoint=checkpoint)

    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            result = run_unit(job, report, d)
    else:
        result = run_unit(job, report, None)
    # the final figures as the trial's last result (the driver builds results.csv from them)
    final = {k: v for k, v in result.items() if k != "files"}
    tune.report({**final, "done": True, "epoch": job["cfg"][_family(job)]["epochs"] + 1})


def _family(job: dict) -> str:
    return get_system(job["system"]).family


def search_grid(search: dict) -> list[dict]:
    """{'kd.lam': [0.9, 0.98], ...} -> one overrides dict per combination ([{}] without a search)."""
    if not search:
        return [{}]
    keys = sorted(search)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(search[k] for k in keys))]


def train_students(jobs: list[dict], cfg: dict, storage_path: str, use_gpu: bool, name: str) -> list:
    """Tune runs over `jobs` (unit job dicts); returns a list of ResultGrids.

    Without a search: one Tune run, one trial per (system, split), all concurrent. With a search: one Tune
    run per (system, split), launched together, so that ASHA only compares trials of the same student.
    """
    s = cfg["students"]
    searching = bool(s["search"]) or s["num_samples"] > 1
    groups = [[j] for j in jobs] if searching else [jobs]

    def fit(group: list[dict]):
        system = get_system(group[0]["system"])
        grid = search_grid({k: v for k, v in s["search"].items() if system.reads(k)})
        tag = name if not searching else f"{name}-{group[0]['system']}-split{group[0]['split']}"
        return _tuner(
            group, grid, cfg, storage_path, use_gpu, tag, len(grid) > 1 or s["num_samples"] > 1
        ).fit()

    if len(groups) == 1:
        return [fit(groups[0])]
    pool = ThreadPoolExecutor(max_workers=len(groups))
    try:
        return list(pool.map(fit, groups))
    finally:  # on Ctrl-C / SIGTERM don't wait for running Tune runs: the CLI stops Ray, which ends them
        pool.shutdown(wait=False, cancel_futures=True)


def _tuner(
    jobs: list[dict],
    grid: list[dict],
    cfg: dict,
    storage_path: str,
    use_gpu: bool,
    name: str,
    searching: bool,
) -> tune.Tuner:
    s = cfg["students"]
    resources = {"cpu": s["cpus_per_trial"]}
    if use_gpu:
        resources["gpu"] = s["gpus_per_trial"]
    trials = [{"job": j, "overrides": o} for j in jobs for o in grid]
    scheduler = None
    if searching:
        max_t = cfg[_family(jobs[0])]["epochs"]
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_t + 1, grace_period=max(1, max_t // 4))
    trainable = tune.with_resources(student_trial, resources)
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=s["max_failures"]),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=0,  # progress comes from our own log lines; Tune's tables would print every config
    )
    path = f"{storage_path.rstrip('/')}/{name}"
    param_space = {"trial": tune.grid_search(trials)}
    if tune.Tuner.can_restore(path):
        # the driver stopped mid-run last time: continue the unfinished trials from their checkpoints. The
        # param space is given again: Tune stored the jobs' object references (LogitAggregator handle, tracker)
        # as placeholders, which only the new session's objects can fill (else the trials get no config)
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, restart_errored=True, param_space=param_space
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_macro_acc",
            mode="max",
            scheduler=scheduler,
            num_samples=s["num_samples"],
            max_concurrent_trials=s["max_concurrent_trials"] or None,
        ),
        run_config=run_config,
    )
