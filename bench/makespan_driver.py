"""The pipeline with a chosen scheduler, for bench/schedule_makespan.py: `graph` (the pipeline's own, what
jobs/full_pipeline.py runs) or `four_stage` (v0.1's order: every teacher of every split, then the tables, then
the students, then the kd_ensemble tables, then tfs; the smallest split first).

    python bench/makespan_driver.py --scheduler four_stage --data-dir D --output-dir O [job options ...]

Takes every option of jobs/full_pipeline.py. The four-stage order lives here, not in the package: it is only
the baseline the graph's makespan is compared against.
"""

from __future__ import annotations

import sys

from _common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from asc_ray.cli.jobs import parse
from asc_ray.console import run_cli
from asc_ray.layout import STAGES
from asc_ray.pipeline.graph import Scheduler, Unit
from asc_ray.pipeline.run import Pipeline


def stage(u: Unit, graph: dict[Unit, list[Unit]]) -> int:
    """The unit's stage in the four-stage pipeline: teachers 0, their tables 1, students 2 (or one more than
    the table they learn from: tfs), a student's table one more than the student."""
    if u.kind == "train" and u.role == "teacher":
        return 0
    deps = [stage(d, graph) for d in graph[u]]
    if u.kind == "table":
        return max(deps) + 1
    return max([2] + [d + 1 for d in deps])


class FourStageScheduler(Scheduler):
    """A unit waits for every unit of an earlier stage, of every split; among the ready, the smallest split
    first."""

    def ready(self, u: Unit) -> bool:
        if not super().ready(u):
            return False
        mine = stage(u, self.graph)
        return all(
            s in ("done", "failed", "blocked") for v, s in self.state.items() if stage(v, self.graph) < mine
        )

    def order(self, ready: list[Unit]) -> list[Unit]:
        return sorted(ready, key=lambda u: (u.split, u.name))


SCHEDULERS = {"graph": Scheduler, "four_stage": FourStageScheduler}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--scheduler" or argv[1] not in SCHEDULERS:
        print(
            f"usage: makespan_driver.py --scheduler {{{','.join(SCHEDULERS)}}} JOB OPTIONS", file=sys.stderr
        )
        return 2
    args, cfg = parse(argv[2:], __doc__.splitlines()[0])
    Pipeline(cfg, args.data_dir, args.output_dir, args.splits, fresh=args.fresh).run(
        STAGES, scheduler=SCHEDULERS[argv[1]]
    )
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
