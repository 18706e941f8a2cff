"""What distillation and FocusNet buy, measured: the teachers' ensemble, the no-KD control, kd_ensemble, tfs (with
FocusNet's reference and report masks) and the baseline at several splits over paired seeds, with the paired
differences kd_ensemble - no_kd and tfs - kd_ensemble and their 95 % intervals (asc_ray/stats.py).

    python bench/kd_effect.py [--data-dir D] [--splits 25,50,100] [--seeds 0,1,2] [--profile smoke]
                              [--output-dir O] [-- extra key=value overrides for both runs]

D defaults to a synthetic development set that is not the README's (`asc-ray synth --seed 1`, made once under
data/dev_seed1); any TAU-layout folder works. It runs the pipeline twice on the same output: with
focusnet.mask=reference (the code behind Table 3's TFS column), then, on a hard-linked copy, with
focusnet.mask=report (only tfs retrains: every other unit's key is the same). Nothing here is chosen on test: it
only reports.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, footer, header  # noqa: E402

from asc_ray.data.tau import TauDataset  # noqa: E402
from asc_ray.layout import Layout, UnitRef  # noqa: E402
from asc_ray.pipeline.results import correct_on_test  # noqa: E402
from asc_ray.stats import bootstrap  # noqa: E402
from asc_ray.train import read_record  # noqa: E402

SYSTEMS = ("no_kd", "kd_ensemble", "tfs", "baseline")
COLUMNS = ("teachers", "no_kd", "kd_ensemble", "tfs (reference)", "tfs (report)", "baseline")


def run(data: Path, out: Path, args, mask: str, env: dict) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "full_pipeline.py"),
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
    ]
    cmd += ["--profile", args.profile, "--splits", args.splits, f"students.seeds=[{args.seeds}]"]
    cmd += [f"students.systems=[{','.join(SYSTEMS)}]", f"focusnet.mask={mask}", *args.overrides]
    print(f"# {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)


def correct(ds: TauDataset, out: Path, system: str, split: int, seeds: list[int]) -> np.ndarray:
    """[seeds, test clips]: which clips each seed's model got right."""
    recs = [read_record(Layout(out).unit_dir(UnitRef(system, split, s))) for s in seeds]
    return np.stack([correct_on_test(ds, r) for r in recs])


def ensemble(out: Path, split: int) -> float:
    with open(out / "teachers.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["system"] == "teachers" and int(r["split"]) == split)
    return float(row["test_macro_acc"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="default: data/dev_seed1 (made when missing)")
    p.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "kd_effect")
    p.add_argument("--splits", default="25,50,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--profile", default="smoke", choices=("smoke", "full"))
    p.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    a = p.parse_args(argv)
    data = a.data_dir or ROOT / "data" / "dev_seed1"
    if a.data_dir is None and not (data / "meta.csv").is_file():
        subprocess.run(
            [sys.executable, "-m", "asc_ray.data.synth", "--out", str(data), "--seed", "1"], check=True
        )
    header(f"kd_effect ({data}, splits {a.splits}, seeds {a.seeds}, {a.profile} profile)")
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{a.output_dir.resolve()}/mlflow.db")
    a.output_dir.mkdir(parents=True, exist_ok=True)
    ref, rep = a.output_dir / "reference", a.output_dir / "report"
    run(data, ref, a, "reference", env)
    subprocess.run(["rm", "-rf", str(rep)], check=True)
    subprocess.run(["cp", "-al", str(ref), str(rep)], check=True)  # finished files are never written again
    (rep / ".asc-ray.lock").unlink(missing_ok=True)
    run(data, rep, a, "report", env)

    ds = TauDataset.open(data)
    labels = ds.labels(ds.test_files())
    seeds = [int(s) for s in a.seeds.split(",")]
    lines = [
        "| split (%) | "
        + " | ".join(COLUMNS)
        + " | kd_ensemble - no_kd | tfs (ref.) - kd_ensemble | tfs (rep.) - kd_ensemble |"
    ]
    lines.append("|" + "---|" * (len(COLUMNS) + 4))
    for split in (int(s) for s in a.splits.split(",")):
        c = {s: correct(ds, ref, s, split, seeds) for s in SYSTEMS}
        c["tfs (reference)"], c["tfs (report)"] = c.pop("tfs"), correct(ds, rep, "tfs", split, seeds)
        cells = [f"{ensemble(ref, split):.1f}"]
        for col in COLUMNS[1:]:
            e = bootstrap(c[col], labels)
            cells.append(f"{100 * e.value:.1f} ± {100 * e.half_width:.1f}")
        for x, y in (
            ("kd_ensemble", "no_kd"),
            ("tfs (reference)", "kd_ensemble"),
            ("tfs (report)", "kd_ensemble"),
        ):
            d = bootstrap(c[x], labels, c[y])
            cells.append(f"{100 * d.value:+.1f} [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]")
            print(
                f"diff_split{split}_{x.split()[0]}{'_report' if 'report' in x else ''}_minus_{y} {100 * d.value:.2f}"
            )
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
