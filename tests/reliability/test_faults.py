"""Faults, for real (slow): a local Ray runtime, a SQLite MLflow store, `python jobs/full_pipeline.py` as a
subprocess. Nothing finished is lost: a killed Ray Train worker resumes from its checkpoint; an interrupted
driver (Ctrl-C, SIGTERM) exits promptly and the same command reuses every finished unit; the results do not
depend on any of it (same data, config and seed -> identical logits tables and results). Local Ray listens on
loopback only.
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

from asc_ray.layout import Layout, UnitRef
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


def _teacher_logits_complete(out, data):
    from asc_ray.data.logits import read_logits
    from asc_ray.data.tau import TauDataset

    files = TauDataset.open(data).split_files(25)
    p = out / "logits" / "teachers_split25.parquet"
    per = [read_logits(p, files, column=t) for t in TEACHERS]  # validates: every file, finite, 10 classes
    np.testing.assert_allclose(read_logits(p, files), np.mean(per, axis=0), rtol=1e-5, atol=1e-6)
    return per


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


def _run(args, ref, env=None, timeout=900):
    return run_py(args, env or cli_env(ref["uri"]), ref["cwd"], timeout)


def _checkpointed_epoch(out: Path, system: str) -> int:
    """The epoch of the latest checkpoint Ray Train has registered for this teacher (its own snapshot file)."""
    best = 0
    for snap in (out / "ray_results").glob(f"teacher-{system}-split25-*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):
            continue
        best = max(best, int((latest.get("metrics") or {}).get("epoch", 0)))
    return best


# ------------------------------------------------------------------------------------------ reference
@pytest.fixture(scope="module")
def ref(synth_dataset, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("faults")
    uri = f"sqlite:///{cwd}/mlflow.db"
    out = cwd / "ref"
    r = run_py(_cmd(synth_dataset, out), cli_env(uri), cwd, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {
        "data": synth_dataset,
        "cwd": cwd,
        "uri": uri,
        "out": out,
        "stdout": r.stdout,
        "results": _results(out),
        "tables": _tables(out),
    }


def test_seeds_are_logged_to_mlflow(ref):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=ref["uri"])
    runs = c.search_runs([c.get_experiment_by_name("asc-ray").experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("role") == "pipeline")
    assert parent.data.params["seed"] == "0"
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.tags["system"] for r in kids} == {*TEACHERS, "kd_ensemble"}
    for r in kids:
        assert r.data.tags["seed"] == "0" and r.data.params["seed"] == "0", r.data.tags


def _records(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/split25/**/result.json")}  # students: per seed


def test_rerun_of_a_finished_pipeline_reuses_everything(ref):
    before = {p: p.read_bytes() for p in (ref["out"] / "logits").glob("*.parquet")}
    records, runs = _records(ref["out"]), sorted((ref["out"] / "ray_results").iterdir())
    r = _run(_cmd(ref["data"], ref["out"]), ref, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\] 0 units to run, \d+ reused", r.stdout), r.stdout[-3000:]
    assert "] start " not in r.stdout  # nothing trained
    assert _records(ref["out"]) == records and len(records) == len(TEACHERS) + 1  # no unit finished again
    assert sorted((ref["out"] / "ray_results").iterdir()) == runs  # no Ray Train / Tune run started
    assert _results(ref["out"]) == ref["results"]
    assert {p: p.read_bytes() for p in (ref["out"] / "logits").glob("*.parquet")} == before


def test_fresh_recomputes_with_identical_results(ref):
    """--fresh trains everything again from scratch: same data, config and seed on CPU -> the same numbers."""
    r = _run(_cmd(ref["data"], ref["out"], "--fresh"), ref)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\] \d+ units to run, 0 reused", r.stdout)
    assert all(f"] start {t} split25" in r.stdout for t in [*TEACHERS, "kd_ensemble"])
    assert _results(ref["out"]) == ref["results"]
    assert_same_tables(_tables(ref["out"]), ref["tables"])


def _stopped_keeping_work(d: Background, code: int) -> None:
    """Exited with `code` (130 Ctrl-C, 143 SIGTERM) within the wait, one message that says how to resume, no
    traceback."""
    rc = d.finish(120)  # promptly: a run that waited for its units would take many minutes more
    text = d.text()
    assert rc == code, text[-4000:]
    assert "run the same command again" in text and "Traceback" not in text, text[-3000:]


def test_interrupted_driver_keeps_finished_work(ref, tmp_path):
    """Ctrl-C (to the whole process group) while teachers train, then SIGTERM (to the driver) while the student
    trains; each exits promptly with a message, no traceback; the next run reuses what had finished and the
    final results are those of the uninterrupted run."""
    out = tmp_path / "out"
    first = Background(_cmd(ref["data"], out), cli_env(ref["uri"]), ref["cwd"], tmp_path / "1.log")
    first.wait_for(lambda: any(_worker(out, t) for t in TEACHERS), what="a teacher's checkpointed epoch")
    first.signal_group(signal.SIGINT)
    _stopped_keeping_work(first, 130)

    second = Background(_cmd(ref["data"], out), cli_env(ref["uri"]), ref["cwd"], tmp_path / "2.log")
    second.wait_for(
        lambda: RANK_LINE.search(_unit_log(out, "students", "kd_ensemble")), what="the student's trial"
    )
    finished = [t for t in TEACHERS if (out / "teachers" / "split25" / t / "result.json").is_file()]
    assert sorted(finished) == sorted(TEACHERS)  # the student starts once its teachers are done
    second.p.send_signal(signal.SIGTERM)
    _stopped_keeping_work(second, 143)
    assert "SIGTERM" in second.text()
    assert (out / "logits" / "teachers_split25.parquet").is_file()

    r = _run(_cmd(ref["data"], out), ref)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(f"] start {t} split25" not in r.stdout for t in TEACHERS)  # the finished teachers are reused
    assert "] start kd_ensemble split25" in r.stdout
    assert _results(out) == ref["results"]
    assert_same_tables(_tables(out), ref["tables"])

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=ref["uri"])
    runs = c.search_runs(
        [c.get_experiment_by_name("asc-ray").experiment_id],
        filter_string=f"tags.output_dir = '{out.resolve()}' and tags.role = 'pipeline'",
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED", "KILLED"]


def test_ctrl_c_during_a_long_teacher_exits_at_once_and_leaves_no_process(ref, tmp_path):
    """Without care, the driver waits for every running teacher before it exits (hours in a real run).
    Also checks what listens while a teacher trains: Ray's servers on loopback only."""
    out = tmp_path / "out"
    d = Background(
        _cmd(
            ref["data"], out, "bcbl.epochs=5000", "teachers.systems=[bcbl32_fms]"
        ),  # hours: never finishes here
        cli_env(ref["uri"]),
        ref["cwd"],
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


def test_killed_train_worker_resumes_from_its_checkpoint(ref, tmp_path):
    """SIGKILL to the real RayTrainWorker process of a teacher after Ray Train registered an epoch's
    checkpoint: FailureConfig restarts it, it resumes from that epoch, and the pipeline ends with a complete
    logits table."""
    out = tmp_path / "out"
    d = Background(
        _cmd(ref["data"], out, "bcbl.epochs=12"), cli_env(ref["uri"]), ref["cwd"], tmp_path / "run.log"
    )
    pid, epoch = d.wait_for(
        lambda: _checkpointed_epoch(out, "bcbl32_fms") >= 1 and _worker(out, "bcbl32_fms"),
        what="a checkpoint Ray Train registered",
    )
    assert "RayTrainWorker" in cmdline(pid) and pid in descendants(d.pid), cmdline(pid)
    os.kill(pid, signal.SIGKILL)
    assert d.finish(900) == 0, d.text()[-4000:]
    text = d.text()
    assert not alive(pid)
    unit_log = _unit_log(out, "teachers", "bcbl32_fms")
    assert len(RANK_LINE.findall(unit_log)) >= 2, unit_log[-4000:]  # a new worker after the kill
    resumed = [int(e) for e in re.findall(r"\[bcbl32_fms split25\] resumed from epoch (\d+)", unit_log)]
    assert resumed and resumed[0] >= 1, unit_log[-4000:]
    assert "done bcbl32_fms split25" in text and "FAILED" not in text
    per = _teacher_logits_complete(out, ref["data"])
    assert np.ptp(per[0] - per[1]) > 0
    result = json.loads((out / "teachers" / "split25" / "bcbl32_fms" / "result.json").read_text())
    assert result["selected_epoch"] >= 1 and np.isfinite(result["test_macro_acc"])


def test_local_ray_listens_on_loopback_only(ref):
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
    env = cli_env(ref["uri"], PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    r = _run(["-c", code], ref, env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    socks = got["socks"]
    names = " ".join(c for *_, c in socks)
    assert "gcs_server" in names and "raylet" in names, socks  # the check sees Ray's servers
    assert all(ip in LOOPBACK for _, ip, _, _ in socks), [s for s in socks if s[1] not in LOOPBACK]
    assert got["auth"] == "token"  # Ray's token auth is left on
