"""Where a command's CPU goes, per kind of process: run it, sample every process it starts (Ray's actors, workers
and servers included: a local Ray's are the driver's descendants) and sum their CPU seconds by kind.

    python bench/process_cpu.py [--interval 0.5] -- COMMAND [ARGS ...]

e.g. `python bench/process_cpu.py -- python jobs/full_pipeline.py --data-dir D --output-dir O --profile smoke`.
A Ray process is named by its actor (`ray::TrainController`, `ray::RayTrainWorker`, `ray::ImplicitFunc`: a Tune
trial, ...), others by what they run (raylet, gcs_server, ...). Linux only (/proc). A process that lives shorter
than the interval can be missed, and each is counted up to its last sample, so the sums are a lower bound.
Prints one `cpu_s_<kind> <seconds>` line per kind (largest first), `procs_<kind> <count>`, `wall_s`, and last
`cpu_s <total>`. The command's own output passes through.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import time

from _common import figure, footer, header, proc_cpu_s

from asc_ray.procs import cmdline, descendants, proc_stat

SERVERS = ("raylet", "gcs_server", "log_monitor", "dashboard", "monitor.py", "runtime_env", "default_worker")


def kind(pid: int) -> str | None:
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None
    if comm.startswith("ray::"):  # Ray names an actor's process after the actor (15 characters: comm's limit)
        return comm
    return next((k for k in SERVERS if k in cmdline(pid)), comm)


def cpu_s(pid: int) -> float | None:
    """CPU seconds of the process and its waited-for children; None when it is gone."""
    f = proc_stat(pid)
    return proc_cpu_s(f) if f else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the command after --")
    header("process_cpu")
    seen: dict[int, tuple[str, float]] = {}  # pid -> (kind at its last sample, CPU s)
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    while True:
        running = proc.poll() is None
        for pid in descendants(proc.pid) | {proc.pid}:
            k, cpu = kind(pid), cpu_s(pid)
            if k is not None and cpu is not None:  # an actor renames its process once it starts: the latest
                seen[pid] = (k, cpu)
        if not running:
            break
        time.sleep(a.interval)
    wall = time.time() - t0
    total: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for k, cpu in seen.values():
        total[k] += cpu
        count[k] += 1
    for k in sorted(total, key=total.get, reverse=True):
        name = k.replace("::", "_").replace(" ", "_")
        figure(f"cpu_s_{name}", total[k])
        figure(f"procs_{name}", count[k], "d")
    figure("wall_s", wall)
    footer()
    figure("cpu_s", sum(total.values()))
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
