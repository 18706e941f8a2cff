"""Students with Ray Tune: a Tuner per group of students that became ready together (e.g. every split's
bcbl24 and baseline at the start, a split's kd_ensemble when its teacher table is written), resources per
trial from the config (fractional GPUs on a cluster). With a search space (students.search) or
students.num_samples > 1, a Tuner per (system, split): its trials are distinct (each grid point, each
replica with its own seed), ASHA stops the weak ones early, and Tune's own
`ResultGrid.get_best_result` picks the best on the validation holdout. The best trial's folder becomes
the unit's.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
import warnings
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from asc_ray.config import with_overrides
from asc_ray.console import log
from asc_ray.layout import UnitFiles, UnitRef
from asc_ray.pipeline.unit import UnitJob, run_unit
from asc_ray.systems import get_system
from asc_ray.train.outputs import read_record, write_record

METRIC, MODE = "val_macro_acc", "max"  # model selection: the validation holdout, never test


def student_trial(config: dict) -> None:
    """The Tune function trainable: one student on one split (with the trial's search overrides)."""
    trial = config["trial"]
    job = UnitJob(**trial["job"])
    overrides = dict(trial["overrides"])
    if "seed" in overrides:  # a replica: its own training seed; the holdout (config seed) stays the unit's
        job.seed = overrides.pop("seed")
    job.cfg = with_overrides(job.cfg, overrides)
    if trial.get("trial_dir"):
        job.out_dir = trial["trial_dir"]

    def report(metrics: dict, ckpt: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt)) if ckpt is not None else None
        tune.report(dict(metrics), checkpoint=checkpoint)

    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            result = run_unit(job, report, d)
    else:
        result = run_unit(job, report, None)
    # the trial's last result carries the selected epoch's validation figure: what get_best_result compares
    # (no `progress`: ASHA passes over a result without its clock)
    tune.report({METRIC: result[METRIC], "done": True})


def search_grid(search: dict, num_samples: int, seed: int) -> list[dict]:
    """{'kd.lam': [0.9, 0.98], ...} -> one overrides dict per combination and replica ([{}] without a
    search). Replicas beyond the first get their own training seed ("seed": the unit's seed + 1000 r), so no two
    trials are identical."""
    keys = sorted(search)
    grid = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(search[k] for k in keys))]
    return [{**o, **({"seed": seed + 1000 * r} if r else {})} for o in grid for r in range(num_samples)]


def searching(cfg) -> bool:
    return bool(cfg.students.search) or cfg.students.num_samples > 1


