"""One unit of pipeline work (a teacher or a student on a split), run inside a Ray Train worker or a Ray
Tune trial: prepare data (a student's targets come from the LogitAggregator), resume from the latest
checkpoint, train with per-epoch MLflow logging, write the unit's outputs and record, log the final figures
and artifacts."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ray

from asc_ray.config import flatten
from asc_ray.io import atomic_write_text
from asc_ray.outputs import unit_dir
from asc_ray.systems import get_system
from asc_ray.train import Trainer, prepare_data, unit_params

# where an epoch's report stands, not what it measured: MLflow's step, not metrics
_CLOCKS = ("epoch", "progress")

# What a unit's job dict holds (built by run.py, plain data so it pickles to any node):
#   system, split, key, cfg, data_dir, output_dir, tracker, parent_run_id, aggregator (serves the logits
#   tables a student learns from), out_dir (optional: a search trial's own folder instead of the unit's),
#   caches (sample rate -> CacheRef: the waveform cache pre-flight built; optional, else the unit builds or
#   finds one itself), shared (the folders pre-flight checked on a cluster: checked again on this node)


class UnitLog:
    """A unit's own log, `unit.log` in its folder (per-epoch lines, placement, resumes): the console shows
    one line per unit start and finish; the details are here and in MLflow."""

    def __init__(self, folder: Path):
        self.path = folder / "unit.log"

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}\n"
        with open(self.path, "a") as f:
            f.write(line)
        # also to the worker's stdout (Ray's log files; the console with ASC_RAY_WORKER_LOGS=1). Straight to
        # the stream: Ray Train V2 patches print() into its logger, which shows each line twice
        sys.stdout.write(line)
        sys.stdout.flush()


def write_shard_record(folder: Path, trainer: Trainer, rank: int, world_size: int) -> None:
    import hashlib
    import json

    digest = hashlib.sha256()
    for k, v in sorted(trainer.model.named_parameters()):  # not buffers: BatchNorm statistics are per rank
        digest.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    record = {
        "rank": rank,
        "world_size": world_size,
        "files": sorted(trainer.trained_files or ()),
        "parameters": digest.hexdigest(),
        "history": trainer.history,
    }
    name = f"{trainer.system.name}_split{trainer.split}_rank{rank}.json"
    atomic_write_text(folder / name, json.dumps(record, default=float))


def run_unit(
    job: dict,
    report: Callable[[dict, Path | None], None],
    checkpoint_dir: str | None,
    rank: int = 0,
    world_size: int = 1,
    wrap_model=None,
) -> dict:
    from asc_ray.features import frontend_sample_rate
    from asc_ray.pipeline.storage import verify_on_this_node

    system = get_system(job["system"])
    split, cfg = job["split"], job["cfg"]
    verify_on_this_node(job.get("shared", []))  # a node that joined after pre-flight: before writing anything
    out = Path(job.get("out_dir") or unit_dir(job["output_dir"], system.role, split, system.name))
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if cfg["train"]["num_threads"] == 0:
        # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this worker/trial was given instead
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(round(cpus))))
    node_id = ray.get_runtime_context().get_node_id()  # which machine ran it (kept in the result: node_id)
    say = UnitLog(out)
    say(f"[{system.name} split{split}] rank {rank} on node {node_id}")
    logits = None
    if system.needs:  # targets from the actor: works on any node, validated against the split's files
        files, table = ray.get(job["aggregator"].table.remote(system.needs, split))
        logits = (files, table)
    cache = job.get("caches", {}).get(frontend_sample_rate(system.frontend))
    store = cache.open(log=say) if cache else None  # the node's copy: made by its first unit, then reused
    data = prepare_data(
        cfg, job["data_dir"], job["output_dir"], split, system, logits=logits, progress=False, store=store
    )
    trainer = Trainer(
        system, cfg, data, out, split, log=say, rank=rank, world_size=world_size, wrap_model=wrap_model
    )
    if trainer.device.type == "cuda":  # a cluster user's first question: is my GPU used?
        import torch

        say(f"[{system.name} split{split}] training on {torch.cuda.get_device_name(trainer.device)}")
    trainer.unit_key = job["key"]  # stored in checkpoints: a torn one falls back only to this unit's own
    if checkpoint_dir:
        trainer.load_checkpoint(checkpoint_dir)

    tracker, run_id = job["tracker"], None
    if rank == 0 and tracker is not None:
        id_file = out / "mlflow_run_id"
        old = id_file.read_text().strip() if id_file.is_file() else None
        tags = {
            "role": system.role,
            "system": system.name,
            "split": split,
            "augment": system.augment,
            "key": job["key"],
            "seed": cfg["seed"],
            "train_seed": trainer.seed,
        }
        run_id = tracker.start_run(f"{system.name} split{split}", tags, job["parent_run_id"], run_id=old)
        atomic_write_text(id_file, run_id)
        tracker.log_params(
            run_id,
            {
                **flatten(cfg),
                "system": system.name,
                "split": split,
                "train_files": len(data.train_files),
                "val_files": len(data.val_files),
                **unit_params(trainer),
            },
        )

    pid_dir = os.environ.get("ASC_RAY_TEST_PID_DIR") if rank == 0 else None

    def report_and_log(m: dict, ckpt: Path | None) -> None:
        if run_id:
            tracker.log_metrics(run_id, {k: v for k, v in m.items() if k not in _CLOCKS}, step=m["epoch"])
        report(m, ckpt)
        if pid_dir:  # test hook: which process trains this unit, and its last checkpointed epoch
            (Path(pid_dir) / f"{system.name}_split{split}").write_text(f"{os.getpid()} {m['epoch']}\n")

    trainer.record_extra = {"key": job["key"], "run_id": run_id, "node_id": node_id, "started": started}
    shard_dir = os.environ.get("ASC_RAY_TEST_SHARD_DIR")
    if shard_dir:
        trainer.trained_files = set()
    with contextlib.redirect_stderr(io.StringIO()) if rank else contextlib.nullcontext():
        result = trainer.fit(report_and_log)
    if shard_dir:  # test hook: what this rank trained on, and a digest of its final parameters
        write_shard_record(Path(shard_dir), trainer, rank, world_size)
    if rank != 0:
        return {}
    if run_id:
        finals = {
            k: v
            for k, v in result.items()
            if k.startswith(("test_", "val_macro")) or k in ("params", "macs", "selected_epoch")
        }
        tracker.log_metrics(run_id, finals, step=trainer.epoch)
        files = result["files"]
        tracker.log_artifacts(
            run_id, [files[k] for k in ("output", "complexity", "class_plot", "confusion_plot") if k in files]
        )
        from asc_ray.mlflow_model import log_unit_model  # students: an MLflow model to load / serve

        log_unit_model(tracker, run_id, out)
        tracker.finish(run_id)
    return result
