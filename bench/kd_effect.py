"""What distillation buys, measured: every student over paired seeds at several splits, the paired differences
kd_ensemble - no_kd and tfs - kd_ensemble with their 95 % intervals over seeds and test clips (asc_ray/stats.py),
each system's spread over seeds, and a positive control.

    python bench/kd_effect.py [--data-dir D] [--splits 25,50,100] [--seeds 0,1,2,3,4] [--profile smoke]
                              [--teachers-split 100] [--output-dir O] [-- key=value overrides]

D defaults to a synthetic development set that is not the README's (`asc-ray synth --seed 1`, made once under
data/dev_seed1); any TAU-layout folder works. It runs the pipeline once (students.seeds = --seeds), then the
positive control: for each split below --teachers-split, the kd_ensemble student of that split distilled from the
teachers' table of --teachers-split (teachers that saw more than the split), restricted to the split's files, on
the same seeds as no_kd. It breaks the DCASE rule on purpose: it says whether the plumbing passes knowledge on when
the teachers know more than the split, whatever the split's own teachers know. Nothing here is chosen on test: it
only reports. Writes O/kd_effect.md and prints `<figure> <number>` lines.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, footer, header  # noqa: E402

from asc_ray.config import load_config  # noqa: E402
from asc_ray.data.tau import TauDataset  # noqa: E402
from asc_ray.layout import Layout, UnitRef  # noqa: E402
from asc_ray.pipeline.results import correct_on_test  # noqa: E402
from asc_ray.stats import interval, macro_accuracy  # noqa: E402
from asc_ray.systems import get_system  # noqa: E402
from asc_ray.train import Trainer, finish_unit, prepare_data, read_record  # noqa: E402

SYSTEMS = ("no_kd", "kd_ensemble", "tfs", "bcbl24", "baseline")
CONTROL = "kd_ensemble (teachers of split {t})"
CLEAN = "kd_ensemble (clean views)"
DIFFERENCES = (("kd_ensemble", "no_kd"), ("tfs", "kd_ensemble"))
TAGS: dict[str, str] = {}


def run_pipeline(data: Path, out: Path, splits: list[int], args, env: dict) -> None:
    cmd = [sys.executable, str(ROOT / "jobs" / "full_pipeline.py"), "--data-dir", str(data)]
    cmd += ["--output-dir", str(out), "--profile", args.profile, "--splits", ",".join(map(str, splits))]
    cmd += [f"students.seeds=[{args.seeds}]", f"students.systems=[{args.systems}]", *args.overrides]
    print(f"# {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)


def extra_student(
    data: Path, out: Path, split: int, seed: int, args, teachers_split: int, clean: bool
) -> dict:
    """A kd_ensemble student beside the pipeline's, trained in-process (asc_ray.train, no Ray) at `split` and
    `seed` (the same initial weights and batches as the pipeline's students of that seed), resumed by its record:
    distilled from the teachers' table of `teachers_split` restricted to the split's files (the positive control),
    and with `clean`, hearing the clip as its teachers did (no DIR, no Freq-MixStyle: the views agree)."""
    cfg = load_config(args.profile, None, [f"students.seeds=[{args.seeds}]", *args.overrides])
    system = get_system("kd_ensemble")
    if clean:
        system = dataclasses.replace(system, fms=False, dir=False)
    name = f"teachers{teachers_split}" + ("_clean" if clean else "")
    folder = Layout(out / "variants" / name).unit_dir(UnitRef(system.name, split, seed))
    rec = read_record(folder)
    if rec is not None:
        return rec
    table = pq.read_table(
        out / "logits" / f"teachers_split{teachers_split}.parquet", columns=["filename", "logits"]
    )
    files = table.column("filename").to_pylist()
    logits = np.array(table.column("logits").to_pylist(), dtype=np.float32)
    keep = set(TauDataset.open(data, cfg.data.split_dir).split_files(split))
    sel = [i for i, f in enumerate(files) if f in keep]
    data_ = prepare_data(cfg, data, out, split, system, logits=([files[i] for i in sel], logits[sel]))
    folder.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(system, cfg, data_, folder, split, log=lambda m: None, seed=seed)
    trainer.load_checkpoint(folder / "checkpoint")
    rec = finish_unit(system, cfg, split, data_, folder, trainer.fit(), {"seed": seed}, log=lambda m: None)
    print(
        f"# {name} split{split} seed{seed}: test macro accuracy {100 * rec['test_macro_acc']:.2f}%",
        flush=True,
    )
    return rec


def ensemble(out: Path, split: int) -> float:
    with open(out / "teachers.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["system"] == "teachers" and int(r["split"]) == split)
    return float(row["test_macro_acc"])


def _interval(e) -> str:
    return f"{100 * e.value:+.1f} [{100 * e.lo:+.1f}, {100 * e.hi:+.1f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="default: data/dev_seed1 (made when missing)")
    p.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "kd_effect")
    p.add_argument("--splits", default="25,50,100")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--profile", default="smoke", choices=("smoke", "full"))
    p.add_argument("--systems", default=",".join(SYSTEMS), help="the students (default: %(default)s)")
    p.add_argument(
        "--teachers-split", type=int, default=100, help="the positive control's teachers (0: no control)"
    )
    p.add_argument(
        "--clean-views",
        default="",
        metavar="SPLITS",
        help="at these splits also a kd_ensemble student without DIR and Freq-MixStyle: it hears each clip as "
        "its teachers did, the view their logits were made on (e.g. 25,50,100)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides for every training")
    a = p.parse_args(argv)
    data = a.data_dir or ROOT / "data" / "dev_seed1"
    if a.data_dir is None and not (data / "meta.csv").is_file():
        subprocess.run(
            [sys.executable, "-m", "asc_ray.data.synth", "--out", str(data), "--seed", "1"], check=True
        )
    header(f"kd_effect ({data}, splits {a.splits}, seeds {a.seeds}, {a.profile} profile)")
    out = a.output_dir
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out.resolve()}/mlflow.db")
    out.mkdir(parents=True, exist_ok=True)
    splits = sorted({int(s) for s in a.splits.split(",")})
    seeds = [int(s) for s in a.seeds.split(",")]
    t = a.teachers_split
    run_pipeline(data, out, sorted(set(splits) | ({t} if t else set())), a, env)

    ds = TauDataset.open(data)
    labels = ds.labels(ds.test_files())
    control = CONTROL.format(t=t)
    TAGS.update({control: "control", CLEAN: "clean_views"})  # their names in the `<figure> <number>` lines
    systems = [x for x in SYSTEMS if x in a.systems.split(",")]  # no_kd and kd_ensemble at least
    cols = [*systems, *([control] if t else []), *([CLEAN] if a.clean_views else [])]
    diffs = [
        *[(x, y) for x, y in DIFFERENCES if x in systems and y in systems],
        *([(control, "no_kd")] if t else []),
        *([(CLEAN, "kd_ensemble")] if a.clean_views else []),
    ]
    table = [
        "| split | teachers' ensemble | "
        + " | ".join(cols)
        + " | "
        + " | ".join(f"{x} − {y}" for x, y in diffs)
        + " |"
    ]
    table.append("|" + "---|" * (2 + len(cols) + len(diffs)))
    spread = ["| split | system | " + " | ".join(f"seed {s}" for s in seeds) + " | SD | min − max |", ""]
    spread[1] = "|" + "---|" * (4 + len(seeds))
    for split in splits:
        c = {
            s: np.stack(
                [correct_on_test(ds, read_record(Layout(out).unit_dir(UnitRef(s, split, k)))) for k in seeds]
            )
            for s in systems
        }
        for name, teachers_split, clean, wanted in (
            (control, t, False, bool(t) and split < t),
            (CLEAN, split, True, str(split) in a.clean_views.split(",")),
        ):
            if wanted:
                recs = [extra_student(data, out, split, k, a, teachers_split, clean) for k in seeds]
                c[name] = np.stack([correct_on_test(ds, r) for r in recs])
        cells = [f"{ensemble(out, split):.1f}"]
        for col in cols:
            if col not in c:
                cells.append("–")
                continue
            e = interval(c[col], labels)
            cells.append(f"{100 * e.value:.1f} ± {100 * e.half_width:.1f}")
            per_seed = 100 * macro_accuracy(c[col], labels)
            spread.append(
                f"| {split} | {col} | "
                + " | ".join(f"{v:.1f}" for v in per_seed)
                + f" | {per_seed.std(ddof=1):.1f} | {per_seed.max() - per_seed.min():.1f} |"
            )
            print(f"sd_split{split}_{TAGS.get(col, col)} {per_seed.std(ddof=1):.2f}")
        for x, y in diffs:
            if x not in c or y not in c:
                cells.append("–")
                continue
            d = interval(c[x], labels, c[y])
            cells.append(_interval(d) + (" ✓" if d.lo > 0 else " ✗" if d.hi < 0 else ""))
            name = TAGS.get(x, x)
            print(f"diff_split{split}_{name}_minus_{y} {100 * d.value:.2f}")
            print(f"diff_split{split}_{name}_minus_{y}_lo {100 * d.lo:.2f}")
        table.append(f"| {split} | " + " | ".join(cells) + " |")
    md = (
        f"Test macro accuracy (%): the mean over seeds {a.seeds} ± the half-width of its 95 % interval; differences"
        " in points with their 95 % interval over seeds and test clips (asc_ray/stats.py): ✓ above 0, ✗ below 0.\n\n"
        + "\n".join(table)
        + "\n\nEach seed's test macro accuracy (%), its standard deviation and range:\n\n"
        + "\n".join(spread)
        + "\n"
    )
    (out / "kd_effect.md").write_text(md)
    print(md)
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
