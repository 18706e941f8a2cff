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
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rel_helpers import (
    PY,
    ROOT,
    alive,
    cli_env,
    cmdline,
    descendants,
    listening_sockets,
    run_cli,
    sigint_default,
)

pytestmark = pytest.mark.slow

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
    return [
        str(ROOT / "jobs" / "full_pipeline.py"),
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        *ARGS,
        *extra,
    ]


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
    from asc_ray.data.tau import TauDataset
    from asc_ray.logits import read_logits

    files = TauDataset.open(data).split_files(25)
    p = out / "logits" / "teachers_split25.parquet"
    per = [read_logits(p, files, column=t) for t in TEACHERS]  # validates: every file, finite, 10 classes
    np.testing.assert_allclose(read_logits(p, files), np.mean(per, axis=0), rtol=1e-5, atol=1e-6)
    return per


class Driver:
    """A background pipeline run in its own session (so a Ctrl-C can reach the whole group, as in a terminal)."""

    def __init__(self, cmd, env, cwd, log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.t0 = time.time()
        self.p = subprocess.Popen(
            [PY, *cmd],
            env=env,
            cwd=cwd,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=sigint_default,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond, timeout=300, what=""):
        end = time.time() + timeout
        while time.time() < end:
            v = cond()
            if v:
                return v
            if self.p.poll() is not None:
                raise AssertionError(
                    f"pipeline exited ({self.p.returncode}) before {what}:\n{self.text()[-4000:]}"
                )
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-4000:]}")

    def finish(self, timeout=600) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def _pid_file(pid_dir: Path, unit: str):
    """(pid, epoch) that the unit's Ray Train worker last wrote (ASC_RAY_TEST_PID_DIR hook), once written."""
    p = pid_dir / unit
    try:
        pid, epoch = p.read_text().split()
        return int(pid), int(epoch)
    except (OSError, ValueError):
        return None


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
    r, secs = run_cli(_cmd(synth_dataset, out), cli_env(uri), cwd, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {
        "data": synth_dataset,
        "cwd": cwd,
        "uri": uri,
        "out": out,
        "secs": secs,
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


def test_rerun_of_a_finished_pipeline_reuses_everything(ref):
    before = {p: p.read_bytes() for p in (ref["out"] / "logits").glob("*.parquet")}
    r, secs = run_cli(_cmd(ref["data"], ref["out"]), cli_env(ref["uri"]), ref["cwd"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 units to run," in r.stdout
    assert "] start " not in r.stdout  # nothing trained
    assert _results(ref["out"]) == ref["results"]
    assert {p: p.read_bytes() for p in (ref["out"] / "logits").glob("*.parquet")} == before
    assert secs < 0.75 * ref["secs"], (secs, ref["secs"])  # mostly Ray's start-up on this small run


def test_fresh_recomputes_with_identical_results(ref):
    """--fresh trains everything again from scratch: same data, config and seed on CPU -> the same numbers."""
    r, _ = run_cli(_cmd(ref["data"], ref["out"], "--fresh"), cli_env(ref["uri"]), ref["cwd"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\] \d+ units to run, 0 reused", r.stdout)
    assert all(f"] start {t} split25" in r.stdout for t in [*TEACHERS, "kd_ensemble"])
    assert _results(ref["out"]) == ref["results"]
    assert_same_tables(_tables(ref["out"]), ref["tables"])


def test_interrupted_driver_keeps_finished_work(ref, tmp_path):
    """Ctrl-C (to the whole process group) while teachers train, then SIGTERM (to the driver) while the student
    trains; each exits promptly with a message, no traceback; the next run reuses what had finished and the
    final results are those of the uninterrupted run."""
    out, env = tmp_path / "out", cli_env(ref["uri"], ASC_RAY_TEST_PID_DIR=str(tmp_path))
    first = Driver(_cmd(ref["data"], out), env, ref["cwd"], tmp_path / "1.log")
    first.wait_for(lambda: any(_pid_file(tmp_path, f"{t}_split25") for t in TEACHERS), what="a teacher epoch")
    os.killpg(first.p.pid, signal.SIGINT)
    t = time.time()
    assert first.finish(120) == 130
    assert time.time() - t < 60
    text = first.text()
    assert "interrupted: finished work is kept" in text and "Traceback" not in text, text[-3000:]

    second = Driver(_cmd(ref["data"], out), env, ref["cwd"], tmp_path / "2.log")
    second.wait_for(lambda: "] start kd_ensemble split25" in second.text(), what="the student's start")
    time.sleep(3)  # let the trial start
    second.p.send_signal(signal.SIGTERM)
    t = time.time()
    assert second.finish(120) == 143
    assert time.time() - t < 60
    text = second.text()
    assert "terminated (SIGTERM): finished work is kept" in text and "Traceback" not in text, text[-3000:]
    assert (out / "logits" / "teachers_split25.parquet").is_file()

    r, _ = run_cli(_cmd(ref["data"], out), env, ref["cwd"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(f"] start {t} split25" not in r.stdout for t in TEACHERS)  # the finished teachers are reused
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
    out, env = tmp_path / "out", cli_env(ref["uri"], ASC_RAY_TEST_PID_DIR=str(tmp_path))
    d = Driver(
        _cmd(ref["data"], out, "bcbl.epochs=500", "teachers.systems=[bcbl32_fms]"),
        env,
        ref["cwd"],
        tmp_path / "run.log",
    )
    pid, _ = d.wait_for(lambda: _pid_file(tmp_path, "bcbl32_fms_split25"), what="a teacher epoch")
    procs = descendants(d.p.pid)
    assert pid in procs and "RayTrainWorker" in cmdline(pid)
    exposed = [
        (p, ip, port, cmdline(p)[:60])
        for p, ip, port in listening_sockets(procs | {d.p.pid})
        if ip not in LOOPBACK
    ]
    # no exception: a single-worker teacher has no torch process group, so no TCPStore listens anywhere
    assert not exposed, exposed
    os.killpg(d.p.pid, signal.SIGINT)
    t = time.time()
    code = d.finish(120)
    assert code == 130, d.text()[-6000:]
    assert time.time() - t < 45, "the driver waited for the teacher to finish"
    assert "Traceback" not in d.text(), d.text()[-6000:]
    end = time.time() + 20
    while any(alive(p) for p in procs) and time.time() < end:
        time.sleep(0.5)
    assert not [(p, cmdline(p)[:80]) for p in procs if alive(p)]
    assert not (out / "teachers" / "split25" / "bcbl32_fms" / "result.json").exists()


def test_killed_train_worker_resumes_from_its_checkpoint(ref, tmp_path):
    """SIGKILL to the real RayTrainWorker process of a teacher after Ray Train registered an epoch's
    checkpoint: FailureConfig restarts it, it resumes from that epoch, and the pipeline ends with a complete
    logits table."""
    out, env = tmp_path / "out", cli_env(ref["uri"], ASC_RAY_TEST_PID_DIR=str(tmp_path))
    d = Driver(_cmd(ref["data"], out, "bcbl.epochs=12"), env, ref["cwd"], tmp_path / "run.log")
    pid, epoch = d.wait_for(
        lambda: _checkpointed_epoch(out, "bcbl32_fms") >= 1 and _pid_file(tmp_path, "bcbl32_fms_split25"),
        what="a registered checkpoint",
    )
    assert "RayTrainWorker" in cmdline(pid) and pid in descendants(d.p.pid), cmdline(pid)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    assert d.finish(900) == 0, d.text()[-4000:]
    text = d.text()
    assert not alive(pid)
    unit_log = (out / "teachers" / "split25" / "bcbl32_fms" / "unit.log").read_text()
    resumed = [
        int(line.rsplit(" ", 1)[1])
        for line in unit_log.splitlines()
        if "[bcbl32_fms split25] resumed from epoch" in line
    ]
    assert resumed and resumed[0] >= 1, unit_log[-4000:]
    assert "done bcbl32_fms split25" in text and "FAILED" not in text
    per = _teacher_logits_complete(out, ref["data"])
    assert np.ptp(per[0] - per[1]) > 0
    assert time.time() - killed_at < 600
    result = json.loads((out / "teachers" / "split25" / "bcbl32_fms" / "result.json").read_text())
    assert result["selected_epoch"] >= 1 and np.isfinite(result["test_macro_acc"])


def test_local_ray_listens_on_loopback_only(ref):
    """init_ray() as the pipeline calls it, in a subprocess: every socket its Ray processes listen on."""
    code = (
        "import os, sys, json; sys.path.insert(0, " + repr(str(Path(__file__).parent)) + ")\n"
        "from rel_helpers import descendants, listening_sockets, cmdline\n"
        "from asc_ray.pipeline.runtime import init_ray\nimport ray\ninit_ray()\n"
        "a = ray.remote(num_cpus=0)(type('A', (), {'pid': lambda self: os.getpid()})).remote()\n"
        "ray.get(a.pid.remote())\n"
        "procs = descendants(os.getpid()) | {os.getpid()}\n"
        "print(json.dumps([(p, ip, port, cmdline(p)[:300]) for p, ip, port in listening_sockets(procs)]))\n"
        "ray.shutdown()\n"
    )
    env = cli_env(ref["uri"])
    r = subprocess.run([PY, "-c", code], env=env, cwd=ref["cwd"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    socks = json.loads(r.stdout.strip().splitlines()[-1])
    names = " ".join(c for *_, c in socks)
    assert "gcs_server" in names and "raylet" in names, socks  # the check sees Ray's servers
    assert all(ip in LOOPBACK for _, ip, _, _ in socks), [s for s in socks if s[1] not in LOOPBACK]
    assert "Token authentication is enabled" in r.stderr  # Ray's token auth is left on
