"""The critical path of one split, unit by unit, timed: CNN teacher -> its logits table -> kd_ensemble -> its
table -> tfs, in this process (no Ray, no MLflow: what a unit costs apart from Ray's start-up), each unit as
the pipeline trains and finishes it (asc_ray.train.Trainer.fit, then finish_unit: test in fp32 and fp16,
export, plots, the logits the next unit learns from).

    python bench/gpu_chain.py --data-dir D [--split 100] [--epochs 3] [--teachers bcbl32_fms_dir]
                              [--work-dir W] [key=value ...]

Full profile, with the overrides given (e.g. the speed switches: train.compile=reduce-overhead train.amp=true
train.device_augment=true); every unit trains --epochs epochs (train.epochs). Figures per unit: `<unit>_s` (wall
from building its Trainer to its finished record), `<unit>_train_samples/s` (its epochs after the first), and
`chain_s` (the sum: the split's critical path at these epochs). Last, `chain_split100_h`: the split-100 chain
(the longest teacher, then kd_ensemble, then tfs) at the full profile's epochs over --scale-clips clips (TAU22's
split 100: 139,620) at each unit's measured rate, plus its fixed cost as measured here (start, first epoch,
finish; the finish tests on this set's test split, not TAU22's 29,680 clips). Works on the CPU too (tiny
settings: a check of this script).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, footer, header  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3, help="per unit (train.epochs); the first is not counted")
    p.add_argument("--teachers", default="bcbl32_fms_dir", help="teachers averaged into the table")
    p.add_argument("--work-dir", default=None)
    p.add_argument(
        "--scale-clips", type=int, default=139_620, help="clips of the split the chain is scaled to"
    )
    p.add_argument("overrides", nargs="*", help="config overrides (full profile), e.g. train.amp=true")
    a = p.parse_args(argv)
    header(f"gpu_chain (split {a.split}: {a.teachers} -> kd_ensemble -> tfs)")
    import tempfile

    import numpy as np

    from asc_ray.config import load_config
    from asc_ray.systems import epochs, get_system
    from asc_ray.train import Trainer, finish_unit, prepare_data

    work = Path(a.work_dir or tempfile.mkdtemp(prefix="asc_gpu_chain_"))
    cfg = load_config("full", None, ["passt.pretrained=false", *a.overrides, f"train.epochs={a.epochs}"])
    full = load_config("full", None, ["passt.pretrained=false", *a.overrides])
    print(f"# overrides: {' '.join(a.overrides) or '(none: the profile as it is)'}", flush=True)

    def unit(name: str, logits=None) -> tuple[dict, float, float, float]:
        """Train and finish one unit: its record, wall seconds, steady samples/s, seconds outside steady
        training (start, first epoch, finish)."""
        system = get_system(name)
        t0 = time.perf_counter()
        data = prepare_data(cfg, a.data_dir, work, a.split, system, logits=logits, progress=False)
        out = work / "units" / name
        t = Trainer(system, cfg, data, out, a.split, log=lambda m: None)
        fitted = t.fit()
        rec = finish_unit(system, cfg, a.split, data, out, fitted, log=lambda m: None)
        wall = time.perf_counter() - t0
        steady = t.history[1:] or t.history
        clips = sum(h["samples_per_s"] * h["epoch_s"] for h in steady)
        rate = clips / sum(h["epoch_s"] for h in steady)
        fixed = wall - sum(h["epoch_s"] for h in steady)
        figure(f"{name}_s", wall, ".2f")
        figure(f"{name}_train_samples/s", rate)
        return rec, wall, rate, fixed

    def table(recs: list[dict], files: list[str]) -> tuple[list[str], np.ndarray]:
        """The mean of the units' split logits (what the LogitAggregator writes), aligned with the split."""
        return files, np.mean([np.load(r["files"]["split_logits"]) for r in recs], axis=0).astype(np.float32)

    from asc_ray.data.tau import TauDataset

    files = TauDataset.open(a.data_dir).split_files(a.split)
    print(f"# split {a.split}: {len(files)} clips, {a.epochs} epochs per unit", flush=True)
    total, hours = 0.0, 0.0
    teacher_hours = []
    recs = []
    for name in a.teachers.split(","):
        rec, wall, rate, fixed = unit(name)
        recs.append(rec)
        total += wall
        n = epochs(get_system(name), full) * a.scale_clips
        teacher_hours.append((fixed + n / rate) / 3600)
    hours += max(teacher_hours)  # teachers train side by side: the longest one waits
    for name in ("kd_ensemble", "tfs"):
        rec, wall, rate, fixed = unit(name, table(recs, files))
        recs = [rec]
        total += wall
        hours += (fixed + epochs(get_system(name), full) * a.scale_clips / rate) / 3600
    figure("chain_s", total, ".1f")
    footer()
    figure("chain_split100_h", hours, ".3f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
