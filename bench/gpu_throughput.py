"""GPU training throughput on the pipeline's real path, each speed switch off and on, with GPU utilisation.

    python bench/gpu_throughput.py [--data-dir D] [--clips-per-class 200] [--work-dir W] [--epochs 4]
                                   [--models student,bcbl32_teacher,passt_teacher] [--variants V,...]
                                   [--students 4] [--passt-size full] [--cpu]

Every figure is asc_ray.train.Trainer.train_epoch(), what a Ray worker runs: batches from the memory-mapped
waveform cache -> roll / DIR -> log-mel front-end + frequency masking -> Freq-MixStyle / mixup -> model -> loss
-> optimiser step, with the full profile's settings (batch 256 for N-BCBL, 80 for PaSST), on split 100 of the
data. Without --data-dir a synthetic set in the TAU layout is generated (asc_ray.data.synth). Models:
`student` (kd_ensemble: 32-BCBL at 32 kHz, DIR + FMS, KD loss against a RANDOM logits table),
`bcbl32_teacher` (bcbl32_fms_dir: 44.1 kHz, DIR + FMS + mixup), `passt_teacher` (passt_fms_dir, random weights:
passt.pretrained=false, no download; it trains at the same speed). Variants (train.* switches):
    off             compile, amp, channels_last, prefetch, device_augment all off (fp32 eager)
    amp, channels_last, prefetch, device_augment, compile   that one switch on (compile = reduce-overhead:
                    CUDA graphs)
    today           the profile's defaults, the path of the 2026-11-28 figures (bf16, the model's memory
                    format, prefetch)
    all             every switch on (compile=reduce-overhead, amp, channels_last=auto, prefetch, device_augment)
Figures, samples/s over the epochs after the first (the first compiles, records graphs and warms cuDNN):
`<model>_<variant>_samples/s`, `<model>_<variant>_first_epoch_s`, GPU utilisation of today and all
(`..._gpu_util_pct`, nvidia-smi every 0.2 s), and on CUDA the host syncs per step of today and all
(`..._syncs_per_step`, torch.cuda.set_sync_debug_mode): what still waits on the GPU. `students_packed_x4_*`:
four student processes on the GPU at once (students.gpus_per_trial = 0.25), today's path. A variant that fails
prints `# <model> <variant> failed: ...` and nan, and the rest go on.
--cpu runs on the CPU (a check of this script, tiny settings; the figures mean nothing). Without CUDA and
without --cpu it prints `no GPU: skipped`. Last line: `student samples/s <all, else the last variant>`.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import figure, footer, header, random_teacher_logits  # noqa: E402

SPLIT = 100
MODELS = {"student": "kd_ensemble", "bcbl32_teacher": "bcbl32_fms_dir", "passt_teacher": "passt_fms_dir"}
OFF = [
    "train.compile=false",
    "train.amp=false",
    "train.channels_last=false",
    "train.prefetch=false",
    "train.device_augment=false",
]
ON = {
    "amp": "train.amp=true",
    "channels_last": "train.channels_last=true",
    "prefetch": "train.prefetch=true",
    "device_augment": "train.device_augment=true",
    "compile": "train.compile=reduce-overhead",
}
VARIANTS = {
    "off": OFF,
    **{name: [*OFF, on] for name, on in ON.items()},
    "today": [],
    "all": [*(v for k, v in ON.items() if k != "channels_last"), "train.channels_last=auto"],
}


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


def config(a, overrides: list[str]):
    from asc_ray.config import load_config

    return load_config(
        "full",
        None,
        [
            "passt.pretrained=false",
            f"passt.size={a.passt_size}",
            f"train.num_threads={a.threads}",
            f"bcbl.batch_size={a.student_batch}",
            f"passt.batch_size={a.passt_batch}",
            *overrides,
        ],
    )


def trainer(model: str, a, work: Path, label: str, overrides: list[str]):
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, prepare_data

    system = get_system(MODELS[model])
    table = work / "logits" / f"teachers_split{SPLIT}.parquet"
    cfg = config(a, overrides)
    data = prepare_data(
        cfg, a.data_dir, work, SPLIT, system, logits=table if system.needs else None, progress=False
    )
    return Trainer(system, cfg, data, work / "runs" / label, SPLIT, log=lambda m: None)


def measure(model: str, variant: str, a, work: Path) -> dict:
    """Train a.epochs epochs; samples/s over the epochs after the first, the first epoch's seconds."""
    t = trainer(model, a, work, f"{model}_{variant}", VARIANTS[variant])
    n = dt = 0.0
    first = float("nan")
    for e in range(a.epochs):
        m = t.train_epoch()
        t.epoch += 1
        print(
            f"  {model} {variant} epoch {e + 1}/{a.epochs}: {m['samples_per_s']:.0f} samples/s ({m['epoch_s']:.2f}s)"
        )
        if e == 0:
            first = m["epoch_s"]
        if e > 0 or a.epochs == 1:
            n += m["samples_per_s"] * m["epoch_s"]
            dt += m["epoch_s"]
    out = {"samples/s": n / dt, "first_epoch_s": first}
    if t.device.type == "cuda" and variant in ("today", "all"):
        out["syncs_per_step"] = host_syncs(t)
    return out


