"""The fast data path: batches read straight from the memory-mapped waveform store.

No DataLoader workers: a batch is one fancy-indexed read of the int16 memory map (page cache after the
first epoch), which is faster than per-clip __getitem__ calls and has nothing to pickle or fork.
Teacher logits are joined by the caller (by filename) and passed aligned with `files`.
On a GPU, `to_device` keeps one batch in flight: read and pinned by a background thread, copied on a side
stream while the model computes on the one before.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from asc_ray.data.cache import WaveformStore
from asc_ray.data.tau import DEVICE_INDEX, SCENES, TauDataset
from asc_ray.errors import AscRayError


class ClipBatches:
    """Iterable of batch dicts; one pass is one epoch. Call set_epoch(e) before each epoch when shuffling."""

    def __init__(
        self,
        ds: TauDataset,
        store: WaveformStore,
        files: Sequence[str],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        teacher_logits: np.ndarray | None = None,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise AscRayError(f"batch size must be >= 1, got {batch_size}", fix="set batch_size to e.g. 256")
        self.files = list(files)
        if not self.files:
            raise AscRayError("no files to iterate over", fix="pass a non-empty split / test file list")
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0
        self._labels = torch.from_numpy(ds.labels(self.files))
        self._devices = torch.tensor([DEVICE_INDEX[d] for d in ds.devices(self.files)], dtype=torch.int64)
        self._rows = np.array([store.index_of(f) for f in self.files], dtype=np.int64)
        self._store = store
        self._teacher = None
        if teacher_logits is not None:
            t = np.asarray(teacher_logits)
            if t.shape != (len(self.files), len(SCENES)):
                raise AscRayError(
                    f"teacher logits have shape {t.shape}, expected ({len(self.files)}, {len(SCENES)}) "
                    "(one row per file, aligned with the file list)",
                    fix="join the logits table to the file list by filename before passing it",
                )
            if not np.isfinite(t).all():
                raise AscRayError(
                    "teacher logits contain NaN or infinite values", fix="recompute the teacher logits"
                )
            self._teacher = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.files)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def clips_per_epoch(self) -> int:
        """The clips an epoch yields: drop_last leaves out the last partial batch."""
        return len(self) * self.batch_size if self.drop_last else len(self.files)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.files)
        if self.shuffle:  # (seed, epoch) -> the same order on every worker and on a resumed run
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            t_idx = torch.from_numpy(idx)
            batch = {
                "wave": torch.from_numpy(self._store.rows(self._rows[idx])),
                "label": self._labels[t_idx],
                "device": self._devices[t_idx],
                "index": t_idx.clone(),
            }
            if self._teacher is not None:
                batch["teacher_logits"] = self._teacher[t_idx]
            yield batch


HOST_KEYS = ("index", "device")  # read on the host (bookkeeping, DIR's choice of clips): never copied


def to_device(
    batches: Iterable[dict], device: torch.device | str, host_keys: Sequence[str] = HOST_KEYS
) -> Iterator[dict]:
    """The batches with their tensors on `device` (`host_keys` stay on the host). On CUDA one batch ahead: a
    thread reads the next batch into pinned memory and it is copied on a side stream (non_blocking) while the
    current batch computes; the compute stream waits for that copy before using it. On CPU: as they come."""
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def read():
        try:
            for b in batches:
                pinned = {k: v if k in host_keys else v.pin_memory() for k, v in b.items()}
                while not stop.is_set():
                    try:
                        ready.put(pinned, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            ready.put(e)

    def take():
        item = ready.get()
        if isinstance(item, BaseException):
            raise item
        if item is end:
            return None
        with torch.cuda.stream(copy_stream):
            return {k: v if k in host_keys else v.to(device, non_blocking=True) for k, v in item.items()}

    copy_stream = torch.cuda.Stream(device)
    reader = threading.Thread(target=read, name="asc-ray-prefetch", daemon=True)
    reader.start()
    try:
        nxt = take()
        while nxt is not None:
            compute = torch.cuda.current_stream(device)
            compute.wait_stream(copy_stream)  # this batch's copy is done before any kernel reads it
            for k, v in nxt.items():
                if k not in host_keys:
                    v.record_stream(compute)  # its memory is not reused while the compute stream needs it
            cur, nxt = nxt, take()  # the next batch's copy overlaps this batch's compute
            yield cur
    finally:
        stop.set()
