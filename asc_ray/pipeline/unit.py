"""One unit of pipeline work (a teacher or a student on a split), run inside a Ray Train worker or a Ray
Tune trial: prepare data (a student's targets come from the LogitAggregator), resume from the latest
checkpoint, train with per-epoch MLflow logging, write the unit's outputs and record, log the final figures
and artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from asc_ray.config import flatten
from asc_ray.data.cache import CacheRef
from asc_ray.features import frontend_sample_rate, input_shape
from asc_ray.io import atomic_write_json
from asc_ray.layout import UnitFiles, UnitRef
from asc_ray.pipeline.aggregator import get_aggregator
from asc_ray.pipeline.preflight import passt_checkpoint_here
from asc_ray.pipeline.storage import SharedFolder, verify_on_this_node
from asc_ray.predict.mlflow_model import log_unit_model
from asc_ray.systems import System, get_system
from asc_ray.tracking import Tracker
from asc_ray.train import Trainer, finish_unit, prepare_data, write_record

# where an epoch's report stands, not what it measured: MLflow's step, not metrics
_CLOCKS = ("epoch", "progress", "end_time")


@dataclass
class UnitJob:
    """Everything a unit needs, as plain data that pickles to any node."""

    system: str
    split: int
    key: str  # its resume key (asc_ray.pipeline.keys)
    cfg: object  # the run's config (asc_ray.config.Config)
    data_dir: str
    output_dir: str
    unit_dir: str  # where its outputs and record go
    tracker: Tracker | None = None
    parent_run_id: str | None = None
    aggregator: str | None = None  # the LogitAggregator's name (aggregator_name): serves a student's tables
    caches: dict[int, CacheRef] = field(default_factory=dict)  # sample rate -> pre-flight's waveform cache
    shared: list[SharedFolder] = field(default_factory=list)  # folders pre-flight checked on a cluster
    out_dir: str | None = None  # a search trial's own folder instead of the unit's
    seed: int | None = None  # a student's seed (students.seeds)
    batch_size: int | None = (
        None  # per rank, where a critical-path unit splits the recipe's batch over workers
    )
    workers_why: str = ""  # why it trains on more than one worker (the record and the timeline say it)
    init_weights: str | None = None  # a PaSST teacher: the pretraining unit's weights it fine-tunes from

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.system, self.split, self.seed)

    def as_dict(self) -> dict:
        """Shallow: Tune walks dicts in its param space (and restores handles in them), not dataclasses."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class UnitLog:
    """A unit's own log, `unit.log` in its folder (per-epoch lines, placement, resumes): the console shows
    one line per unit start and finish; the details are here and in MLflow."""

    def __init__(self, folder: Path):
        self.path = UnitFiles(folder).log

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}\n"
        with open(self.path, "a") as f:
            f.write(line)
        # also to the worker's stdout (Ray's log files; the console with ASC_RAY_WORKER_LOGS=1). Straight to
        # the stream: Ray Train V2 patches print() into its logger, which shows each line twice
        sys.stdout.write(line)
        sys.stdout.flush()


def unit_params(system: System, cfg, trainer: Trainer) -> dict:
    """What this unit actually trains with, as MLflow params beside the flat config: its own seed and epochs,
    the effective warm-up and roll (the `baseline:` recipe overrides `bcbl:`) and the front-end's input."""
    params = {
        "train_seed": trainer.seed,
        "train_epochs": trainer.epochs,  # the family's epochs, or more where train.min_steps asks for them
        "frontend": system.frontend,
        "sample_rate": frontend_sample_rate(system.frontend),
        "input_shape": "x".join(map(str, input_shape(system.frontend))),
    }
    if system.family == "bcbl":
        params.update(warmup_steps=trainer.h.warmup_steps, roll_s=trainer.h.roll_s)
    return params


