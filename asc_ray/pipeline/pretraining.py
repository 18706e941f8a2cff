"""The pretraining unit (pretrain.corpus): asc_ray.train.pretrain as a Ray task, once per run, logged to MLflow as a
child run like any unit. It resumes from its own per-epoch checkpoint: a task whose worker died is retried by Ray
(teachers.max_failures) and redoes no finished epoch; a run killed meanwhile continues it the next time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from asc_ray.config import flatten
from asc_ray.io import atomic_write_json
from asc_ray.layout import PretrainRef
from asc_ray.pipeline.unit import UnitLog, log_epochs, open_run
from asc_ray.tracking import Tracker
from asc_ray.train.pretrain import RECORD, pretrain


@dataclass
class PretrainJob:
    model: str  # the architecture pretrained ("passt")
    cfg: object
    key: str
    unit_dir: str
    corpus_dir: str
    tracker: Tracker | None = None
    parent_run_id: str | None = None


def run_pretrain(job: PretrainJob) -> dict:
    out = Path(job.unit_dir)
    out.mkdir(parents=True, exist_ok=True)
    say, name, started = UnitLog(out), PretrainRef(job.model).name, time.time()
    node = ray.get_runtime_context().get_node_id()
    say(f"[{name}] on node {node} (pid {os.getpid()})")
    run_id = None
    if job.tracker is not None:
        tags = {
            "role": "pretrain",
            "system": name,
            "key": job.key,
            "seed": str(job.cfg.seed),
        }  # as every child
        run_id = open_run(job.tracker, out, job.key, name, tags, job.parent_run_id)
    if run_id:
        params = {
            k: v for k, v in flatten(job.cfg).items() if k.startswith(("pretrain.", "passt.size", "seed"))
        }
        job.tracker.log_params(run_id, {**params, "corpus": job.corpus_dir})
    record = pretrain(
        job.cfg,
        job.corpus_dir,
        out,
        job.key,
        log=say,
        report=(lambda m: log_epochs(job.tracker, run_id, [m])) if run_id else None,
        record=False,
    )
    record.update(node_id=node, started=started, run_id=run_id)
    if run_id:
        job.tracker.log_metrics(run_id, {"holdout_acc": record["holdout_acc"]}, step=record["epochs"])
        job.tracker.finish(run_id)
    atomic_write_json(out / RECORD, record)  # last: a unit stopped before it is not done
    return record


def pretrain_task(job: PretrainJob, resources: dict[str, float]):
    """The unit as a Ray task on a worker with a teacher's resources; retried where its worker dies."""
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    extra = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    task = ray.remote(run_pretrain).options(
        num_cpus=cpus, num_gpus=gpus, resources=extra, max_retries=job.cfg.teachers.max_failures
    )
    return task.remote(job)
