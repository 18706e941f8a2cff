"""Decoded-waveform cache: every clip decoded once per sample rate into a memory-mapped int16 store.

    cache_dir/<sample_rate>_<key16>/
        waves.npy     int16 [n_files, n_samples] (PCM, /32768 on read)
        index.json    {"files": [...], "sample_rate", "n_samples", "version"}  (row order = sorted file names)
        COMPLETE      written last: a folder without it is never used

The key hashes the sorted file list, each file's size and mtime_ns, the sample rate and FORMAT_VERSION,
so a changed dataset gets a new folder and an unchanged one is reused without decoding anything.
Builds go to a temp folder beside the final one and are renamed into place, under a file lock, so a crash
or a concurrent builder (several Ray workers) never leaves a half-written cache that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from asc_ray.data.audio import CLIP_SECONDS, SOURCE_SAMPLE_RATE, read_wav
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError

FORMAT_VERSION = 1  # bump when the stored layout or the decoding/resampling changes
BATCH = 256  # clips decoded + resampled at once: 256 x 44100 float32 = 45 MB, whatever the dataset size
READ_THREADS = 4  # libsndfile releases the GIL: a few threads hide file-system latency
COMPLETE = "COMPLETE"
TMP_PREFIX = ".tmp-"
PCM_SCALE = 32768.0


class WaveformStore:
    """Read-only view over a finished cache folder (the int16 array is memory-mapped, not loaded)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / COMPLETE).is_file():
            raise AscRayError(
                "waveform cache is incomplete (no COMPLETE marker)",
                path=self.path,
                fix="delete this folder; it is rebuilt on the next run",
            )
        index = json.loads((self.path / "index.json").read_text())
        self.sample_rate: int = index["sample_rate"]
        self.n_samples: int = index["n_samples"]
        self.files: list[str] = index["files"]
        self._row = {f: i for i, f in enumerate(self.files)}
        self._data = np.load(self.path / "waves.npy", mmap_mode="r")
        if self._data.shape != (len(self.files), self.n_samples) or self._data.dtype != np.int16:
            raise AscRayError(
                f"waveform cache is inconsistent: array {self._data.shape} {self._data.dtype}",
                path=self.path,
                fix="delete this folder; it is rebuilt on the next run",
            )

    def __reduce__(self):  # pickled (to Ray workers) as its path: never copy the memory map itself
        return (WaveformStore, (self.path,))

    def __len__(self) -> int:
        return len(self.files)

    def index_of(self, filename: str) -> int:
        try:
            return self._row[filename]
        except KeyError:
            raise AscRayError(
                f"{filename} is not in the waveform cache",
                path=self.path,
                fix="build the cache over every file you use (build_cache(ds, files, ...))",
            ) from None

    def rows(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """float32 [len(idx), n_samples] in [-1, 1)."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # read the memory map in ascending order: sequential I/O
        out = np.empty((len(idx), self.n_samples), dtype=np.float32)
        out[order] = self._data[idx[order]]
        out *= 1.0 / PCM_SCALE
        return out

    def get(self, filename: str) -> np.ndarray:
        return self.rows([self.index_of(filename)])[0]


def _stat(ds: TauDataset, filename: str) -> os.stat_result:
    path = ds.audio_path(filename)
    try:
        return path.stat()
    except OSError:
        raise AscRayError(
            "audio file not found",
            path=path,
            fix="check that the data directory is complete (audio/ as listed in meta.csv)",
        ) from None


def cache_key(ds: TauDataset, files: Sequence[str], sample_rate: int) -> str:
    h = hashlib.sha256(f"asc-ray waveform cache v{FORMAT_VERSION} sr={sample_rate}\n".encode())
    for f in sorted(set(files)):
        st = _stat(ds, f)
        h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a second builder of the same key waits, then finds a cache hit
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _to_pcm16(x: torch.Tensor) -> np.ndarray:
    x = torch.clamp(x, -1.0, (PCM_SCALE - 1) / PCM_SCALE)
    return torch.round(x * PCM_SCALE).to(torch.int16).numpy()


def build_cache(
    ds: TauDataset, files: Sequence[str], sample_rate: int, cache_dir: str | Path, progress: bool = True
) -> WaveformStore:
    """Decode `files` once at `sample_rate` into cache_dir/<sr>_<key16>/, or reuse that folder if it is there."""
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise AscRayError(
            f"sample rate must be a positive integer, got {sample_rate!r}", fix="use e.g. 32000 or 44100"
        )
    files = sorted(set(files))
    if not files:
        raise AscRayError("no files to cache", fix="pass the split's (or test set's) file names")
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AscRayError(
            f"cannot create the cache folder: {e.strerror}", path=cache_dir, fix="choose a writable cache_dir"
        ) from None
    name = f"{sample_rate}_{cache_key(ds, files, sample_rate)[:16]}"
    final = cache_dir / name
    with _locked(cache_dir / f"{name}.lock"):
        if (final / COMPLETE).is_file():
            return WaveformStore(final)  # cache hit: nothing decoded
        # holding the lock, any temp folder or marker-less folder of this key is debris of a crash
        for debris in [final, *cache_dir.glob(f"{TMP_PREFIX}{name}-*")]:
            shutil.rmtree(debris, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=cache_dir))
        try:
            _decode_into(ds, files, sample_rate, tmp, progress)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # lose the partial build, never a finished cache
            raise
    return WaveformStore(final)


def _decode_into(ds: TauDataset, files: list[str], sample_rate: int, out: Path, progress: bool) -> None:
    n_src = round(CLIP_SECONDS * SOURCE_SAMPLE_RATE)
    n_out = int(AF.resample(torch.zeros(1, n_src), SOURCE_SAMPLE_RATE, sample_rate).shape[-1])
    bar = tqdm(
        total=len(files),
        desc=f"decoding clips at {sample_rate} Hz",
        unit="clip",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    # plain writes, not a writable memory map: a mapped file's pages count in this process's resident memory
    # until written back (13.8 GB peak RSS in the driver for a full-size cache: bench/scale.py)
    with open(out / "waves.npy", "wb") as fh, ThreadPoolExecutor(READ_THREADS) as pool:
        header = {"descr": np.dtype(np.int16).str, "fortran_order": False, "shape": (len(files), n_out)}
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, len(files), BATCH):
            names = files[start : start + BATCH]
            batch = np.stack(list(pool.map(lambda f: read_wav(ds.audio_path(f)), names)))
            x = torch.from_numpy(batch)
            if sample_rate != SOURCE_SAMPLE_RATE:
                x = AF.resample(x, SOURCE_SAMPLE_RATE, sample_rate)  # one kernel for the whole batch
            fh.write(_to_pcm16(x).tobytes())
            bar.update(len(names))
    bar.close()
    index = {"files": files, "sample_rate": sample_rate, "n_samples": n_out, "version": FORMAT_VERSION}
    (out / "index.json").write_text(json.dumps(index))
    (out / COMPLETE).write_text("ok\n")  # last: only now is the folder a cache
