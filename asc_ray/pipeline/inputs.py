"""What a run checks before it creates anything on disk (the output dir, the MLflow store) and before Ray is
imported: its MLflow store, and the data it is asked to train on."""

from __future__ import annotations

from pathlib import Path

from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError
from asc_ray.mlflow_store import FROM_CONFIG, Store, locate_store
from asc_ray.tracking import check_tracking


def run_store(cfg, output_dir: str | Path) -> Store:
    """The run's MLflow store: <output-dir>/mlflow.db unless mlflow.tracking_uri or $MLFLOW_TRACKING_URI
    names another (asc_ray.mlflow_store)."""
    return locate_store(cfg.mlflow.tracking_uri, Path(output_dir).resolve(), FROM_CONFIG)


def check_inputs(cfg, data_dir: str | Path, output_dir: str | Path, splits: list[int]) -> TauDataset:
    """What can be checked before anything is created on disk (no output dir, no store yet): a tracking
    server answers, the data dir holds meta.csv and the split files asked for. Returns the opened dataset."""
    data_dir = Path(data_dir).resolve()
    uri = run_store(cfg, output_dir).uri
    if uri.startswith(("http://", "https://")):
        check_tracking(uri)
    if not data_dir.is_dir():
        raise AscRayError(
            "data dir not found",
            path=data_dir,
            fix="pass --data-dir with the TAU22 development set (`asc-ray data tau22 DIR` downloads it), or "
            "make a synthetic one with `asc-ray synth --out DIR`",
        )
    ds = TauDataset.open(data_dir, cfg.data.split_dir)
    for s in sorted(splits):
        ds.split_files(s)
    ds.test_files()
    return ds
