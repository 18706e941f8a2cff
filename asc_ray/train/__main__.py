"""`python -m asc_ray.train`: train and evaluate one model, without Ray.

    python -m asc_ray.train --system baseline --data-dir D --split 100 --output-dir O [--epochs 5]

Writes the unit folder O/split<N>/<system>/ (checkpoint, model, output.csv, plots, result.json) and prints its
figures. A kd_ensemble / tfs student reads its teacher logits from --logits (default: the pipeline's table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from asc_ray.config import add_config_arguments, config_from_args
from asc_ray.console import run_cli
from asc_ray.data.tau import SPLITS
from asc_ray.features import describe
from asc_ray.systems import SYSTEMS, get_system
from asc_ray.train.data import Paths, prepare_data
from asc_ray.train.outputs import finish_unit
from asc_ray.train.pretrain import pretrained_models, pretrained_weights
from asc_ray.train.trainer import Trainer


def main(argv: list[str] | None = None, prog: str = "python -m asc_ray.train") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Train and evaluate one model (no Ray).")
    p.add_argument("--system", metavar="SYSTEM", help="a teacher or student: " + ", ".join(SYSTEMS))
    p.add_argument("--split", type=int, choices=SPLITS, help="training split, %% of the train fold")
    p.add_argument("--data-dir", help="TAU22 development set (meta.csv, audio/, split files)")
    p.add_argument("--output-dir", help="the unit folder goes to OUTPUT_DIR/split<N>/<system>")
    add_config_arguments(p)
    p.add_argument(
        "--logits",
        default=None,
        metavar="TABLE",
        help="logits table kd_ensemble / tfs learn from (default <output-dir>/logits/<teachers|kd_ensemble>"
        "_split<N>.parquet)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="train from scratch, replacing what an earlier run of it left"
    )
    a = p.parse_intermixed_args(argv)  # options may follow key=value overrides
    missing = [
        f"--{n.replace('_', '-')}" for n in ("system", "split", "data_dir", "output_dir") if not getattr(a, n)
    ]
    if missing and not a.print_config:
        p.error("the following arguments are required: " + ", ".join(missing))
    cfg = config_from_args(a)  # --print-config exits here
    system = get_system(a.system)
    out = Path(a.output_dir) / f"split{a.split}" / system.name
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, a.data_dir, a.output_dir, a.split, system, a.logits)
    print(
        f"[{system.name} split{a.split}] {len(data.train_files)} train / {len(data.val_files)} validation / "
        f"{len(data.test_files)} test clips; input {describe(system.frontend)}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}",
        flush=True,
    )
    say = lambda m: print(m, flush=True)  # noqa: E731
    # a PaSST teacher fine-tunes from the pretraining unit's weights, as in the pipeline (pretrain.corpus)
    start = None
    if system.role == "teacher" and system.model in pretrained_models(cfg):
        start = pretrained_weights(cfg, Paths.of(cfg, a.data_dir, a.output_dir).cache_dir, log=say)
    trainer = Trainer(system, cfg, data, out, a.split, log=say, init_weights=start)
    if (out / "checkpoint" / "checkpoint.pt").is_file() and not a.fresh:
        trainer.load_checkpoint(out / "checkpoint")
    result = finish_unit(system, cfg, a.split, data, out, trainer.fit(), log=say)
    shown = {
        k: v
        for k, v in result.items()
        if not k.startswith(("test_class_acc", "test_device_acc")) and k != "files"
    }
    print(json.dumps(shown, indent=1, default=float))
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
