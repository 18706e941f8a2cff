"""The command line shared by the job entry points in jobs/ (they stay thin)."""

from __future__ import annotations

import argparse

from asc_ray.config import load_config
from asc_ray.errors import AscRayError


def add_epochs_option(p: argparse.ArgumentParser) -> None:
    """--epochs N: the config key train.epochs, so that it reaches every unit (and its resume key) as config."""

    def positive(v: str) -> int:
        if not v.isdigit() or int(v) < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of epochs >= 1, got '{v}'")
        return int(v)

    p.add_argument(
        "--epochs",
        type=positive,
        default=None,
        help="every model trains exactly N epochs, whatever the profile says (train.epochs=N): a quick check "
        "of data and set-up end to end",
    )


def with_epochs(overrides: list[str], epochs: int | None) -> list[str]:
    """The command line's overrides with --epochs last (it wins over a family's epochs given as key=value)."""
    return [*overrides, f"train.epochs={epochs}"] if epochs else list(overrides)


def parse(argv: list[str] | None, description: str) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-dir", required=True, help="TAU22 development set (meta.csv, audio/, split files)")
    p.add_argument("--output-dir", required=True, help="where teachers, logits, students and results go")
    p.add_argument(
        "--splits", default="5,10,25,50,100", help="comma-separated training splits (default: all)"
    )
    p.add_argument("--config", default=None, help="YAML file with config overrides")
    p.add_argument(
        "--profile",
        default="full",
        choices=("full", "smoke"),
        help="full = the report's settings; smoke = minutes on a laptop CPU",
    )
    p.add_argument(
        "--fresh", action="store_true", help="recompute everything instead of reusing finished work"
    )
    add_epochs_option(p)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. bcbl.epochs=10")
    a = p.parse_intermixed_args(argv)  # options may follow key=value overrides
    try:
        a.splits = [int(s) for s in a.splits.split(",") if s.strip()]
    except ValueError:
        raise AscRayError(
            f"--splits must be numbers, got '{a.splits}'", path="--splits", fix="e.g. --splits 5,25,100"
        ) from None
    bad = [s for s in a.splits if s not in (5, 10, 25, 50, 100)]
    if bad or not a.splits:
        raise AscRayError(f"unknown split(s) {bad}", path="--splits", fix="choose from 5,10,25,50,100")
    return a, load_config(a.profile, a.config, with_epochs(a.overrides, a.epochs))


def run_stages(argv: list[str] | None, stages: tuple[str, ...], description: str) -> int:
    args, cfg = parse(argv, description)  # first: a bad option or config key is refused before Ray/torch load

    from asc_ray.pipeline.run import Pipeline

    Pipeline(cfg, args.data_dir, args.output_dir, args.splits, fresh=args.fresh).run(stages)
    return 0
