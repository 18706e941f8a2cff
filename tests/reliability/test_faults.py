"""Faults, for real (slow): a local Ray runtime, a SQLite MLflow store, `python jobs/full_pipeline.py` as a
subprocess. An interrupted driver (Ctrl-C, SIGTERM) exits promptly, leaves no process, and the same command
reuses every finished unit; the results do not depend on any of it (an interrupted and resumed run, and `--fresh`
on its output dir, give identical logits tables and results). Local Ray listens on loopback only.

A killed Ray Train worker or Tune trial, a lost node, a killed driver and an MLflow outage are the chaos test's
(tests/reliability/test_chaos.py, every kind in each schedule) and, resuming from a checkpoint on another node,
tests/cluster/test_multinode.py's.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.console import said, said_all
from helpers.procs import (
    ROOT,
    Background,
    alive,
    cli_env,
    cmdline,
    descendants,
    listening_sockets,
    pipeline_args,
    run_py,
)
from helpers.wait import wait_for

from asc_ray.console import INTERRUPTED
from asc_ray.layout import Layout, UnitRef
from asc_ray.pipeline.graph import START, TO_RUN
from asc_ray.pipeline.watch import RANK_LINE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TEACHERS = ("bcbl32_fms", "passt_dir")
ARGS = [
    "--splits",
    "25",
    "--profile",
    "smoke",
    "bcbl.epochs=3",
    "teachers.bcbl_epochs=0",  # the CNN teachers on bcbl.epochs too (smoke gives them 24)
    "train.min_steps=0",
    "passt.epochs=1",
    f"teachers.systems=[{','.join(TEACHERS)}]",
    "students.systems=[kd_ensemble]",
]
STUDENT = UnitRef("kd_ensemble", 25, 0).name
LOOPBACK = {"127.0.0.1", "::1"}


def _cmd(data, out, *extra):
    return pipeline_args(data, out, *ARGS, *extra)


def _results(out):
    """results.csv without the MLflow run id column (a new run gets a new id; the numbers must not change)."""
    with open(out / "results.csv") as f:
        return [{k: v for k, v in r.items() if k != "mlflow_run_id"} for r in csv.DictReader(f)]


def _tables(out):
    """Every column of every logits table, as arrays (Parquet bytes differ by the run ids in the metadata)."""
    got = {}
    for p in sorted((out / "logits").glob("*.parquet")):
        t = pq.read_table(p)
        for c in t.column_names:
            v = t.column(c).to_pylist()
            got[(p.name, c)] = (
                np.asarray(v, dtype=np.float32) if c not in ("filename", "scene_label", "device") else v
            )
    return got


def assert_same_tables(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
        else:
            assert a[k] == b[k], k


CKPT_LINE = re.compile(r"\] epoch (\d+)/\d+ .* checkpoint$", re.M)  # asc_ray.train.Trainer.fit


def _unit_log(out: Path, role: str, system: str) -> str:
    p = Layout(out).unit(UnitRef(system, 25, 0 if role == "students" else None)).log
    return p.read_text(errors="replace") if p.is_file() else ""


def _worker(out: Path, system: str, role: str = "teachers") -> tuple[int, int] | None:
    """(pid of the unit's latest rank-0 worker, the last epoch it checkpointed) from its unit.log, once it has
    checkpointed an epoch; else None."""
    text = _unit_log(out, role, system)
    pids, epochs = [m["pid"] for m in RANK_LINE.finditer(text)], CKPT_LINE.findall(text)
    return (int(pids[-1]), int(epochs[-1])) if pids and epochs else None


def _started(text: str) -> list[str]:
    """The units a driver's output says it started."""
    return [m["unit"] for m in said_all(START, text, logged=True)]


def _stopped_keeping_work(d: Background, code: int) -> None:
    """Exited with `code` (130 Ctrl-C, 143 SIGTERM) within the wait, one message that says how to resume, no
    traceback."""
    rc = d.finish(120)  # promptly: a run that waited for its units would take many minutes more
    text = d.text()
    assert rc == code, text[-4000:]
    how = "terminated (SIGTERM)" if code == 143 else "interrupted"
    assert said(INTERRUPTED.format(how=how), text) and "Traceback" not in text, text[-3000:]


def test_an_interrupted_run_resumes_and_ends_as_a_fresh_one(synth_dataset, tmp_path):
    """Ctrl-C (to the whole process group) while teachers train, then SIGTERM (to the driver) while the student
    trains; each exits promptly with a message, no traceback; the next run reuses what had finished. `--fresh` on
    that output dir then trains every unit of it again from scratch (the cached pretraining is kept): same data,
    config and seed on CPU -> the same results and logits tables as the interrupted and resumed run."""
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    first = Background(_cmd(synth_dataset, out), cli_env(uri), tmp_path, tmp_path / "1.log")
    first.wait_for(lambda: any(_worker(out, t) for t in TEACHERS), what="a teacher's checkpointed epoch")
    first.signal_group(signal.SIGINT)
    _stopped_keeping_work(first, 130)

    second = Background(_cmd(synth_dataset, out), cli_env(uri), tmp_path, tmp_path / "2.log")
    second.wait_for(
        lambda: RANK_LINE.search(_unit_log(out, "students", "kd_ensemble")), what="the student's trial"
    )
    finished = [t for t in TEACHERS if (out / "teachers" / "split25" / t / "result.json").is_file()]
    assert sorted(finished) == sorted(TEACHERS)  # the student starts once its teachers are done
    second.p.send_signal(signal.SIGTERM)
    _stopped_keeping_work(second, 143)
    assert (out / "logits" / "teachers_split25.parquet").is_file()

    r = run_py(_cmd(synth_dataset, out), cli_env(uri), tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    started, teachers = set(_started(r.stdout)), {UnitRef(t, 25).name for t in TEACHERS}
    assert STUDENT in started and not started & teachers, started  # the finished teachers are reused
    resumed, tables = _results(out), _tables(out)

    fresh = run_py(_cmd(synth_dataset, out, "--fresh"), cli_env(uri), tmp_path, timeout=900)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    to_run = said(TO_RUN, fresh.stdout, logged=True)
    # --fresh clears the output dir; the teachers' pretraining lives in the cache, which it keeps
    assert to_run and to_run["reused"] == "1", fresh.stdout[-3000:]
    assert {*teachers, STUDENT} <= set(_started(fresh.stdout))  # every unit of the output dir trains again
    assert _results(out) == resumed
    assert_same_tables(_tables(out), tables)

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs(
        [c.get_experiment_by_name("asc-ray").experiment_id],
        filter_string=f"tags.output_dir = '{out.resolve()}' and tags.role = 'pipeline'",
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]


def test_ctrl_c_during_a_long_teacher_exits_at_once_and_leaves_no_process(synth_dataset, tmp_path):
    """Without care, the driver waits for every running teacher before it exits (hours in a real run).
    Also checks what listens while a teacher trains: Ray's servers on loopback only."""
    out = tmp_path / "out"
    d = Background(
        _cmd(
            synth_dataset, out, "bcbl.epochs=5000", "teachers.systems=[bcbl32_fms]"
        ),  # hours: never ends here
        cli_env(f"sqlite:///{tmp_path}/mlflow.db"),
        tmp_path,
        tmp_path / "run.log",
    )
    pid, _ = d.wait_for(lambda: _worker(out, "bcbl32_fms"), what="a teacher's checkpointed epoch")
    procs = descendants(d.pid)
    assert pid in procs and "RayTrainWorker" in cmdline(pid)
    exposed = [
        (p, ip, port, cmdline(p)[:60])
        for p, ip, port in listening_sockets(procs | {d.pid})
        if ip not in LOOPBACK
    ]
    # no exception: a single-worker teacher has no torch process group, so no TCPStore listens anywhere
    assert not exposed, exposed
    d.signal_group(signal.SIGINT)
    _stopped_keeping_work(d, 130)  # within the wait: it did not wait for the teacher
    wait_for(lambda: not any(alive(p) for p in procs), 30, "every process of the run to exit")
    assert not (out / "teachers" / "split25" / "bcbl32_fms" / "result.json").exists()


def test_local_ray_listens_on_loopback_only(tmp_path):
    """init_ray() as the pipeline calls it, in a subprocess: every socket its Ray processes listen on."""
    code = (
        "import os, sys, json\n"
        "from helpers.procs import descendants, listening_sockets, cmdline\n"
        "from asc_ray.pipeline.runtime import init_ray\nimport ray\ninit_ray()\n"
        "a = ray.remote(num_cpus=0)(type('A', (), {'pid': lambda self: os.getpid()})).remote()\n"
        "ray.get(a.pid.remote())\n"
        "procs = descendants(os.getpid()) | {os.getpid()}\n"
        "socks = [(p, ip, port, cmdline(p)[:300]) for p, ip, port in listening_sockets(procs)]\n"
        "print(json.dumps({'socks': socks, 'auth': os.environ.get('RAY_AUTH_MODE')}))\n"
        "ray.shutdown()\n"
    )
    env = cli_env(f"sqlite:///{tmp_path}/mlflow.db", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    r = run_py(["-c", code], env, tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    socks = got["socks"]
    names = " ".join(c for *_, c in socks)
    assert "gcs_server" in names and "raylet" in names, socks  # the check sees Ray's servers
    assert all(ip in LOOPBACK for _, ip, _, _ in socks), [s for s in socks if s[1] not in LOOPBACK]
    assert got["auth"] == "token"  # Ray's token auth is left on
