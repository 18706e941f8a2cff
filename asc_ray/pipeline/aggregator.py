"""LogitAggregator: a Ray actor that collects the logits of each model that another one learns from (the
six teachers of a split; the kd_ensemble student, the "teacher" of tfs) and writes one Parquet table per
(source, split) once the scheduler says its models are all in.

It runs on the driver's node, so tables land in the driver's output dir whatever node trained the model.
Each model's logits are kept as a part file (atomic) with the unit key they came from: a table is written
only from parts whose keys are the ones asked for, and is rewritten only when they change. Nothing lives only
in the actor's memory, so Ray restarts it when its process dies.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from asc_ray.config import config_hash
from asc_ray.data.logits import read_logits, table_metadata, write_logits_table
from asc_ray.data.tau import N_CLASSES
from asc_ray.io import atomic_write
from asc_ray.layout import Layout, TableRef


class LogitAggregatorImpl:
    def __init__(
        self,
        output_dir: str,
        split_meta: dict[int, tuple[list[str], list[str], list[str]]],
        data_keys: dict[int, str],
    ):
        """split_meta: split -> (files, scene_labels, devices) of the split's training files."""
        self.layout = Layout(output_dir)
        self.split_meta = {int(k): v for k, v in split_meta.items()}
        self.data_keys = {int(k): v for k, v in data_keys.items()}

    def part_key(self, table: TableRef, model: str) -> str | None:
        p = self.layout.part(table, model)
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                return str(z["key"])
        except (OSError, ValueError, KeyError):
            return None  # a torn part is no part: it is collected again

    def collect(self, table: TableRef, model: str, logits_path: str, key: str, run_id: str | None) -> None:
        """Take one model's logits over the split's training files (split_logits.npy in its unit folder)."""
        if self.part_key(table, model) == key:
            return
        files = self.split_meta[table.split][0]
        logits = np.asarray(np.load(logits_path), dtype=np.float32)
        if logits.shape != (len(files), N_CLASSES) or not np.isfinite(logits).all():
            raise ValueError(
                f"{model} split{table.split}: logits of shape {logits.shape} (finite: "
                f"{bool(np.isfinite(logits).all())}) in {logits_path}, expected ({len(files)}, {N_CLASSES})"
            )
        atomic_write(
            self.layout.part(table, model),
            lambda f: np.savez(f, logits=logits, key=key, run_id=run_id or ""),
            binary=True,
        )

    def write_table(self, table: TableRef, keys: dict[str, str]) -> str | None:
        """Write (or confirm) `table` from the models in `keys` (model -> unit key); None while a model's
        logits with that key are not in."""
        if any(self.part_key(table, m) != k for m, k in keys.items()):
            return None
        split = table.split
        key = config_hash([table.name, split, sorted(keys.items()), self.data_keys[split]])
        path = self.layout.table(table)
        if path.is_file() and table_metadata(path).get("key") == key:
            return str(path)  # already written for exactly these models
        files, scenes, devices = self.split_meta[split]
        per_model, runs = {}, {}
        for m in keys:
            with np.load(self.layout.part(table, m)) as z:
                per_model[m] = z["logits"]
                runs[m] = str(z["run_id"])
        write_logits_table(
            path,
            files,
            scenes,
            devices,
            per_model,
            metadata={
                "key": key,
                "data_key": self.data_keys[split],
                "runs": runs,
                "source": table.name,
                "split": split,
            },
        )
        return str(path)

    def table(self, table: TableRef) -> tuple[list[str], np.ndarray]:
        """(files, averaged logits) of a written table, validated: how students on any node get targets."""
        files = self.split_meta[table.split][0]
        return files, read_logits(self.layout.table(table), files)

    def pid(self) -> int:
        """Its process (the driver tells a restart by a new one)."""
        return os.getpid()


# One call at a time: no write races. Its state is on disk (parts, tables), so when its process dies Ray starts
# it again and retries the calls in flight (each is idempotent): a lost aggregator costs seconds, no unit.
LogitAggregator = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(LogitAggregatorImpl)


def aggregator_name(output_dir: str | Path) -> str:
    """The actor's name, one per output dir (one run at a time uses it: asc_ray.lock). Units find the actor by
    it, not by a handle: Tune keeps a trial's config in its state, and a handle stored there by a killed driver
    cannot be read back by the next one, while the name finds the next driver's actor."""
    logits_dir = Layout(output_dir).logits_dir
    return "logits-" + hashlib.sha1(str(logits_dir.resolve()).encode()).hexdigest()[:12]


def get_aggregator(name: str):
    """The running actor of that name (in a unit: the same job's namespace)."""
    return ray.get_actor(name)


def start_aggregator(output_dir: str | Path, split_meta: dict, data_keys: dict, wait_s: float = 60.0):
    """The actor, pinned to this (the driver's) node, named by aggregator_name."""
    node = ray.get_runtime_context().get_node_id()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return LogitAggregator.options(
                name=aggregator_name(output_dir),
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            ).remote(str(output_dir), split_meta, data_keys)
        except ValueError:  # the name is still held by a killed driver's actor, which Ray is removing
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
