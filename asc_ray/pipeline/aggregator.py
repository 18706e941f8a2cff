"""LogitAggregator: a Ray actor that collects the logits of each teacher (and of each kd_ensemble student)
as it finishes, and writes one Parquet table per (source, split) once all of its models are in.

It runs on the driver's node, so tables land in the driver's output dir whatever node trained the model.
Each model's logits are also kept as a part file (atomic), so a re-run reuses finished teachers even when
the table was never written (the driver stopped in between).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import ray

from asc_ray.config import config_hash
from asc_ray.logits import table_metadata, table_path, write_logits_table


class LogitAggregatorImpl:
    def __init__(
        self,
        logits_dir: str,
        split_meta: dict[int, tuple[list[str], list[str], list[str]]],
        expected: dict[str, list[str]],
        data_key: str,
    ):
        """split_meta: split -> (files, scene_labels, devices); expected: source -> model names per split."""
        self.dir = Path(logits_dir)
        self.split_meta = {int(k): v for k, v in split_meta.items()}
        self.expected = expected
        self.data_key = data_key

    def _part(self, source: str, split: int, model: str) -> Path:
        return self.dir / "parts" / f"{source}_split{split}" / f"{model}.npz"

    def has(self, source: str, split: int, model: str, key: str) -> dict | None:
        """The stored result of a finished model whose key matches, else None."""
        p = self._part(source, split, model)
        if not p.is_file():
            return None
        with np.load(p) as z:
            if str(z["key"]) != key:
                return None
            return json.loads(str(z["result"]))

    def submit(
        self,
        source: str,
        split: int,
        model: str,
        logits: np.ndarray,
        key: str,
        run_id: str | None,
        result: dict,
    ) -> str | None:
        """Store one model's logits over the split's training files; returns the table path once complete."""
        files = self.split_meta[split][0]
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(files), 10) or not np.isfinite(logits).all():
            raise ValueError(
                f"{model} split{split}: logits of shape {logits.shape} (finite: "
                f"{bool(np.isfinite(logits).all())}), expected ({len(files)}, 10)"
            )
        p = self._part(source, split, model)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, logits=logits, key=key, run_id=run_id or "", result=json.dumps(result, default=float))
        os.replace(tmp, p)
        return self.maybe_write(source, split)

    def table_key(self, source: str, split: int) -> str | None:
        keys = []
        for m in self.expected[source]:
            p = self._part(source, split, m)
            if not p.is_file():
                return None
            with np.load(p) as z:
                keys.append(str(z["key"]))
        return config_hash([source, split, keys, self.data_key])

    def maybe_write(self, source: str, split: int) -> str | None:
        key = self.table_key(source, split)
        if key is None:
            return None
        path = table_path(self.dir, source, split)
        if path.is_file() and table_metadata(path).get("key") == key:
            return str(path)  # already written for exactly these models
        files, scenes, devices = self.split_meta[split]
        per_model, runs = {}, {}
        for m in self.expected[source]:
            with np.load(self._part(source, split, m)) as z:
                per_model[m] = z["logits"]
                runs[m] = str(z["run_id"])
        write_logits_table(
            path,
            files,
            scenes,
            devices,
            per_model,
            metadata={"key": key, "data_key": self.data_key, "runs": runs, "source": source, "split": split},
        )
        return str(path)

    def table(self, source: str, split: int) -> tuple[list[str], np.ndarray]:
        """(files, averaged logits) of a complete table: how students on any node get their targets."""
        from asc_ray.logits import read_logits

        files = self.split_meta[split][0]
        return files, read_logits(table_path(self.dir, source, split), files)


LogitAggregator = ray.remote(num_cpus=0)(LogitAggregatorImpl)  # one call at a time: no write races


def start_aggregator(logits_dir: str | Path, split_meta: dict, expected: dict, data_key: str):
    """The actor, pinned to this (the driver's) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return LogitAggregator.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
    ).remote(str(logits_dir), split_meta, expected, data_key)
