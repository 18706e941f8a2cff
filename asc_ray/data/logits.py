"""Logits tables in Parquet, keyed by filename (never by row number).

One table per split and source, under <output-dir>/logits/ (asc_ray.layout names them):
  teachers_split{N}.parquet              filename, scene_label, device, one list<float32>[10] column per teacher,
                                         logits (= mean)
  kd_ensemble_seed{S}_split{N}.parquet   the same with the logits of kd_ensemble's seed S (the "teacher" of tfs's
                                         seed S)
Schema metadata (asc_ray.*) names the runs that produced each column and the config/data key.
Readers check that a table covers exactly the requested files with finite values of the right width.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asc_ray.data.tau import N_CLASSES
from asc_ray.errors import AscRayError
from asc_ray.io import atomic_write, read_or_raise


def write_logits_table(
    path: str | Path,
    filenames: Sequence[str],
    scene_labels: Sequence[str],
    devices: Sequence[str],
    per_model: Mapping[str, np.ndarray],
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write per-model logits and their mean as `logits`; atomic (temp file + rename)."""
    path = Path(path)
    n = len(filenames)
    if not per_model:
        raise ValueError("no logits to write")
    cols = {
        "filename": pa.array(list(filenames), pa.string()),
        "scene_label": pa.array(list(scene_labels), pa.string()),
        "device": pa.array(list(devices), pa.string()),
    }
    stack = []
    for name, arr in per_model.items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.shape != (n, N_CLASSES):
            raise ValueError(f"logits of {name} have shape {arr.shape}, expected {(n, N_CLASSES)}")
        cols[name] = _list_column(arr)
        stack.append(arr)
    cols["logits"] = _list_column(np.mean(stack, axis=0).astype(np.float32))
    meta = {b"asc_ray.models": json.dumps(list(per_model)).encode()}
    for k, v in (metadata or {}).items():
        meta[f"asc_ray.{k}".encode()] = json.dumps(v, default=str).encode()
    table = pa.table(cols).replace_schema_metadata(meta)
    atomic_write(path, lambda f: pq.write_table(table, f), binary=True)
    return path


def _list_column(arr: np.ndarray) -> pa.Array:
    flat = pa.array(arr.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, arr.size + 1, arr.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def table_metadata(path: str | Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return {
        k.decode()[len("asc_ray.") :]: json.loads(v) for k, v in meta.items() if k.startswith(b"asc_ray.")
    }


def read_logits(path: str | Path, files: Sequence[str], column: str = "logits") -> np.ndarray:
    """Logits [len(files), 10] in the order of `files`, joined by filename; validated.

    Fails clearly when the table is missing, does not cover exactly `files`, has non-finite values or the
    wrong number of classes.
    """
    path = Path(path)
    fix = "re-run the stage that writes it (python jobs/full_pipeline.py ... with the same --output-dir), or --fresh"
    table = read_or_raise(
        path,
        lambda p: pq.read_table(p, columns=["filename", column]),
        "logits table",
        fix,
        f"logits table is unreadable or has no column '{column}': {{error}}",
    )
    names = table.column("filename").to_pylist()
    if len(set(names)) != len(names):
        raise AscRayError("logits table lists a filename twice", path=path, fix=fix)
    want, have = set(files), set(names)
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise AscRayError(
            f"logits table does not match the split: {len(missing)} files missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]})",
            path=path,
            fix="the table was made for other data or another split; " + fix,
        )
    col = table.column(column).combine_chunks()
    widths = np.diff(col.offsets.to_numpy())
    if len(widths) and (widths.min() != N_CLASSES or widths.max() != N_CLASSES):
        raise AscRayError(
            f"logits table has rows with {sorted(set(widths.tolist()))} classes, expected {N_CLASSES}",
            path=path,
            fix=fix,
        )
    values = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, N_CLASSES)
    if not np.isfinite(values).all():
        bad = names[int(np.where(~np.isfinite(values).all(axis=1))[0][0])]
        raise AscRayError(f"logits table has NaN or inf values (first at {bad})", path=path, fix=fix)
    row = {n: i for i, n in enumerate(names)}
    return values[[row[f] for f in files]]
