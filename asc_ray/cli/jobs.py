"""The command line of the pipeline jobs in jobs/ (they stay thin): which data, where to, which splits, which
config; the stage jobs run part of the per-split graph."""

from __future__ import annotations

import argparse

from asc_ray.config import add_config_arguments, config_from_args, split_list
from asc_ray.data.tau import SPLITS
from asc_ray.layout import STAGES
from asc_ray.pipeline.inputs import check_inputs


def parse(argv: list[str] | None, description: str, prog: str | None = None):
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--data-dir", help="TAU22 development set (meta.csv, audio/, split files)")
    p.add_argument("--output-dir", help="where teachers, logits, students and results go")
    p.add_argument(
        "--splits",
        default=",".join(map(str, SPLITS)),
        help="comma-separated training splits, %% of the train fold (default: %(default)s)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="recompute every unit of the output dir instead of reusing it "
        "(caches, pretraining included, are kept)",
    )
    add_config_arguments(p)
    a = p.parse_intermixed_args(argv)  # options may follow key=value overrides
    a.splits = split_list(a.splits)
    missing = [f"--{n.replace('_', '-')}" for n in ("data_dir", "output_dir") if not getattr(a, n)]
    if missing and not a.print_config:
        p.error("the following arguments are required: " + ", ".join(missing))
    cfg = config_from_args(a)  # --print-config exits here; else the profile and why, the first line
    return a, cfg


def run_stages(
    argv: list[str] | None, stages: tuple[str, ...], description: str, prog: str | None = None
) -> int:
    # first: a bad option, config key, store or data dir is refused before Ray loads and before anything is
    # created on disk
    args, cfg = parse(argv, description, prog)
    ds = check_inputs(cfg, args.data_dir, args.output_dir, args.splits)
    from asc_ray.pipeline.run import Pipeline  # Ray takes seconds to import: not for --help or a typo

    Pipeline(cfg, args.data_dir, args.output_dir, args.splits, fresh=args.fresh).run(stages, ds=ds)
    return 0


def main(argv: list[str] | None = None, prog: str = "asc-ray run") -> int:
    """`asc-ray run`: the whole pipeline, as jobs/full_pipeline.py (which `ray job submit` runs)."""
    return run_stages(argv, STAGES, "The whole pipeline: teachers -> logits -> students -> results.", prog)


def config(argv: list[str] | None = None, prog: str = "asc-ray config") -> int:
    """`asc-ray config`: the resolved config as YAML (what --print-config prints)."""
    p = argparse.ArgumentParser(prog=prog, description="Print the resolved config as YAML.")
    add_config_arguments(p)
    a = p.parse_intermixed_args(argv)
    a.print_config = True
    config_from_args(a)
    return 0
