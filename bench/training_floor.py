"""The CPU a pipeline run's training alone needs: every unit's clip-passes (its epochs x the clips an epoch
trains, as the Trainer counts them: min_steps, teachers.bcbl_epochs, drop_last, holdout) times its system's
measured CPU per clip.

    python bench/training_floor.py --data-dir D [--profile smoke] [--splits 5,10,25,50,100] [key=value ...]

A floor, not a forecast: it leaves out every process start, import, test pass, export and MLflow call (see
docs/benchmarks.md, "What the fixed cost alone takes"). Divided by the machine's cores it is the shortest wall
time in which any schedule can train these units here. Each system's CPU per clip is measured in this process
on the largest split: one warm-up epoch, then one epoch timed with the process's CPU clock, at the profile's
threads (smoke: 1). kd_ensemble and tfs learn from RANDOM logits here (speed, not accuracy).
Last line: `floor_wall_s <training CPU s / cores>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import figure, footer, header, random_teacher_logits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--profile", default="smoke", choices=("full", "smoke"))
    p.add_argument("--splits", default="5,10,25,50,100")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="default: this machine's")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. teachers.bcbl_epochs=12")
    a = p.parse_args(argv)
    header("training_floor")

    from asc_ray.config import load_config
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, prepare_data

    cfg = load_config(a.profile, None, a.overrides)
    splits = [int(s) for s in a.splits.split(",")]
    names = [*cfg.teachers.systems, *cfg.students.systems]
    work = Path(tempfile.mkdtemp(prefix="asc_ray_floor_"))

    tables: dict[int, Path] = {}  # split -> a logits table of RANDOM logits, written once

    def trainer(name: str, split: int) -> Trainer:
        system = get_system(name)
        logits = None
        if system.needs:  # a KD student reads a logits table over its split: random ones will do
            if split not in tables:
                tables[split] = random_teacher_logits(
                    a.data_dir, split, work / f"logits_split{split}.parquet"
                )
            logits = tables[split]
        data = prepare_data(cfg, a.data_dir, work, split, system, logits=logits, progress=False)
        return Trainer(system, cfg, data, work / name, split, log=lambda _m: None)

    total_cpu = 0.0
    print("| system | clip-passes | CPU ms per clip | CPU s |", flush=True)
    for name in names:
        trainers = {split: trainer(name, split) for split in splits}
        clips = sum(t.epochs * t.batches.clips_per_epoch for t in trainers.values())
        t = trainers[max(splits)]  # the largest split's is timed
        t.train_epoch()  # warm-up: allocator, caches
        c0 = time.process_time()
        m = t.train_epoch()
        n = m["samples_per_s"] * m["epoch_s"]
        ms = 1000 * (time.process_time() - c0) / n
        total_cpu += clips * ms / 1000
        print(f"| {name} | {clips} | {ms:.2f} | {clips * ms / 1000:.0f} |", flush=True)
        figure(f"{name}_clips", clips, "d")
        figure(f"{name}_cpu_ms_per_clip", ms, ".2f")
    figure("training_cpu_s", total_cpu, ".2f")
    figure("cores", a.cores, "d")
    footer()
    figure("floor_wall_s", total_cpu / a.cores, ".2f")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
