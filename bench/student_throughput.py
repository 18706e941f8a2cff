"""Steady-state training throughput of the kd_ensemble student, the pipeline's real training path, against a
naive loop that decodes and resamples every clip every epoch (the DCASE baseline's way).

    python bench/student_throughput.py --data-dir D --split 100 --epochs 3 [--profile full] [key=value ...]

Real path = asc_ray.train.Trainer.train_epoch(): batches read from the memory-mapped int16 waveform cache
(ClipBatches, no DataLoader), DIR on device-a clips, log-mel front-end + frequency masking, Freq-MixStyle,
32-BCBL forward, KD loss against the logits table, AdamW step. The logits table holds RANDOM logits written by
this script with asc_ray.data.logits.write_logits_table (speed, not accuracy, is measured). Epochs after the first
count (the first warms caches, allocators and torch.compile).

Naive path = the same Trainer step, but its batches come from a torch DataLoader over a Dataset whose
__getitem__ reads the WAV with soundfile and resamples it 44.1 -> 32 kHz with torchaudio, per clip, per epoch.

It also splits one epoch of the real path into data (cache reads), front-end (DIR + log-mel + FMS) and the
rest (model, loss, optimiser), and counts WAV decodes / resamples during the real epochs (expected: 0).
Last line: `samples/s <real path figure>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torchaudio.functional as AF  # noqa: E402
from _common import figure, footer, header, random_teacher_logits  # noqa: E402

from asc_ray.config import load_config  # noqa: E402
from asc_ray.systems import get_system  # noqa: E402
from asc_ray.train import Trainer, prepare_data  # noqa: E402


class Counter:
    """Counts calls of soundfile.read and torchaudio.functional.resample (patched module-wide)."""

    def __enter__(self):
        self.reads = self.resamples = 0
        self._sf, self._rs = sf.read, AF.resample

        def read(*a, **k):
            self.reads += 1
            return self._sf(*a, **k)

        def resample(*a, **k):
            self.resamples += 1
            return self._rs(*a, **k)

        sf.read, AF.resample = read, resample
        return self

    def __exit__(self, *exc):
        sf.read, AF.resample = self._sf, self._rs


class NaiveClips(torch.utils.data.Dataset):
    """The DCASE baseline's way: decode + resample each clip in __getitem__, every epoch."""

    def __init__(self, ds, files, sample_rate, teacher_logits):
        from asc_ray.data.tau import DEVICE_INDEX

        self.paths = [ds.audio_path(f) for f in files]
        self.labels = torch.from_numpy(ds.labels(files))
        self.devices = torch.tensor([DEVICE_INDEX[d] for d in ds.devices(files)])
        self.teacher = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
        self.sr = sample_rate

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        wave, sr = sf.read(self.paths[i], dtype="float32")
        wave = AF.resample(torch.from_numpy(wave), sr, self.sr)
        return {
            "wave": wave,
            "label": self.labels[i],
            "device": self.devices[i],
            "index": i,
            "teacher_logits": self.teacher[i],
        }


class NaiveBatches:
    """Drop-in for ClipBatches in Trainer (set_epoch, len, iter) backed by a DataLoader."""

    def __init__(self, dataset, batch_size, seed, workers, drop_last):
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=workers > 0,
        )

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def run_epochs(trainer: Trainer, epochs: int, label: str) -> float:
    """Train `epochs` epochs; samples/s over the epochs after the first."""
    n = dt = 0.0
    for e in range(epochs):
        m = trainer.train_epoch()
        trainer.epoch += 1
        print(
            f"  {label} epoch {e + 1}/{epochs}: {m['samples_per_s']:.1f} samples/s ({m['epoch_s']:.1f}s)",
            flush=True,
        )
        if e > 0 or epochs == 1:
            n += m["samples_per_s"] * m["epoch_s"]
            dt += m["epoch_s"]
    return n / dt


