"""`python -m asc_ray.train`: train and evaluate one model, without Ray.

    python -m asc_ray.train --system baseline --data-dir D --split 100 --output-dir O [--seed S] [--epochs 5]

Writes the unit folder where the pipeline would (asc_ray.layout: O/students/split<N>/<system>/seed<S>/, a
teacher's O/teachers/split<N>/<system>/: checkpoint, model, output.csv, plots, result.json), resumes from its
checkpoint there, and prints its figures. A kd_ensemble / tfs student reads its teacher logits from --logits
(default: the table the pipeline writes in O/logits/ for it).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from asc_ray.config import add_config_arguments, config_from_args
from asc_ray.console import run_cli
from asc_ray.data.tau import SPLITS
from asc_ray.features import describe
from asc_ray.layout import Layout, TableRef, UnitFiles, UnitRef
from asc_ray.systems import SYSTEMS, get_system
from asc_ray.train.data import Paths, prepare_data
from asc_ray.train.outputs import finish_unit
from asc_ray.train.pretrain import pretrained_models, pretrained_weights
from asc_ray.train.trainer import Trainer


def unit_of(cfg, system: str, split: int, seed: int | None = None) -> UnitRef:
    """The pipeline's unit this command trains: a student at `seed` (default: the first of students.seeds)."""
    if get_system(system).role != "student":
        return UnitRef(system, split)
    return UnitRef(system, split, cfg.students.seeds[0] if seed is None else seed)


def main(argv: list[str] | None = None, prog: str = "python -m asc_ray.train") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Train and evaluate one model (no Ray).")
    p.add_argument("--system", metavar="SYSTEM", help="a teacher or student: " + ", ".join(SYSTEMS))
    p.add_argument("--split", type=int, choices=SPLITS, help="training split, %% of the train fold")
    p.add_argument("--data-dir", help="TAU22 development set (meta.csv, audio/, split files)")
    p.add_argument(
        "--output-dir",
        help="a run's output dir: the unit folder goes where the pipeline puts it (e.g. "
        f"{Layout('OUTPUT_DIR').unit_dir(UnitRef('tfs', 100, 0))})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="a student's seed, as the pipeline trains one per students.seeds (default: the first of them)",
    )
    add_config_arguments(p)
    p.add_argument(
        "--logits",
        default=None,
        metavar="TABLE",
        help="logits table kd_ensemble / tfs learn from (default: the one the pipeline writes for it, e.g. "
        f"{Layout('OUTPUT_DIR').table(TableRef('kd_ensemble', 100, 0))} for tfs --seed 0)",
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
    if a.seed is not None and system.role != "student":
        p.error(f"--seed: {system.name} is a {system.role}; only students train once per seed")
    ref = unit_of(cfg, system.name, a.split, a.seed)
    data = prepare_data(cfg, a.data_dir, a.output_dir, a.split, system, a.logits, seed=ref.seed)
    out = Layout(a.output_dir).unit_dir(ref)  # made once the data is known good: bad input leaves no folder
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"[{ref}] {len(data.train_files)} train / {len(data.val_files)} validation / "
        f"{len(data.test_files)} test clips; input {describe(system.frontend)}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}",
        flush=True,
    )
    say = lambda m: print(m, flush=True)  # noqa: E731
    # a PaSST teacher fine-tunes from the pretraining unit's weights, as in the pipeline (pretrain.corpus)
    start = None
    if system.role == "teacher" and system.model in pretrained_models(cfg):
        start = pretrained_weights(cfg, Paths.of(cfg, a.data_dir, a.output_dir).cache_dir, log=say)
    trainer = Trainer(system, cfg, data, out, a.split, log=say, seed=ref.seed, init_weights=start)
    files = UnitFiles(out)
    if files.state.is_file() and not a.fresh:
        trainer.load_checkpoint(files.checkpoint)
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
