"""What one split's systems learn, fast: the split's six teachers, their ensemble, and the four students, trained
one after another in this process (no Ray, no MLflow), then one line per system and the ensemble.

    python bench/split_quality.py --data-dir D --split 100 [--out O] [--profile smoke] [overrides ...]
    python bench/split_quality.py --data-dir D --split 5 train.min_steps=0      # what the floor of steps buys
    python bench/split_quality.py --data-dir D --split 100 --teachers-from O kd.temperature=1.0   # students only

For tuning a profile (issue 10): the same Trainer, units and outputs as the pipeline, without its start-up
costs. The teachers' table is the mean of their split logits, as the LogitAggregator writes it; tfs learns from
the kd_ensemble student's. Last line: `SUMMARY split<N> {system: test macro accuracy %, ...}` with `teachers` (the
ensemble's test macro accuracy: the mean of the teachers' test logits) and `cnn_teachers` (the 32-BCBL three).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asc_ray.config import load_config  # noqa: E402
from asc_ray.data.tau import TauDataset  # noqa: E402
from asc_ray.systems import get_system  # noqa: E402
from asc_ray.train import Trainer, ensemble_on_test, finish_unit, prepare_data  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", type=int, required=True)
    p.add_argument("--out", default=None, help="where the units' folders go (default: a temp dir)")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--verbose", action="store_true", help="print every unit's log lines (epochs)")
    p.add_argument(
        "--students", default="kd_ensemble,tfs,baseline,bcbl24", help="which students, comma-separated"
    )
    p.add_argument(
        "--teachers-from",
        default=None,
        help="an earlier run's --out: reuse its teachers of this split (student overrides only, then)",
    )
    p.add_argument(
        "--retrain", default="", help="teachers to train afresh despite --teachers-from, comma-separated"
    )
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    cfg = load_config(a.profile, None, a.overrides)
    out = Path(a.out or tempfile.mkdtemp(prefix="split_quality_")) / f"split{a.split}"
    ds = TauDataset.open(a.data_dir, cfg.data.split_dir)
    acc: dict[str, float] = {}

    def train(name: str, logits=None) -> Path:
        system, t0 = get_system(name), time.time()
        if system.role == "teacher" and a.teachers_from and name not in a.retrain.split(","):
            folder = Path(a.teachers_from) / f"split{a.split}" / name
            acc[name] = round(100 * json.loads((folder / "result.json").read_text())["test_macro_acc"], 1)
            print(f"split{a.split} {name}: test macro accuracy {acc[name]} % (reused {folder})", flush=True)
            return folder
        data = prepare_data(cfg, a.data_dir, out.parent, a.split, system, logits=logits, progress=False)
        log = (lambda m: print(m, flush=True)) if a.verbose else (lambda _m: None)
        trainer = Trainer(system, cfg, data, out / name, a.split, log=log)
        result = finish_unit(system, cfg, a.split, data, out / name, trainer.fit(), log=log)
        acc[name] = round(100 * result["test_macro_acc"], 1)
        print(
            f"split{a.split} {name}: test macro accuracy {acc[name]} % ({trainer.epochs} epochs, selected "
            f"{result['selected_epoch']}, {time.time() - t0:.0f} s)",
            flush=True,
        )
        return out / name

    teachers = cfg.teachers.systems
    folders = [train(t) for t in teachers]
    split_files = ds.split_files(a.split)
    table = np.mean([np.load(f / "split_logits.npy") for f in folders], axis=0).astype(np.float32)
    for label, group in (("teachers", folders), ("cnn_teachers", [f for f in folders if "bcbl" in f.name])):
        if group:
            _, metrics = ensemble_on_test(ds, [f / "test_logits.npy" for f in group])
            acc[label] = round(100 * metrics["macro_acc"], 1)
    print(
        f"split{a.split} teachers (ensemble of {len(folders)}): test macro accuracy {acc['teachers']} %, "
        f"mean |logit| of the table {np.abs(table).mean():.2f}",
        flush=True,
    )
    students = a.students.split(",")
    if "kd_ensemble" in students:
        kd = train("kd_ensemble", (split_files, table))
        if "tfs" in students:
            train("tfs", (split_files, np.load(kd / "split_logits.npy")))
    for name in ("baseline", "bcbl24"):
        if name in students:
            train(name)
    print(f"SUMMARY split{a.split} {' '.join(a.overrides)}: {json.dumps(acc)}", flush=True)
    return acc


if __name__ == "__main__":
    main()
