"""Decoded-waveform cache: every clip decoded once per sample rate into a memory-mapped int16 store.

    cache_dir/<sample_rate>_<key16>/
        waves.npy     int16 [n_files, n_samples] (PCM, /32768 on read)
        index.json    {"files": [...], "sample_rate", "n_samples", "version"}  (row order = sorted file names)
        COMPLETE      written last: a folder without it is never used

The key hashes the sorted file list, each file's size and mtime_ns, the sample rate and FORMAT_VERSION,
so a changed dataset gets a new folder and an unchanged one is reused without decoding anything.
Builds go to a temp folder beside the final one and are renamed into place, under a file lock, so a crash
or a concurrent builder (several Ray workers) never leaves a half-written cache that looks finished.

A pipeline builds each cache once, in pre-flight, and hands the units a `CacheRef` (the folder's name, from
the key the driver computed: no unit stats the audio files). On a cluster the pre-flight build lies on shared
storage and each node copies the folders it needs to its own disk once (`CacheRef.open`, same lock and
rename): one sequential read of a file instead of decoding every clip again (docs/benchmarks.md).
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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from asc_ray.data.audio import CLIP_SECONDS, SOURCE_SAMPLE_RATE, read_wav
from asc_ray.data.tau import SPLITS, TauDataset
from asc_ray.errors import AGAIN, AscRayError

FORMAT_VERSION = 1  # bump when the stored layout or the decoding/resampling changes
BATCH = 256  # clips decoded + resampled at once: 256 x 44100 float32 = 45 MB, whatever the dataset size
READ_THREADS = 4  # libsndfile releases the GIL: a few threads hide file-system latency
COMPLETE = "COMPLETE"
TMP_PREFIX = ".tmp-"
PCM_SCALE = 32768.0
NODE_CACHE_ENV = "ASC_RAY_CACHE_DIR"  # a node's own cache folder (cluster.yaml: its local NVMe)
# what a unit says of its node's copy of a cache ({what}: COPIED, REUSED or "pre-flight's build")
CACHE_LINE = "waveform cache {name}: {what}, {path}"
COPIED = "copied to this node ({gb:.2f} GB in {s:.1f} s)"
REUSED = "reused this node's copy"


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


def cache_file_list(ds: TauDataset) -> list[str]:
    """One stable superset per dataset (every split file there is, and test), so one cache serves every split
    and stage. (The largest split holds the others; a user who brought smaller splits only gets those.)"""
    files: set[str] = set()
    for s in sorted(SPLITS, reverse=True):
        try:
            files |= set(ds.split_files(s))
        except AscRayError:
            continue
        if s == max(SPLITS):
            break
    return sorted(files | set(ds.test_files()))


def cache_keys(ds: TauDataset, files: Sequence[str], sample_rates: Sequence[int]) -> dict[int, str]:
    """The key of each sample rate's cache over `files`, with one stat() per file whatever the number of rates
    (on shared storage a stat is a round trip: 169k of them take minutes)."""
    listing = "".join(
        f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n" for f in sorted(set(files)) for st in [_stat(ds, f)]
    ).encode()
    out = {}
    for sr in sample_rates:
        h = hashlib.sha256(f"asc-ray waveform cache v{FORMAT_VERSION} sr={sr}\n".encode())
        h.update(listing)
        out[sr] = h.hexdigest()
    return out


def cache_key(ds: TauDataset, files: Sequence[str], sample_rate: int) -> str:
    return cache_keys(ds, files, [sample_rate])[sample_rate]


def cache_name(sample_rate: int, key: str) -> str:
    """The folder of one cache under a cache dir."""
    return f"{sample_rate}_{key[:16]}"


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


def _mkdir(cache_dir: Path) -> Path:
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AscRayError(
            f"cannot create the cache folder: {e.strerror}", path=cache_dir, fix="choose a writable cache_dir"
        ) from None
    return cache_dir


def _publish(cache_dir: Path, name: str, fill: Callable[[Path], None]) -> tuple[WaveformStore, bool]:
    """cache_dir/name, made by fill(temp folder) and renamed into place unless it is finished already; under
    the folder's lock, so concurrent callers make it once. (store, whether this call made it)."""
    final = cache_dir / name
    with _locked(cache_dir / f"{name}.lock"):
        if (final / COMPLETE).is_file():
            return WaveformStore(final), False  # nothing to do
        # holding the lock, any temp folder or marker-less folder of this key is debris of a crash
        for debris in [final, *cache_dir.glob(f"{TMP_PREFIX}{name}-*")]:
            shutil.rmtree(debris, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=cache_dir))
        try:
            fill(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # lose the partial build, never a finished cache
            raise
    return WaveformStore(final), True


def build_cache(
    ds: TauDataset,
    files: Sequence[str],
    sample_rate: int,
    cache_dir: str | Path,
    progress: bool = True,
    key: str | None = None,
) -> WaveformStore:
    """Decode `files` once at `sample_rate` into cache_dir/<sr>_<key16>/, or reuse that folder if it is there.
    `key`: cache_keys()'s value for these files and rate, when the caller has it (saves a stat per file)."""
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise AscRayError(
            f"sample rate must be a positive integer, got {sample_rate!r}", fix="use e.g. 32000 or 44100"
        )
    files = sorted(set(files))
    if not files:
        raise AscRayError("no files to cache", fix="pass the split's (or test set's) file names")
    cache_dir = _mkdir(cache_dir)
    name = cache_name(sample_rate, key or cache_key(ds, files, sample_rate))
    store, _ = _publish(cache_dir, name, lambda tmp: _decode_into(ds, files, sample_rate, tmp, progress))
    return store


def node_cache_dir() -> Path:
    """This node's own cache folder: $ASC_RAY_CACHE_DIR (cluster.yaml sets it to the node's NVMe), else a
    folder in the node's temp dir. Resolved on the node that reads the cache, so each node may differ."""
    return Path(os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "asc_ray_cache").expanduser()


@dataclass(frozen=True)
class CacheRef:
    """A finished cache as the driver hands it to units (plain data: it pickles to any node).

    name: its folder, from the key the driver computed in pre-flight; shared_dir: where pre-flight built it
    (shared storage on a cluster); local_dir: where this node keeps its copy (None: node_cache_dir() of the
    node that opens it). When local_dir is shared_dir (one machine), the pre-flight build is used as it is."""

    name: str
    shared_dir: str
    local_dir: str | None = None

    def open(self, log: Callable[[str], None] | None = None) -> WaveformStore:
        """The node's copy, made from the shared one by the first caller on this node (later callers, and
        callers that wait for it under the lock, reuse it). No audio file is read or stat()ed."""
        shared = Path(self.shared_dir)
        local = Path(self.local_dir).expanduser() if self.local_dir else node_cache_dir()
        if local.resolve() == shared.resolve():  # one machine: the units read pre-flight's build
            store, what = WaveformStore(shared / self.name), "pre-flight's build"
        elif ((local / self.name) / COMPLETE).is_file():  # the usual case after the node's first unit
            store, what = WaveformStore(local / self.name), REUSED
        else:
            t = time.time()
            store, made = _publish(_mkdir(local), self.name, lambda tmp: _copy_cache(shared / self.name, tmp))
            size = (store.path / "waves.npy").stat().st_size / 1e9
            what = COPIED.format(gb=size, s=time.time() - t)
            what = what if made else REUSED  # another unit copied it while this one waited
        if log:
            log(CACHE_LINE.format(name=self.name, what=what, path=store.path))
        return store


def _copy_cache(src: Path, out: Path) -> None:
    if not (src / COMPLETE).is_file():
        raise AscRayError(
            "the waveform cache built in pre-flight is not on this node",
            path=src,
            fix=f"{AGAIN} (pre-flight rebuilds it); on a cluster the output dir must be on "
            "storage every node mounts at the same path",
        )
    need = (src / "waves.npy").stat().st_size
    free = shutil.disk_usage(out).free
    if free < need * 1.05:
        raise AscRayError(
            f"not enough disk space for the waveform cache on this node: {need / 1e9:.1f} GB needed, "
            f"{free / 1e9:.1f} GB free",
            path=out.parent,
            fix=f"free space there, or point data.cache_dir (or ${NODE_CACHE_ENV} on the node) at a larger "
            "node-local disk",
        )
    for name in ("waves.npy", "index.json"):  # one sequential read each (copy_file_range where it can)
        shutil.copyfile(src / name, out / name)
    (out / COMPLETE).write_text("ok\n")  # last, as in a build


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
    # until written back, which for a full-size cache is more than a laptop has (bench/scale.py)
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