def host_syncs(t) -> float:
    """Host-device synchronisations per optimizer step in one more epoch (torch's sync debug mode warns at
    each one); an epoch's own start and end (its draws, its loss) are counted in, spread over its steps."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            t.train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in seen if "synchroniz" in str(w.message).lower()]
    return len(syncs) / max(1, len(t.batches))


def run_variant(model: str, variant: str, a, work: Path) -> float:
    sampling = variant in ("today", "all") and not a.cpu
    try:
        with UtilSampler() if sampling else _Nothing() as u:
            r = measure(model, variant, a, work)
    except Exception as e:  # noqa: BLE001 - one failed variant must not lose the others' figures
        print(
            f"# {model} {variant} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        )
        traceback.print_exc(limit=3)
        figure(f"{model}_{variant}_samples/s", math.nan)
        return math.nan
    figure(f"{model}_{variant}_samples/s", r["samples/s"])
    figure(f"{model}_{variant}_first_epoch_s", r["first_epoch_s"], ".2f")
    if sampling:
        figure(f"{model}_{variant}_gpu_util_pct", u.mean, ".0f")
    if "syncs_per_step" in r:
        figure(f"{model}_{variant}_syncs_per_step", r["syncs_per_step"], ".2f")
    return r["samples/s"]


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _packed_one(args):
    a, work, label = args
    return measure("student", "today", a, Path(work))["samples/s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", default=None, help="a TAU-layout dataset (default: generate a synthetic one)"
    )
    p.add_argument("--clips-per-class", type=int, default=200, help="size of the generated set")
    p.add_argument("--work-dir", default=None, help="caches, logits table, checkpoints (default: a temp dir)")
    p.add_argument(
        "--epochs", type=int, default=4, help="per measurement; the first is not counted (unless 1)"
    )
    p.add_argument("--models", default=",".join(MODELS), help="which of " + ", ".join(MODELS))
    p.add_argument("--variants", default=",".join(VARIANTS), help="which of " + ", ".join(VARIANTS))
    p.add_argument("--passt-variants", default="off,amp,today,all", help="PaSST's (its compiles are slow)")
    p.add_argument("--students", type=int, default=4, help="student processes sharing the GPU (0: skip)")
    p.add_argument("--student-batch", type=int, default=256)
    p.add_argument("--passt-batch", type=int, default=80)
    p.add_argument("--passt-size", default="full", choices=("full", "small"))
    p.add_argument("--threads", type=int, default=2, help="train.num_threads")
    p.add_argument("--cpu", action="store_true", help="run on the CPU: a check of this script")
    a = p.parse_args(argv)
    header("gpu_throughput (Trainer.train_epoch on the real data path, each speed switch)")
    if not torch.cuda.is_available() and not a.cpu:
        print("no GPU: skipped", flush=True)
        return 0
    if a.cpu and torch.cuda.is_available():
        sys.exit("--cpu is for machines without CUDA (the Trainer picks the GPU where there is one)")
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="asc_gpu_bench_"))
    if a.data_dir is None:
        from asc_ray.data.synth import generate

        t = time.perf_counter()
        a.data_dir = str(generate(work / "data", clips_per_class=a.clips_per_class))
        print(f"# synthetic set generated in {time.perf_counter() - t:.1f}s", flush=True)
    random_teacher_logits(a.data_dir, SPLIT, work / "logits" / f"teachers_split{SPLIT}.parquet")
    from asc_ray.data.tau import TauDataset

    print(f"# split {SPLIT}: {len(TauDataset.open(a.data_dir).split_files(SPLIT))} clips", flush=True)
    headline = math.nan
    for model in a.models.split(","):
        variants = (a.passt_variants if model == "passt_teacher" else a.variants).split(",")
        for v in variants:
            r = run_variant(model, v, a, work)
            if model == "student" and (v == "all" or math.isnan(headline)):
                headline = r
    if a.students > 1 and not a.cpu and "student" in a.models:
        import multiprocessing as mp

        jobs = [(a, str(work), f"packed{i}") for i in range(a.students)]
        with mp.get_context("spawn").Pool(a.students) as pool, UtilSampler() as u:
            each = pool.map(_packed_one, jobs)
        figure(f"students_packed_x{a.students}_samples/s", sum(each))
        figure(f"students_packed_x{a.students}_gpu_util_pct", u.mean, ".0f")
    footer()
    figure("student samples/s", headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
