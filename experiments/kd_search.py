"""How long the smoke profile's students must train for distillation to act, chosen on validation only: kd_ensemble
against no_kd at several student schedules (bcbl.epochs), paired seeds, scored on a holdout of each split that
neither the teachers nor the students train on. Test clips are never read.

    python experiments/kd_search.py --data-dir D [--splits 50,100] [--seeds 0,1,2] [--epochs 12,24,48]
                              [--clean-views] [--output-dir O] [-- key=value overrides]

It runs the teachers once with the holdout carved out (train.select=val, data.holdout_fraction=0.2), then trains
each student in-process (asc_ray.train, no Ray) at each schedule and seed, and scores its last epoch's model (what
train.select=last deploys) on the holdout. Prints the validation macro accuracy per schedule and the paired
difference kd_ensemble - no_kd with its 95 % interval over seeds and holdout clips (asc_ray/stats.py), as
`<figure> <number>` lines and a table (O/kd_search.md). With --clean-views a third student, kd_ensemble hearing
each clip as its teachers did (no DIR, no Freq-MixStyle: bench/kd_effect.py's clean views), is scored beside
them, with its difference to kd_ensemble.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the benches' figure lines
from _common import ROOT, footer, header  # noqa: E402

from asc_ray.config import load_config  # noqa: E402
from asc_ray.stats import interval  # noqa: E402
from asc_ray.systems import get_system  # noqa: E402
from asc_ray.train import Trainer, prepare_data  # noqa: E402

HOLDOUT = ["train.select=val", "data.holdout_fraction=0.2"]
SYSTEMS = ("no_kd", "kd_ensemble")
CLEAN = "kd_ensemble_clean"  # kd_ensemble without DIR and Freq-MixStyle: its view is its teachers' view


def teachers(data: Path, out: Path, splits: list[int], overrides: list[str], env: dict) -> None:
    """The teachers of each split and their table, trained without the holdout (a cheap no_kd run rides along)."""
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "full_pipeline.py"),
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
    ]
    cmd += ["--profile", "smoke", "--splits", ",".join(map(str, splits)), *HOLDOUT]
    cmd += ["students.systems=[no_kd]", "students.seeds=[0]", *overrides]
    print(f"# {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)


def val_correct(data: Path, out: Path, split: int, epochs: int, system: str, seed: int, overrides: list[str]):
    """[holdout clips] bool: which holdout clips the last epoch's model classified right."""
    cfg = load_config("smoke", None, [*HOLDOUT, f"bcbl.epochs={epochs}", *overrides])
    s = (
        dataclasses.replace(get_system("kd_ensemble"), fms=False, dir=False)
        if system == CLEAN
        else get_system(system)
    )
    folder = out / "search" / f"split{split}" / f"epochs{epochs}" / system / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    run = prepare_data(cfg, data, out, split, s, progress=False)
    trainer = Trainer(s, cfg, run, folder, split, log=lambda m: None, seed=seed)
    trainer.load_checkpoint(folder / "checkpoint")  # a search stopped midway redoes no epoch
    trainer.fit()
    logits = trainer.classifier().logits_of(run.store, run.val_files)
    return logits.argmax(1) == run.ds.labels(run.val_files), run.ds.labels(run.val_files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "kd_search")
    p.add_argument("--splits", default="50,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", default="12,24,48")
    p.add_argument(
        "--workers", type=int, default=2, help="trainings at once, each on one thread (default: 2)"
    )
    p.add_argument(
        "--clean-views", action="store_true", help="also kd_ensemble without DIR and Freq-MixStyle"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides for every training")
    a = p.parse_args(argv)
    header(f"kd_search ({a.data_dir}, splits {a.splits}, seeds {a.seeds}, student epochs {a.epochs})")
    out = a.output_dir
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out.resolve()}/mlflow.db")
    splits = [int(s) for s in a.splits.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    teachers(a.data_dir, out, splits, a.overrides, env)
    systems = [*SYSTEMS, *([CLEAN] if a.clean_views else [])]
    clean_head = (" clean views (val) | clean − kd_ensemble |", "---|---|") if a.clean_views else ("", "")
    rows = [
        "| split | student epochs | no_kd (val) | kd_ensemble (val) | kd_ensemble − no_kd |" + clean_head[0],
        "|---|---|---|---|---|" + clean_head[1],
    ]
    epochs_grid = [int(e) for e in a.epochs.split(",")]
    grid = [(sp, e, system, k) for sp in splits for e in epochs_grid for system in systems for k in seeds]
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(val_correct, a.data_dir, out, *g, a.overrides) for g in grid]
        done = {g: j.result() for g, j in zip(grid, jobs, strict=True)}
    for split in splits:
        for epochs in epochs_grid:
            c, labels = {}, None
            for system in systems:
                runs = [done[(split, epochs, system, k)] for k in seeds]
                c[system], labels = np.stack([r[0] for r in runs]), runs[0][1]
            e = {s: interval(c[s], labels) for s in systems}
            d = interval(c["kd_ensemble"], labels, c["no_kd"])
            for s in systems:
                print(f"val_split{split}_epochs{epochs}_{s} {100 * e[s].value:.2f}")
            print(f"diff_split{split}_epochs{epochs} {100 * d.value:.2f}", flush=True)
            row = (
                f"| {split} | {epochs} | {100 * e['no_kd'].value:.1f} | {100 * e['kd_ensemble'].value:.1f} | "
                f"{100 * d.value:+.1f} [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}] |"
            )
            if a.clean_views:
                dc = interval(c[CLEAN], labels, c["kd_ensemble"])
                print(f"diff_split{split}_epochs{epochs}_clean {100 * dc.value:.2f}", flush=True)
                row += f" {100 * e[CLEAN].value:.1f} | {100 * dc.value:+.1f} [{100 * dc.lo:+.1f}, {100 * dc.hi:+.1f}] |"
            rows.append(row)
    md = "\n".join(rows) + "\n"
    (out / "kd_search.md").write_text(md)
    print(md)
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
