"""The cluster path for real, on this machine: a Ray head started with `ray start --head` from the project's
venv (token auth on, dashboard + job API on 127.0.0.1), and the pipeline submitted to it with
`ray job submit --working-dir <repo> -- python jobs/full_pipeline.py ...`, exactly as docs/cluster.md says.

The head has its own temp dir, ports and token (tests/helpers/cluster.py RayHead) and is stopped alone (never a
global `ray stop`). Data and output dirs are absolute paths outside the repository (as on a cluster, where
they live on shared storage).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.cluster import VENV_BIN, RayHead
from helpers.wait import http_status

from asc_ray.layout import Layout, TableRef, UnitRef

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SPLIT = 25


@pytest.fixture(scope="module")
def head():
    h = RayHead(num_cpus=2).start()
    try:
        yield h
    finally:
        left = h.stop()
        h.cleanup()
        assert not left, f"processes of the test's Ray head survived its shutdown: {left}"


def test_head_has_token_auth_on_and_refuses_clients_without_the_token(head):
    assert head.auth_mode() == "token"
    # the job API over plain HTTP: no token -> 401, a wrong token -> 403, the head's token -> 200
    assert http_status(f"{head.address}/api/jobs/")[0] == 401
    assert http_status(f"{head.address}/api/jobs/", token="0" * 64)[0] == 403
    assert http_status(f"{head.address}/api/jobs/", token=head.token())[0] == 200

    # the CLI: without RAY_AUTH_MODE=token the client sends no token and is refused ...
    r = head.ray(
        "job",
        "submit",
        "--address",
        head.address,
        "--",
        "python",
        "-c",
        "print('should not run')",
        token=False,
        timeout=120,
    )
    assert r.returncode != 0 and "should not run" not in r.stdout
    # ... and with a token that is not the head's as well
    r = head.ray(
        "job",
        "list",
        "--address",
        head.address,
        token=False,
        timeout=120,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN="f" * 64,
    )
    assert r.returncode != 0
    # nothing was submitted by the refused clients
    status, body = http_status(f"{head.address}/api/jobs/", token=head.token())
    assert status == 200 and "should not run" not in body


def test_job_runs_the_venv_python_and_joins_the_cluster(head):
    """The job's `python` resolves on the head's PATH (the venv), and RAY_ADDRESS points at this cluster."""
    code = (
        "import os, sys, ray; ray.init(); print('JOB', sys.executable, os.environ.get('RAY_ADDRESS'), "
        "ray.get_runtime_context().get_node_id(), int(ray.cluster_resources()['CPU']))"
    )
    r = head.ray("job", "submit", "--address", head.address, "--", "python", "-c", code, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("JOB "))
    _, exe, address, node_id, cpus = line.split()
    assert Path(exe).parent == VENV_BIN
    assert address and address != "None"
    assert cpus == "2"  # joined the head (--num-cpus=2), did not start a Ray of its own


def test_submit_full_pipeline_with_working_dir(head, synth_dataset, tmp_path):
    out = tmp_path / "out"
    mlflow_db = tmp_path / "mlflow.db"
    env_json = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"}})
    r = head.ray(
        "job",
        "submit",
        "--address",
        head.address,
        "--working-dir",
        ".",
        "--runtime-env-json",
        env_json,
        "--",
        "python",
        "jobs/full_pipeline.py",
        "--data-dir",
        str(synth_dataset),
        "--output-dir",
        str(out),
        "--profile",
        "smoke",
        "--splits",
        str(SPLIT),
        "teachers.systems=[bcbl32_fms,bcbl32_dir]",
        "students.systems=[kd_ensemble]",
        "--epochs",
        "1",
        f"data.cache_dir={tmp_path / 'node_cache'}",  # the node's copy: not the machine's /tmp/asc_ray_cache
        cwd=REPO,
        timeout=480,
    )
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-6000:]  # `ray job submit` exits 0 only when the job succeeded

    # the working dir was uploaded as a small package: .gitignore kept .venv, data and outputs out
    pkgs = [
        p
        for p in (head.session_dir() / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*")
        if p.is_dir()
    ]
    assert len(pkgs) == 1, pkgs
    files = [p for p in pkgs[0].rglob("*") if p.is_file()]
    names = {p.relative_to(pkgs[0]).parts[0] for p in files}
    assert {"asc_ray", "jobs", "pyproject.toml"} <= names
    assert not names & {".venv", ".git", "data", "outputs", "mlflow.db"}, names
    assert sum(p.stat().st_size for p in files) < 20 * 2**20

    # the pipeline's outputs, written by the job (driver + Train workers + Tune trial) in --output-dir
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["system"] for r in rows] == ["kd_ensemble"] and rows[0]["split"] == str(SPLIT)
    assert 0 <= float(rows[0]["test_macro_acc"]) <= 100
    split_files = [
        ln.split("\t")[0] for ln in (synth_dataset / f"split{SPLIT}.csv").read_text().splitlines()[1:]
    ]
    table = pq.read_table(out / "logits" / f"teachers_split{SPLIT}.parquet")
    assert table.num_rows == len(split_files)
    assert {"bcbl32_fms", "bcbl32_dir"} <= set(table.column_names)
    assert Layout(out).table(TableRef("kd_ensemble", SPLIT, 0)).is_file()
    for system, seed in (("bcbl32_fms", None), ("bcbl32_dir", None), ("kd_ensemble", 0)):
        unit = json.loads(Layout(out).unit(UnitRef(system, SPLIT, seed)).record.read_text())  # its record
        assert unit["node_id"]  # one node: every unit ran on the head

    # MLflow: the job used the tracking URI given in the runtime env (not a mlflow.db in the uploaded dir)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    exp = client.get_experiment_by_name("asc-ray")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {
        (x.data.tags["role"], x.data.tags["system"])
        for x in runs
        if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert children == {("teacher", "bcbl32_fms"), ("teacher", "bcbl32_dir"), ("student", "kd_ensemble")}
    assert not (pkgs[0] / "mlflow.db").exists()
    # ... and its artifacts went beside that database, not to ./mlruns of the job's temporary working dir
    assert not (pkgs[0] / "mlruns").exists()
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "asc-ray").as_uri()
    assert list((tmp_path / "mlartifacts" / "asc-ray").glob("*/artifacts/output.csv"))
