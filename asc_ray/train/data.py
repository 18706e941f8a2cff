"""What one training reads, prepared once per process: the split's files with the validation holdout carved
out, the waveform cache at the system's sample rate, the impulse responses, and the teacher logits a
student learns from, joined to its files by filename."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asc_ray.data.cache import WaveformStore, build_cache, cache_file_list
from asc_ray.data.holdout import split_holdout
from asc_ray.data.irs import load_irs
from asc_ray.data.logits import read_logits
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError
from asc_ray.features import frontend_sample_rate
from asc_ray.layout import Layout, UnitRef
from asc_ray.systems import System


@dataclass
class RunData:
    ds: TauDataset
    store: WaveformStore  # waveforms at the system's sample rate
    split_files: list[str]  # the split's training files (what teacher logits cover)
    train_files: list[str]  # split_files minus the validation holdout
    val_files: list[str]  # holdout: model selection only
    test_files: list[str]  # reported, never used for selection
    irs: list[torch.Tensor] | None
    teacher_logits: np.ndarray | None  # aligned with train_files (kd / focusnet students)


@dataclass(frozen=True)
class Paths:
    """Where a run's inputs lie (config data.* over the defaults); its outputs: asc_ray.layout."""

    data_dir: Path
    cache_dir: Path
    irs_dir: Path

    @classmethod
    def of(cls, cfg, data_dir: str | Path, output_dir: str | Path) -> Paths:
        data_dir, output_dir = Path(data_dir), Path(output_dir)
        d = cfg.data
        return cls(
            data_dir=data_dir,
            cache_dir=Path(d.cache_dir) if d.cache_dir else output_dir / "cache",
            irs_dir=Path(d.irs_dir) if d.irs_dir else data_dir / "irs",
        )


def prepare_data(
    cfg,
    data_dir: str | Path,
    output_dir: str | Path,
    split: int,
    system: System,
    logits: str | Path | tuple[list[str], np.ndarray] | None = None,
    progress: bool = True,
    store: WaveformStore | None = None,
    seed: int | None = None,
) -> RunData:
    """Open the data, carve the holdout, reuse/build the waveform cache (or use `store`, the pipeline's: no
    audio file is touched then), load IRs and (for KD/TFS) the teacher logits: a Parquet path, or (files,
    logits) as the LogitAggregator hands them out, by default the table the pipeline writes for the unit
    (system, split, a student's `seed`) in `output_dir`."""
    paths = Paths.of(cfg, data_dir, output_dir)
    ds = TauDataset.open(paths.data_dir, cfg.data.split_dir)
    split_files = ds.split_files(split)
    if cfg.train.select == "last":  # nothing would read a holdout: the whole split trains
        train_files, val_files = list(split_files), []
    else:
        train_files, val_files = split_holdout(ds, split_files, cfg.data.holdout_fraction, cfg.seed)
    if store is None:
        rate = frontend_sample_rate(system.frontend)
        store = build_cache(ds, cache_file_list(ds), rate, paths.cache_dir, progress)
    irs = load_irs(paths.irs_dir, store.sample_rate) if system.dir else None
    teacher_logits = None
    if system.needs:
        path = Layout(output_dir).table(UnitRef(system.name, split, seed).needs)
        if isinstance(logits, tuple):
            pos = {f: i for i, f in enumerate(logits[0])}
            table = logits[1]
            if set(pos) != set(split_files):
                raise AscRayError(
                    f"teacher logits do not cover split {split}'s files",
                    path=path,
                    fix="re-run the teachers stage for this split (or --fresh)",
                )
        else:
            table = read_logits(logits or path, split_files)
            pos = {f: i for i, f in enumerate(split_files)}
        teacher_logits = table[[pos[f] for f in train_files]]
    return RunData(ds, store, split_files, train_files, val_files, ds.test_files(), irs, teacher_logits)


def shard(files: list[str], logits: np.ndarray | None, rank: int, world_size: int):
    """The files (and their teacher logits) one data-parallel rank trains on: every world_size-th file from
    `rank`, equal lengths on every rank (DDP steps in lockstep), the remainder left out."""
    if world_size <= 1:
        return files, logits
    per = len(files) // world_size
    sel = np.arange(rank, per * world_size, world_size)
    return [files[i] for i in sel], None if logits is None else logits[sel]
