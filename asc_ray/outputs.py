"""What a finished unit leaves in its folder, and its one result record.

    <output-dir>/<teachers|students>/split<N>/<system>/
        result.json      the unit's record, written once at the end: figures, key, MLflow run, node, times
        model.pt, model_fp16.pt, output.csv (+ .complexity.json), class_accuracy.png, confusion.png,
        split_logits.npy (systems another one learns from)

Everything that needs a unit's result reads the record: resume (its key), the results tables, the
scheduler, MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

from asc_ray.io import atomic_write_json

RECORD = "result.json"


def unit_dir(output_dir: str | Path, role: str, split: int, system: str) -> Path:
    return Path(output_dir) / f"{role}s" / f"split{split}" / system


def write_record(folder: str | Path, record: dict) -> Path:
    return atomic_write_json(Path(folder) / RECORD, record)


def read_record(folder: str | Path, key: str | None = None) -> dict | None:
    """The unit's record; None when there is none, or when `key` is given and the record is for another key."""
    p = Path(folder) / RECORD
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None  # a torn record is no record: the unit runs again
    if key is not None and rec.get("key") != key:
        return None
    return rec
