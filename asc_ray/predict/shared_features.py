"""The front-end's output of one inference pass over cached clips, kept beside the waveform cache for the next pass
over the same clips. Every CNN unit of a run tests on the same clips through the same log-mel front-end, which on a
CPU costs as much as the model (docs/benchmarks.md): the first unit's pass writes it, the others read it.

Bit-identical to computing it again: an entry holds the batches as one_pass ran them (padding included) and is
keyed by everything that decides their values (the clips and their order, the front-end's settings, the batch,
torch's version, thread count and CPU kernels). Only where that holds and it pays: a deterministic front-end
(log-mel; PaSST's draws random numbers even in eval mode) on a CPU (a GPU's front-end is cheaper than reading it
back). A cache that cannot be written is no error: the pass computes as before."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from asc_ray.data.cache import WaveformStore
from asc_ray.features import LogMel

FOLDER = "features"  # beside the waveform caches: <cache_dir>/features/<store>-<key>.npy


def entry(
    frontend: torch.nn.Module, store: WaveformStore, files: Sequence[str], batch: int, pad: bool
) -> Path | None:
    """Where the front-end's output of this pass lives, or None when it is not shared (see the module doc)."""
    if not isinstance(frontend, LogMel) or next(frontend.buffers()).device.type != "cpu":
        return None
    what = {
        "frontend": asdict(replace(frontend.cfg, freqm=0)),  # masking acts in training only
        "store": store.path.name,
        "files": hashlib.sha256("\n".join(files).encode()).hexdigest(),
        "batch": batch,
        "pad": pad,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": torch.backends.cpu.get_cpu_capability(),  # the kernels torch picks (a cache shared by nodes)
    }
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return store.path.parent / FOLDER / f"{store.path.name}-{key}.npy"


def read(path: Path | None, rows: int) -> np.ndarray | None:
    """The entry, memory-mapped, if it is there and whole."""
    if path is None or not path.is_file():
        return None
    try:
        feats = np.load(path, mmap_mode="r")
    except (OSError, ValueError):  # cut short or not ours: compute (and write it again)
        return None
    return feats if feats.shape[0] == rows else None


class Writer:
    """Writes a pass's front-end output batch by batch into a temporary file, published by rename once whole (a
    concurrent pass of another unit reads a whole entry or none). Any OSError (full disk, read-only cache) drops it."""

    def __init__(self, path: Path | None):
        self.path, self.tmp, self.array = path, None, None

    def put(self, i: int, x: torch.Tensor, rows: int) -> None:
        if self.path is None:
            return
        try:
            if self.array is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, self.tmp = tempfile.mkstemp(
                    dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
                )
                os.close(fd)
                shape = (rows, *x.shape[1:])
                self.array = np.lib.format.open_memmap(self.tmp, "w+", np.float32, shape)
            self.array[i : i + len(x)] = x.numpy()
        except OSError:
            self.drop()

    def publish(self) -> None:
        if self.array is None:
            return
        try:
            self.array.flush()
            self.array = None
            os.replace(self.tmp, self.path)
        except OSError:
            self.drop()

    def drop(self) -> None:
        self.path, self.array = None, None
        if self.tmp:
            with contextlib.suppress(OSError):
                Path(self.tmp).unlink()