class TrialDone(tune.Callback):
    """Calls `on_complete(job)` (the unit job as a dict) as each trial completes, so a student is reported (and what needs it starts)
    when its own trial ends, not when the last trial of its Tuner does. Runs in the driver."""

    def __init__(self, on_complete):
        self.on_complete = on_complete

    def __getstate__(self):  # Tune pickles its state for restore: the driver's callback (locks) stays here
        return {"on_complete": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        job = ((trial.config or {}).get("trial") or {}).get("job")
        if job and self.on_complete is not None:
            self.on_complete(job)


# the line it says ({start}: FROM_CHECKPOINT or FROM_START)
RETRY = "{unit}: trial failed ({cause}), retrying from {start} (failure {n}, students.max_failures={max})"
FROM_CHECKPOINT, FROM_START = "its last checkpoint", "the start (no checkpoint yet)"


class TrialRetried(tune.Callback):
    """One console line when Tune retries a failed trial (students.max_failures: a lost node, a killed
    worker), in place of Tune's traceback (turned off in runtime.quiet_ray_driver): a retry is no failure
    yet, and a trial out of retries is its unit's failure, which the scheduler reports. Runs in the driver."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        job = ((trial.config or {}).get("trial") or {}).get("job")
        if not job:
            return
        cause = "error"
        try:  # the type says what happened (ActorDiedError, ActorUnavailableError: the node or worker died).
            # Tune has just written it to the driver's staging copy of the trial folder; the storage copy
            # (get_pickled_error) follows later
            with open(trial.pickled_error_file, "rb") as f:
                cause = type(pickle.load(f)).__name__
        except Exception:  # noqa: BLE001 - the line only informs; Tune keeps the error in the trial's folder
            pass
        start = FROM_CHECKPOINT if trial.checkpoint is not None else FROM_START
        unit = UnitRef(job["system"], job["split"], job.get("seed"))
        log(RETRY.format(unit=unit, cause=cause, start=start, n=trial.num_failures, max=trial.max_failures))


def build_tuner(
    jobs: list[UnitJob], cfg, storage_path: str, use_gpu: bool, name: str, callbacks: list | None = None
) -> tune.Tuner:
    """One Tuner over `jobs`. With a search, `jobs` is one unit and every trial writes to its own folder under
    the unit's `trials/`."""
    s = cfg.students
    search = searching(cfg)
    trials = []
    for j in jobs:
        system = get_system(j.system)
        keys = {k: v for k, v in s.search.items() if system.reads(k)}
        grid = search_grid(keys, s.num_samples, cfg.seed if j.seed is None else j.seed)
        for i, o in enumerate(grid):
            trial_dir = str(UnitFiles(j.unit_dir).trial(i)) if search else None
            trials.append({"job": j.as_dict(), "overrides": o, "trial_dir": trial_dir})
    resources = {"cpu": s.cpus_per_trial}
    if use_gpu:
        resources["gpu"] = s.gpus_per_trial
    resources.update({k: float(v) for k, v in s.resources.items()})  # e.g. a node type's custom resource
    scheduler = None
    if search:
        # ASHA's clock is the fraction of a trial's epochs done (`progress`, at most 1): a clock in epochs would
        # stop every trial that trains more epochs than its family's (train.min_steps on a small split).
        # max_t lies past 1 so that no trial is stopped for having finished: its outputs come after that report
        scheduler = ASHAScheduler(time_attr="progress", max_t=2.0, grace_period=0.25)
    trainable = tune.with_resources(student_trial, resources)
    param_space = {"trial": tune.grid_search(trials)}
    path = f"{storage_path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        # the driver stopped mid-run last time: continue the unfinished trials from their checkpoints. The
        # param space is given again, so that the trials get this session's jobs (the LogitAggregator goes by
        # name: a handle in Tune's stored state could not be read back once its driver was killed)
        try:
            return tune.Tuner.restore(
                path, trainable, resume_unfinished=True, restart_errored=True, param_space=param_space
            )
        except (EOFError, OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
            # a state file cut short (the driver died while Tune wrote it): start this Tuner afresh; the
            # units' own checkpoints are in their folders, finished units are reused by their records
            warnings.warn(
                f"Tune state in {path} is unreadable ({type(e).__name__}): starting it afresh", stacklevel=2
            )
            shutil.rmtree(path, ignore_errors=True)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            scheduler=scheduler,
            max_concurrent_trials=s.max_concurrent_trials or None,
            # a finished trial's process runs the next trial of its Tuner: imports and Ray's start-up are paid
            # once per process, not per student (a unit seeds its own RNGs, so no result depends on it)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,  # progress comes from asc-ray's own lines; Tune's tables would print every config
            callbacks=[TrialRetried(), *(callbacks or [])],
        ),
    )


def unit_outcomes(grid, jobs: list[UnitJob], search: bool) -> dict[UnitRef, dict | BaseException]:
    """unit -> its record, or the error that stopped it."""
    out: dict[UnitRef, dict | BaseException] = {}
    if search:
        (job,) = jobs
        k = job.ref
        try:
            best = grid.get_best_result(metric=METRIC, mode=MODE, filter_nan_and_inf=True)
        except RuntimeError as e:  # no trial reported the metric
            out[k] = e
            return out
        if best.error is not None:
            out[k] = best.error
            return out
        rec = promote(Path(best.config["trial"]["trial_dir"]), Path(job.unit_dir), best.config["trial"])
        out[k] = rec if rec is not None else RuntimeError("best trial left no record")
        return out
    errors = {}
    for r in grid:
        job = r.config["trial"]["job"] if r.config else None
        k = UnitRef(job["system"], job["split"], job.get("seed")) if job else None
        if r.error is not None and k is not None:
            errors[k] = r.error
    for j in jobs:
        k = j.ref
        rec = read_record(j.unit_dir, j.key)
        out[k] = rec if rec is not None else errors.get(k, RuntimeError("trial stopped before it finished"))
    return out


def promote(trial_dir: Path, unit_dir: Path, trial: dict) -> dict | None:
    """Make the best trial's outputs the unit's (its record last, so a half copy is never taken as done)."""
    rec = read_record(trial_dir)
    if rec is None:
        return None
    for p in trial_dir.iterdir():
        if p.name == UnitFiles(trial_dir).record.name or p.name.startswith("."):
            continue
        dst = unit_dir / p.name
        if p.is_dir():
            shutil.copytree(p, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(p, dst)
    rec["files"] = {k: str(unit_dir / Path(v).name) for k, v in rec.get("files", {}).items()}
    rec["search_overrides"] = trial["overrides"]
    write_record(unit_dir, rec)
    return rec
