"""`asc-ray`: one command for everything a user runs.

    asc-ray run --data-dir D --output-dir O [--splits 5,10,25,50,100] [--profile full|smoke] ...
    asc-ray train --system baseline --split 100 --data-dir D --output-dir O
    asc-ray predict MODEL AUDIO...            asc-ray serve models:/asc-ray-kd_ensemble-split100@champion
    asc-ray data tau22 DIR                    asc-ray synth --out DIR
    asc-ray config --profile smoke [k=v ...]  asc-ray mlflow-ui        asc-ray promote NAME VERSION

Each sub-command is the same code as the older entry points (jobs/full_pipeline.py, `python -m asc_ray.train`,
asc-ray-predict, asc-ray-synth), which keep working.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

from asc_ray.console import run_cli

# name -> (what it does, "module:function" taking (argv, prog)); imported when chosen, so that `asc-ray --help`
# and a typo answer at once instead of after loading torch and Ray
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "the whole pipeline: teachers, logits, students, results (jobs/full_pipeline.py)",
        "asc_ray.cli.jobs:main",
    ),
    "train": ("train and evaluate one model, without Ray", "asc_ray.train.__main__:main"),
    "predict": ("classify recordings with a trained model", "asc_ray.predict.cli:main"),
    "serve": ("serve a registered student over HTTP (MLflow's scoring server)", "asc_ray.cli.mlflow:serve"),
    "mlflow-ui": (
        "open the MLflow UI on the run's tracking store and print its link",
        "asc_ray.cli.mlflow:ui",
    ),
    "promote": ("point a registered student's @champion alias at a version", "asc_ray.cli.mlflow:promote"),
    "config": (
        "print the resolved config of a profile, a config file and overrides",
        "asc_ray.cli.jobs:config",
    ),
    "data": (
        "download a dataset into the layout the pipeline reads: data tau22 DIR",
        "asc_ray.data.download:main",
    ),
    "synth": ("make a small synthetic dataset in the TAU22 layout", "asc_ray.data.synth:main"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (what, _) in COMMANDS.items()]
    return (
        "usage: asc-ray COMMAND [options]   (asc-ray COMMAND --help: its options and defaults; asc-ray "
        "--version)\n\n"
        "Data-efficient low-complexity acoustic scene classification (DCASE 2024 Task 1) with Ray.\n\n"
        "commands:\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"asc-ray {metadata.version('asc-ray')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"asc-ray: unknown command '{name}'\n\n{usage()}", end="", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][1].split(":")
    return getattr(importlib.import_module(module), func)(rest, prog=f"asc-ray {name}") or 0


def cli() -> None:
    """Console script entry point (asc-ray)."""
    run_cli(main)