def breakdown(trainer: Trainer, full_epoch_s: float) -> dict:
    """One epoch's data reading and front-end work alone (the same calls as train_epoch, no model)."""
    gen = torch.Generator().manual_seed(12345)
    trainer.frontend.train()
    t_data = t_front = 0.0
    t = time.perf_counter()
    for batch in trainer.batches:
        t1 = time.perf_counter()
        t_data += t1 - t
        trainer.prepare_inputs(batch, gen)  # the training step's own input path, without the model
        t = time.perf_counter()
        t_front += t - t1
    model = max(full_epoch_s - t_data - t_front, 1e-9)
    return {"data_s": t_data, "frontend_s": t_front, "model_s": model}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", type=int, default=100)
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs per path; the first is not counted (unless 1)"
    )
    p.add_argument(
        "--profile",
        default="full",
        choices=("full", "smoke"),
        help="config profile (full: batch 256, the report's; smoke: batch 16, 1 thread)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--work-dir", default=None, help="cache + logits table + checkpoints (default: a temp dir)"
    )
    p.add_argument("--skip-naive", action="store_true", help="measure the real path only")
    p.add_argument(
        "--naive-workers",
        type=int,
        default=0,
        help="DataLoader workers of the naive loop (default 0: on 2 cores workers compete with the model)",
    )
    p.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. train.compile=true train.num_threads=2"
    )
    a = p.parse_args(argv)
    header("student_throughput (kd_ensemble, Trainer.train_epoch)")
    overrides = list(a.overrides) + [f"bcbl.epochs={a.epochs}"]
    if a.batch_size:
        overrides.append(f"bcbl.batch_size={a.batch_size}")
    cfg = load_config(a.profile, None, overrides)
    system = get_system("kd_ensemble")
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="asc_bench_"))
    table = random_teacher_logits(a.data_dir, a.split, work / "logits" / f"teachers_split{a.split}.parquet")
    print(f"# teachers table with RANDOM logits: {table}", flush=True)
    t = time.perf_counter()
    data = prepare_data(cfg, a.data_dir, work, a.split, system, logits=table, progress=False)
    print(
        f"# data prepared (cache reused or built) in {time.perf_counter() - t:.1f}s; {len(data.train_files)} "
        f"training clips; batch {cfg.bcbl.batch_size}; channels_last {cfg.train.channels_last}, "
        f"compile {cfg.train.compile}, num_threads {cfg.train.num_threads}",
        flush=True,
    )

    trainer = Trainer(system, cfg, data, work / "real", a.split, log=lambda m: None)
    print(f"# torch threads {torch.get_num_threads()}", flush=True)
    with Counter() as c:
        real = run_epochs(trainer, a.epochs, "real")
    figure("decodes_during_epochs", c.reads, "d")
    figure("resamples_during_epochs", c.resamples, "d")
    epoch_s = len(trainer.batches) * trainer.h.batch_size / real
    b = breakdown(trainer, epoch_s)
    figure("epoch_s", epoch_s, ".2f")
    figure("data_read_s_per_epoch", b["data_s"], ".3f")
    figure("frontend_s_per_epoch", b["frontend_s"], ".3f")
    figure("model_step_s_per_epoch", b["model_s"], ".3f")
    figure("data_read_pct_of_model", 100 * b["data_s"] / b["model_s"])
    figure("data_and_frontend_pct_of_model", 100 * (b["data_s"] + b["frontend_s"]) / b["model_s"])

    if not a.skip_naive:
        naive = Trainer(system, cfg, data, work / "naive", a.split, log=lambda m: None)
        naive.batches = NaiveBatches(
            NaiveClips(data.ds, data.train_files, data.store.sample_rate, data.teacher_logits),
            cfg.bcbl.batch_size,
            cfg.seed,
            a.naive_workers,
            drop_last=len(data.train_files) > cfg.bcbl.batch_size,
        )
        with Counter() as c:
            slow = run_epochs(naive, a.epochs, "naive")
        figure("naive_decodes_during_epochs", c.reads, "d")
        figure("naive_samples/s", slow)
        figure("ratio_real_over_naive", real / slow, ".2f")
    footer()
    figure("samples/s", real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
