"""Teachers with Ray Train: one TorchTrainer per (teacher, split), fitted from a driver thread as soon as the
scheduler (pipeline/graph.py) launches it; Ray's resources decide where it runs. A student on the graph's
critical path that gets several workers (students.critical_path_workers) runs the same way, data parallel.

A worker killed mid-training is restarted by Ray Train (FailureConfig) and resumes from the checkpoint it
last reported. Run names are stable (system, split, key): re-running the same config continues the same
Ray Train run instead of starting over.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
import ray
import ray.train
import ray.train.torch
from ray import cloudpickle
from ray.train.torch import TorchTrainer

from asc_ray.layout import ray_run_name
from asc_ray.pipeline.process_group import PrivateTorchConfig
from asc_ray.pipeline.ray_private import DatasetsCallback, PlacementGroupCleanerCallback
from asc_ray.pipeline.runtime import own_local_ray, unit_resources
from asc_ray.pipeline.unit import UnitJob, run_unit
from asc_ray.train import link_tree


def persist_by_link(checkpoint, checkpoint_dir_name: str):
    """A `checkpoint_upload_fn` for ray.train.report: Ray Train persists a reported folder by copying it into
    its storage; on a POSIX filesystem (local disk, NFS, EFS) the files are hard-linked instead (Ray still owns
    the registered checkpoint, its retention and its restore; the bytes exist once). Other storage (S3, GCS)
    gets Ray's own upload."""
    storage = ray.train.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem) or not isinstance(
        checkpoint.filesystem, pyarrow.fs.LocalFileSystem
    ):
        return storage.persist_current_checkpoint(checkpoint, checkpoint_dir_name)
    dest = storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    Path(dest).mkdir(parents=True, exist_ok=True)
    link_tree(Path(checkpoint.path), Path(dest))
    return ray.train.Checkpoint(path=dest, filesystem=storage.storage_filesystem)


def teacher_worker(config: dict) -> None:
    """The Ray Train worker function: one teacher (or a data-parallel student) on one split. Its job comes
    pickled (config["job"]): Ray Train's controller keeps the train loop's config too, and would otherwise import
    all of asc-ray's training (torch, MLflow, matplotlib) just to read it."""
    job: UnitJob = cloudpickle.loads(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def report(metrics: dict, ckpt: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt)) if ckpt is not None else None
        # only on checkpoint epochs; hard-linked into Ray's storage where it is a filesystem (one copy)
        ray.train.report(
            {k: v for k, v in metrics.items()}, checkpoint=checkpoint, checkpoint_upload_fn=persist_by_link
        )

    wrap = ray.train.torch.prepare_model if world > 1 else None  # DDP across the unit's workers
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            run_unit(job, report, d, rank, world, wrap)
    else:
        run_unit(job, report, None, rank, world, wrap)


class TeacherTrainer(TorchTrainer):
    """A TorchTrainer without two per-fit actors that do nothing for asc-ray's teachers (`_create_default_callbacks`
    is Ray's hook for its default callbacks; without it this class is a plain TorchTrainer):

    - no Ray Data DatasetManager when it is given no datasets (teachers read the waveform cache themselves);
    - no PlacementGroupCleaner on the local Ray this process started: it asks the state API, which a local Ray
      without a dashboard cannot serve, so it could never act (its local Ray dies with the driver anyway). On a
      cluster it stays: there it frees a dead controller's GPUs.
    Each costs a process per teacher (docs/benchmarks.md, "Fixed cost").
    """

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        idle = () if self.datasets else (DatasetsCallback,)
        if own_local_ray():
            idle += (PlacementGroupCleanerCallback,)
        return [c for c in callbacks if not isinstance(c, idle)]


def build_trainer(job: UnitJob, storage_path: str, use_gpu: bool, workers: int | None = None) -> TorchTrainer:
    """The unit's Ray Train run on `workers` workers (default: a teacher's teachers.num_workers)."""
    ref, cfg = job.ref, job.cfg
    failures = (cfg.teachers if ref.role == "teacher" else cfg.students).max_failures
    return TeacherTrainer(
        teacher_worker,
        train_loop_config={"job": cloudpickle.dumps(job)},
        torch_config=PrivateTorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers or cfg.teachers.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=unit_resources(cfg, ref.role, use_gpu, data_parallel=True),
        ),
        run_config=ray.train.RunConfig(
            name=ray_run_name(ref, job.key),
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own progress lines suffice
        ),
    )
