"""GPU training throughput on the pipeline's real path, with GPU utilisation.

    python bench/gpu_throughput.py [--data-dir D] [--clips-per-class 200] [--epochs 3] [--students 4]
                                   [--passt-size full] [--skip-passt] [--work-dir W]

Every figure is asc_ray.train.Trainer.train_epoch(), what a Ray worker runs: batches from the memory-mapped
waveform cache (pinned, one batch in flight: asc_ray.data.dataset.to_device) -> DIR with the impulse responses
on the GPU -> log-mel front-end + frequency masking -> Freq-MixStyle / mixup -> model (bf16 autocast) -> loss ->
optimiser step, with the full profile's settings (batch 256 for N-BCBL, 80 for PaSST). Without --data-dir a
synthetic set in the TAU layout is generated (asc_ray.data.synth) with --clips-per-class clips per scene.
Measured, each in samples/s over the epochs after the first (the first warms cuDNN's autotuner and the caches):
- `student` (kd_ensemble: 32-BCBL at 32 kHz, DIR + FMS, KD loss against a RANDOM logits table), one process;
  and the same with the prefetch off (`student_no_prefetch`: batches copied from pageable memory, in line);
- `students_packed`: --students student processes on the one GPU at once, as the pipeline packs trials at
  students.gpus_per_trial = 0.25 (the sum of their samples/s; `students_packed_gpu_util_pct` meanwhile);
- `bcbl32_teacher` (bcbl32_fms_dir: 44.1 kHz, DIR + FMS + mixup) and `passt_teacher` (passt_fms_dir,
  random weights - pretrained=False, no download - which trains at the same speed).
Utilisation: nvidia-smi sampled every 0.2 s. Without CUDA it prints `no GPU: skipped` and exits 0.
Last line: `student samples/s <number>` (or `no GPU: skipped`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import figure, footer, header, random_teacher_logits  # noqa: E402

SPLIT = 100


class UtilSampler:
    def __init__(self):
        self.values: list[float] = []
        self._stop = False

    def _run(self):
        while not self._stop:
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                self.values.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)

    def __enter__(self):
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._th.join()

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")


def config(a) -> dict:
    from asc_ray.config import load_config

    return load_config(
        "full",
        None,
        [
            f"bcbl.epochs={a.epochs}",
            f"passt.epochs={a.epochs}",
            "passt.pretrained=false",
            f"passt.size={a.passt_size}",
            "train.num_threads=2",
        ]
        + [f"bcbl.batch_size={a.student_batch}", f"passt.batch_size={a.passt_batch}"],
    )


def train(system_name: str, a, work: str, label: str, prefetch: bool = True) -> float:
    """Train `a.epochs` epochs of one system on split 100; samples/s over the epochs after the first."""
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, prepare_data

    cfg = config(a)
    system = get_system(system_name)
    table = Path(work) / "logits" / f"teachers_split{SPLIT}.parquet"
    data = prepare_data(
        cfg, a.data_dir, work, SPLIT, system, logits=table if system.needs else None, progress=False
    )
    trainer = Trainer(system, cfg, data, Path(work) / "runs" / label, SPLIT, log=lambda m: None)
    trainer.prefetch = prefetch
    n = dt = 0.0
    for e in range(a.epochs):
        m = trainer.train_epoch()
        trainer.epoch += 1
        print(
            f"  {label} epoch {e + 1}/{a.epochs}: {m['samples_per_s']:.0f} samples/s ({m['epoch_s']:.2f}s)",
            flush=True,
        )
        if e > 0 or a.epochs == 1:
            n += m["samples_per_s"] * m["epoch_s"]
            dt += m["epoch_s"]
    return n / dt


def _packed_one(args):
    system_name, a, work, label = args
    return train(system_name, a, work, label)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", default=None, help="a TAU-layout dataset (default: generate a synthetic one)"
    )
    p.add_argument("--clips-per-class", type=int, default=200, help="size of the generated set")
    p.add_argument("--work-dir", default=None, help="caches, logits table, checkpoints (default: a temp dir)")
    p.add_argument(
        "--epochs", type=int, default=3, help="per measurement; the first is not counted (unless 1)"
    )
    p.add_argument("--students", type=int, default=4, help="student processes sharing the GPU")
    p.add_argument("--student-batch", type=int, default=256)
    p.add_argument("--passt-batch", type=int, default=80)
    p.add_argument("--passt-size", default="full", choices=("full", "small"))
    p.add_argument("--skip-passt", action="store_true")
    a = p.parse_args(argv)
    header("gpu_throughput (Trainer.train_epoch on the real data path)")
    if not torch.cuda.is_available():
        print("no GPU: skipped", flush=True)
        return 0
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="asc_gpu_bench_"))
    if a.data_dir is None:
        from asc_ray.data.synth import generate

        t = time.perf_counter()
        a.data_dir = str(generate(work / "data", clips_per_class=a.clips_per_class))
        print(f"# synthetic set generated in {time.perf_counter() - t:.1f}s", flush=True)
    random_teacher_logits(a.data_dir, SPLIT, work / "logits" / f"teachers_split{SPLIT}.parquet")
    from asc_ray.data.tau import TauDataset

    print(f"# split {SPLIT}: {len(TauDataset.open(a.data_dir).split_files(SPLIT))} clips", flush=True)

    with UtilSampler() as u:  # also builds the 32 kHz cache the packed students reuse
        student = train("kd_ensemble", a, str(work), "student")
    figure("student_gpu_util_pct", u.mean, ".0f")
    figure("student_no_prefetch_samples/s", train("kd_ensemble", a, str(work), "nopf", prefetch=False))
    if a.students > 1:
        import multiprocessing as mp

        jobs = [("kd_ensemble", a, str(work), f"packed{i}") for i in range(a.students)]
        with mp.get_context("spawn").Pool(a.students) as pool, UtilSampler() as u:
            each = pool.map(_packed_one, jobs)
        figure(f"students_packed_x{a.students}_samples/s", sum(each))
        figure("students_packed_gpu_util_pct", u.mean, ".0f")
    with UtilSampler() as u:
        figure("bcbl32_teacher_samples/s", train("bcbl32_fms_dir", a, str(work), "bcbl32_teacher"))
    figure("bcbl32_teacher_gpu_util_pct", u.mean, ".0f")
    if not a.skip_passt:
        with UtilSampler() as u:
            figure(f"passt_{a.passt_size}_teacher_samples/s", train("passt_fms_dir", a, str(work), "passt"))
        figure("passt_teacher_gpu_util_pct", u.mean, ".0f")
    footer()
    figure("student samples/s", student)
    return 0


if __name__ == "__main__":
    sys.exit(main())
