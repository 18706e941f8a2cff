"""Shared helpers of the bench/ scripts: machine description, CPU load, the kd_ensemble logits table.

Every bench prints its figures as `<name> <number>` lines, the headline figure last, so that a person and
tests/bench/test_bench_smoke.py can read them. Run them under `flock /tmp/asc_ray_cpu.lock` on a shared
machine: a figure measured while something else loads the CPU is not worth recording.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HZ = os.sysconf("SC_CLK_TCK")  # clock ticks per second of /proc's CPU times
if str(ROOT) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores, {cpu_model()}, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {time.strftime('%Y-%m-%d %H:%M')}"
    )


def load1() -> float:
    return os.getloadavg()[0]


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat; NaN elsewhere). A delta around a
    piece of work counts every process it starts (Ray's actors and workers too), which is what a laptop pays."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / HZ


def proc_cpu_s(fields: list[str]) -> float:
    """CPU seconds in a process's /proc/PID/stat fields (asc_ray.procs.proc_stat): its own and those of the
    children it waited for."""
    return sum(int(x) for x in fields[11:15]) / HZ


def _others_cpu() -> dict[tuple[str, str], float]:
    """(pid, start time) -> CPU seconds, theirs and their waited-for children's, of every process but this one
    (Linux /proc; {} elsewhere). The start time tells a pid reused by a new process apart."""
    from asc_ray.procs import pids, proc_stat

    out = {}
    for p in pids():
        if p != os.getpid() and len(f := proc_stat(p)) > 19:
            out[(str(p), f[19])] = proc_cpu_s(f)
    return out


_START: dict = {}


def header(name: str) -> None:
    _START.update(wall=time.perf_counter(), others=_others_cpu())
    print(f"# {name}: {machine()}; load average {load1():.2f}", flush=True)


def others_cores() -> float:
    """Cores that the processes already running at header() kept busy since then, on average: someone else's
    work, as a bench's own processes (a pipeline's Ray workers) all start after it. The load average cannot
    tell the two apart. Work started by others after header() is not seen."""
    wall = time.perf_counter() - _START["wall"]
    now = _others_cpu()
    return sum(now[k] - v for k, v in _START["others"].items() if k in now) / max(wall, 1e-9)


def footer() -> None:
    la = load1()
    if "wall" not in _START:  # no header(): only the load is known
        print(f"# load average after: {la:.2f}", flush=True)
        return
    others = others_cores()
    warn = " (HIGH: others were using the CPU, re-run under the lock)" if others > 0.25 else ""
    print(
        f"# load average after: {la:.2f}; processes running before the bench used {others:.2f} cores on "
        f"average{warn}",
        flush=True,
    )


def figure(name: str, value: float, fmt: str = ".1f") -> None:
    print(f"{name} {value:{fmt}}", flush=True)


def random_teacher_logits(data_dir: str | Path, split: int, out_path: str | Path, seed: int = 0) -> Path:
    """A kd_ensemble 'teachers' table over the split's files with RANDOM logits (the bench measures speed, not
    accuracy; the real table comes from the teachers stage). Written with the pipeline's own writer."""
    import numpy as np

    from asc_ray.data.logits import write_logits_table
    from asc_ray.data.tau import TauDataset

    ds = TauDataset.open(data_dir)
    files = ds.split_files(split)
    rng = np.random.default_rng(seed)
    return write_logits_table(
        out_path,
        files,
        [ds.clips[f].scene_label for f in files],
        ds.devices(files),
        {"random_teacher": rng.normal(0, 2, (len(files), 10)).astype(np.float32)},
        metadata={"note": "random logits made by bench/ for a throughput measurement"},
    )
