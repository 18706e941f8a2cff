"""What the pretraining unit gives a PaSST teacher, on validation only: each teacher fine-tuned from the pretrained
weights against the same teacher from scratch, on a holdout of its split (train.select=val), never on test.

    python experiments/pretrain_effect.py --data-dir D --weights W [--splits 25,100] [--teachers passt_fms]
                                    [--output-dir O] [-- key=value overrides]

W is a pretraining unit's weights.pt (`python -m asc_ray.train.pretrain --out U --corpus C`, or a pipeline run's
<output-dir>/pretrain/passt/weights.pt). Prints, per split and teacher, the validation macro accuracy of the
selected epoch and the mean of the last five epochs, from scratch and pretrained (`<figure> <number>` lines).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the benches' figure lines
from _common import ROOT, footer, header  # noqa: E402

from asc_ray.config import load_config  # noqa: E402
from asc_ray.systems import get_system  # noqa: E402
from asc_ray.train import Trainer, prepare_data  # noqa: E402

HOLDOUT = ["train.select=val", "data.holdout_fraction=0.2"]  # 56 clips at split 100 of the README's set


def validate(
    data: Path, out: Path, split: int, teacher: str, weights: Path | None, overrides: list[str]
) -> list:
    cfg = load_config("smoke", None, [*HOLDOUT, *overrides])
    system = get_system(teacher)
    folder = out / f"split{split}" / teacher / ("pretrained" if weights else "scratch")
    folder.mkdir(parents=True, exist_ok=True)
    run = prepare_data(cfg, data, out, split, system, progress=False)
    trainer = Trainer(system, cfg, run, folder, split, log=lambda m: None, init_weights=weights)
    trainer.fit()
    return [m["val_macro_acc"] for m in trainer.history]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True, help="the pretraining unit's weights.pt")
    p.add_argument("--splits", default="25,100")
    p.add_argument("--teachers", default="passt_fms")
    p.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "pretrain_effect")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    header(f"pretrain_effect ({a.data_dir}, splits {a.splits}, {a.teachers}, weights {a.weights})")
    for split in (int(s) for s in a.splits.split(",")):
        for teacher in a.teachers.split(","):
            for name, w in (("scratch", None), ("pretrained", a.weights)):
                val = validate(a.data_dir, a.output_dir, split, teacher, w, a.overrides)
                print(f"val_best_split{split}_{teacher}_{name} {100 * max(val):.1f}")
                print(f"val_last5_split{split}_{teacher}_{name} {100 * np.mean(val[-5:]):.1f}", flush=True)
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
