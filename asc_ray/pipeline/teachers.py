"""Teachers with Ray Train: one TorchTrainer per (teacher, split), fitted from a driver thread as soon as the
scheduler (pipeline/graph.py) launches it; Ray's resources decide where it runs.

A worker killed mid-training is restarted by Ray Train (FailureConfig) and resumes from the checkpoint it
last reported. Run names are stable (system, split, key): re-running the same config continues the same
Ray Train run instead of starting over.
"""

from __future__ import annotations

from pathlib import Path

import ray
import ray.train
import ray.train.torch
from ray.train.torch import TorchTrainer

from asc_ray.checkpointing import persist_by_link
from asc_ray.pipeline.unit import run_unit


def teacher_worker(job: dict) -> None:
    """The Ray Train worker function: one teacher on one split."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def report(metrics: dict, ckpt: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt)) if ckpt is not None else None
        # only on checkpoint epochs; hard-linked into Ray's storage where it is a filesystem (one copy)
        ray.train.report(
            {k: v for k, v in metrics.items()}, checkpoint=checkpoint, checkpoint_upload_fn=persist_by_link
        )

    wrap = ray.train.torch.prepare_model if world > 1 else None  # DDP across the teacher's workers
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            run_unit(job, report, d, rank, world, wrap)
    else:
        run_unit(job, report, None, rank, world, wrap)


def build_trainer(job: dict, storage_path: str, use_gpu: bool) -> TorchTrainer:
    t = job["cfg"]["teachers"]
    resources = {"CPU": t["cpus_per_worker"]}
    if use_gpu:
        resources["GPU"] = t["gpus_per_worker"]
    resources.update({k: float(v) for k, v in t["resources"].items()})  # e.g. a node type's custom resource
    return TorchTrainer(
        teacher_worker,
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t["num_workers"], use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"teacher-{job['system']}-split{job['split']}-{job['key'][:8]}",
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=t["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own progress lines suffice
        ),
    )
