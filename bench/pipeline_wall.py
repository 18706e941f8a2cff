"""The README main command's wall time and peak memory per phase, then the same command again on the finished
output (everything reused): its wall time as a % of the first run.

    python bench/pipeline_wall.py [--output-dir O] [--keep] [-- EXTRA ARGS for scripts/run_local.sh]

Runs `bash scripts/run_local.sh` with OUTPUT_DIR=O (default: a temp dir, removed afterwards unless --keep),
which logs to O/mlflow.db unless MLFLOW_TRACKING_URI names another store. DATA_DIR and
PROFILE pass through from the environment (unset: the synthetic dataset and the smoke profile).
Phases (setup = pre-flight + Ray start; units = the graph of teachers, tables and students; evaluate; shutdown)
are timed from the pipeline's own lines as they arrive; memory is sampled every 10 s and as each phase
begins, over the whole process tree (driver, Ray's GCS/raylet, every worker): the sum of PSS (proportional set size:
shared pages counted once) and the sum of RSS (shared pages counted in every process: an upper bound).
Last line: `rerun_pct <re-run wall time as % of the first run>`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, figure, footer, header  # noqa: E402

from asc_ray.procs import descendants  # noqa: E402

# a line -> the phase that starts with it (the pipeline's own progress lines)
PHASES = [
    (re.compile(r"\] Ray: "), "units"),  # the last line of start(): the units begin after it
    (re.compile(r"\] done (\d+)/\1 units, running 0"), "evaluate"),  # the last unit finished
    (re.compile(r"\] pipeline finished in "), "shutdown"),
]
ORDER = ("setup", "units", "evaluate", "shutdown")
# default memory sampling interval (--sample-s), plus a sample as each phase begins: reading smaps_rollup of ~40
# processes every 2 s took ~8 % of a core (~60 s of the README run's wall time on 2 cores); every 10 s ~1.5 %.
# The bench's own CPU time is printed (bench_cpu_s).
SAMPLE_S = 10.0


def tree_memory(root: int) -> tuple[float, float]:
    """(sum PSS, sum RSS) in MB over `root` and all its descendants."""
    pss, rss = 0, 0
    for pid in descendants(root) | {root}:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:  # exited meanwhile, or not ours to read
            pass
    return pss / 1024, rss / 1024


def run_once(cmd: list[str], env: dict, label: str, sample_s: float = SAMPLE_S) -> dict:
    """Run cmd, echo its output, return wall time, stage times and per-stage peak memory."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    state = {"stage": "setup", "peak": {}, "stages": {}, "stop": False}
    since, wake = t0, threading.Event()

    def sample():
        while not state["stop"]:
            stage = state["stage"]
            pss, rss = tree_memory(proc.pid)
            old = state["peak"].get(stage, (0.0, 0.0))
            state["peak"][stage] = (max(old[0], pss), max(old[1], rss))
            wake.wait(sample_s)  # woken early as a phase begins
            wake.clear()

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        print(f"  [{label}] {line}", end="", flush=True)
        for pattern, phase in PHASES:
            if pattern.search(line) and ORDER.index(phase) > ORDER.index(state["stage"]):
                now = time.perf_counter()
                state["stages"][state["stage"]] = now - since
                state["stage"], since = phase, now
                wake.set()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    state["stages"][state["stage"]] = time.perf_counter() - since
    state["stop"] = True
    wake.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{label} run failed (exit {rc}); its last lines:\n" + "".join(tail))
    return {"wall": wall, "stages": state["stages"], "peak": state["peak"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the output dir")
    p.add_argument("--sample-s", type=float, default=SAMPLE_S, help="memory sampling interval (seconds)")
    p.add_argument(
        "--command",
        default="bash scripts/run_local.sh",
        help="the command to measure (default: the README main command)",
    )
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra args for the command")
    a = p.parse_args(argv)
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    header("pipeline_wall (README main command, then its re-run)")
    out = Path(a.output_dir or tempfile.mkdtemp(prefix="asc_bench_pipeline_"))
    env = dict(os.environ, OUTPUT_DIR=str(out))
    cmd = a.command.split() + extra
    print(f"# command: OUTPUT_DIR={out} {' '.join(cmd)}", flush=True)
    try:
        first = run_once(cmd, env, "first", a.sample_s)
        second = run_once(cmd, env, "re-run", a.sample_s)
    finally:
        if not a.keep and not a.output_dir:
            shutil.rmtree(out, ignore_errors=True)
    for name in ORDER:
        if name in first["stages"]:
            figure(f"stage_{name}_s", first["stages"][name])
    for name, (pss, rss) in first["peak"].items():
        if pss == 0 and rss == 0:
            continue
        figure(f"peak_pss_MB_{name}", pss, ".0f")
        figure(f"peak_rss_sum_MB_{name}", rss, ".0f")
    figure("peak_pss_MB", max((v[0] for v in first["peak"].values()), default=0.0), ".0f")
    figure("wall_s", first["wall"])
    figure("rerun_wall_s", second["wall"])
    figure("bench_cpu_s", time.process_time())  # this script's own CPU (memory sampling), both runs
    for name in ORDER:
        if name in second["stages"]:
            figure(f"rerun_stage_{name}_s", second["stages"][name])
    footer()
    figure("rerun_pct", 100 * second["wall"] / first["wall"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