def run_unit(
    job: UnitJob,
    report: Callable[[dict, Path | None], None],
    checkpoint_dir: str | None,
    rank: int = 0,
    world_size: int = 1,
    wrap_model=None,
) -> dict:
    system = get_system(job.system)
    split, cfg = job.split, job.cfg
    verify_on_this_node(job.shared)  # a node that joined after pre-flight: before writing anything
    if system.model == "passt" and cfg.passt.pretrained and job.shared:  # ... and its PaSST checkpoint
        passt_checkpoint_here(load=False)  # (the teacher loads it next: an error now names the node)
    out = Path(job.out_dir or job.unit_dir)
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.num_threads == 0:
        # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this worker/trial was given instead
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(round(cpus))))
    node_id = ray.get_runtime_context().get_node_id()  # which machine ran it (kept in the result: node_id)
    say = UnitLog(out)
    name = job.ref.name
    say(f"[{name}] rank {rank} on node {node_id} (pid {os.getpid()})")
    logits = None
    if job.ref.needs:  # targets from the actor: works on any node, validated against the split's files
        logits = ray.get(get_aggregator(job.aggregator).table.remote(job.ref.needs))
    cache = job.caches.get(frontend_sample_rate(system.frontend))
    store = cache.open(log=say) if cache else None  # the node's copy: made by its first unit, then reused
    data = prepare_data(cfg, job.data_dir, job.output_dir, split, system, logits, False, store, job.seed)
    trainer = Trainer(
        system,
        cfg,
        data,
        out,
        split,
        log=say,
        rank=rank,
        world_size=world_size,
        wrap_model=wrap_model,
        unit_key=job.key,
        seed=job.seed,
        batch_size=job.batch_size,
        init_weights=job.init_weights,
    )
    if world_size > 1:
        say(f"[{name}] rank {rank}/{world_size}: {len(trainer.batches.files)} training files")
    if trainer.device.type == "cuda":  # a cluster user's first question: is my GPU used?
        say(f"[{name}] training on {torch.cuda.get_device_name(trainer.device)}")
    # Ray's checkpoint, or this unit's own when newer (asc_ray.train.checkpoint: its worker died before Ray had it)
    trainer.load_checkpoint(checkpoint_dir)

    tracker, run_id = job.tracker, None
    if rank == 0 and tracker is not None:
        tags = {
            "role": system.role,
            "system": system.name,
            "split": split,
            "augment": system.augment,
            "key": job.key,
            "seed": cfg.seed if job.seed is None else job.seed,
            "train_seed": trainer.seed,
        }
        run_id = open_run(tracker, out, job.key, name, tags, job.parent_run_id)
    if run_id:
        tracker.log_params(
            run_id,
            {
                **flatten(cfg),
                "system": system.name,
                "split": split,
                "train_files": len(data.train_files),
                "val_files": len(data.val_files),
                **unit_params(system, cfg, trainer),
            },
        )
        # a resumed unit: the epochs it trained before, again (MLflow keeps each once)
        log_epochs(tracker, run_id, trainer.history)

    def report_and_log(m: dict, ckpt: Path | None) -> None:
        if run_id:
            log_epochs(tracker, run_id, [m])
        report(m, ckpt)

    with contextlib.redirect_stderr(io.StringIO()) if rank else contextlib.nullcontext():
        fitted = trainer.fit(report_and_log)
    if rank != 0:
        return {}
    extra = {"key": job.key, "run_id": run_id, "node_id": node_id, "started": started, "seed": job.seed}
    extra.update(workers=world_size, workers_why=job.workers_why)
    result = finish_unit(system, cfg, split, data, out, fitted, extra, log=say, record=False)
    if run_id:
        finals = {
            k: v
            for k, v in result.items()
            if k.startswith(("test_", "val_macro")) or k in ("params", "macs", "selected_epoch")
        }
        # at the last epoch's time: a unit finished twice (killed before its record) logs them once
        tracker.log_metrics(run_id, finals, step=trainer.epoch, at=_end_time(trainer.history[-1:]))
        files = result["files"]
        tracker.log_artifacts(
            run_id, [files[k] for k in ("output", "complexity", "class_plot", "confusion_plot") if k in files]
        )
        log_unit_model(tracker, run_id, out)  # students: an MLflow model to load / serve
        tracker.finish(run_id)
    # the record last: a unit stopped before it is not done, and does all of the above again when resumed
    write_record(out, result)
    return result


RUN_FILE = "mlflow_run.json"  # in the unit folder: {"key", "token", "run_id"} of the unit's MLflow run


def open_run(tracker: Tracker, out: Path, key: str, name: str, tags: dict, parent: str | None) -> str | None:
    """The unit's one MLflow run: the run it made before for this key (it resumes), else a new one. The new
    run's token is kept in the folder before the run is made: a unit killed between making its run and keeping
    its id finds that run again by the token (asc_ray.tracking.Tracker.start_run). None: MLflow unreachable."""
    path = out / RUN_FILE
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # torn by a kill: its run, if any, is found by nothing; a new one is made
        known = {}
    if known.get("key") != key or not known.get("token"):
        known = {"key": key, "token": uuid.uuid4().hex, "run_id": None}
        atomic_write_json(path, known)
    run_id = tracker.start_run(name, tags, parent, run_id=known["run_id"], token=known["token"])
    if run_id and run_id != known["run_id"]:
        atomic_write_json(path, {**known, "run_id": run_id})
    return run_id


def _end_time(history: list[dict]) -> float | None:
    return history[-1].get("end_time") if history else None


def log_epochs(tracker: Tracker, run_id: str, history: list[dict]) -> None:
    """Each epoch's figures at its step and at the time it ended (Trainer.fit's end_time): the same epoch
    logged again (a resumed unit, a spool replayed twice) is one entry in MLflow, not two."""
    for m in history:
        if "end_time" in m:  # (not in the checkpoints of an older asc-ray: logged when they were trained)
            figures = {k: v for k, v in m.items() if k not in _CLOCKS}
            tracker.log_metrics(run_id, figures, step=m["epoch"], at=m["end_time"])
