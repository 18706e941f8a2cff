"""Caches and shared storage across real Ray nodes (ray.cluster_utils.Cluster: a head with `CPU: 0` like
cluster.yaml's, and two 1-CPU worker nodes standing in for GPU nodes), the pipeline run as a job driver
(RAY_ADDRESS) would run it.

Each worker node has its own node-local cache folder: its raylet's environment sets ASC_RAY_CACHE_DIR, as
cluster.yaml does with the node's NVMe. The pipeline test shows that pre-flight builds the cache once in the
shared output dir, each node copies it once, and the node's other units reuse that copy.

All nodes share this machine's disk, so a node that does not see a folder is simulated: node B's raylet (and
so every process on it) has ASC_RAY_TEST_NOT_MOUNTED=<tmp>/unmounted, which makes asc_ray.pipeline.storage
read nothing under that folder there, as on a node that does not mount it. The driver writes its tokens for
real and a task pinned to each worker node reads them for real; only node B's view of that one folder is
made empty. Output dirs and MLflow stores outside that folder are seen by both nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray_head import VENV_BIN, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SPLIT = 25
# every unit hears 44.1 kHz: one cache, and 3 units on 2 one-CPU nodes put two units on one node
TEACHERS = ["bcbl32_fms", "bcbl32_dir"]
STUDENT = "bcbl24"
ON_NODE = re.compile(r"\] rank 0 on node ([0-9a-f]+)")  # asc_ray/pipeline/unit.py
CACHE_LINE = re.compile(r"waveform cache (\S+): (copied to this node|reused this node's copy)")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="ass", dir="/tmp"))  # short: Ray's unix sockets live under it
    (tmp / "ray").mkdir()
    unmounted = tmp / "unmounted"
    unmounted.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(tmp))  # the cluster's address file stays in here, not /tmp/ray
        mp.delenv("RAY_ADDRESS", raising=False)
        c = Cluster(shutdown_at_exit=True)
        try:
            c.add_node(
                num_cpus=0,
                temp_dir=str(tmp / "ray"),
                gcs_server_port=free_port(),
                include_dashboard=False,
                dashboard_agent_listen_port=free_port(),
            )
            a = c.add_node(num_cpus=1, env_vars={"ASC_RAY_CACHE_DIR": str(tmp / "node_a")})
            b = c.add_node(
                num_cpus=1,
                env_vars={
                    "ASC_RAY_CACHE_DIR": str(tmp / "node_b"),
                    "ASC_RAY_TEST_NOT_MOUNTED": str(unmounted),
                },
            )
            c.wait_for_nodes()
            yield {"c": c, "a": a, "b": b, "tmp": tmp, "unmounted": unmounted}
        finally:
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def _run(cluster, out: Path, db: Path, cwd: Path, *extra: str, timeout: float = 600):
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster["c"].address,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("ASC_RAY_CACHE_DIR", None)
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "full_pipeline.py"),
        "--data-dir",
        str(cluster["data"]),
        "--output-dir",
        str(out),
        "--profile",
        "smoke",
        "--splits",
        str(SPLIT),
        f"teachers.systems=[{','.join(TEACHERS)}]",
        "teachers.cpus_per_worker=1",
        f"students.systems=[{STUDENT}]",
        "students.cpus_per_trial=1",
        "--epochs",
        "1",
        *extra,
    ]
    t0 = time.time()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


@pytest.fixture(scope="module")
def data(cluster, synth_dataset):
    cluster["data"] = synth_dataset
    return cluster


def test_each_node_copies_the_cache_once_and_its_units_reuse_it(data, tmp_path):
    cl = data
    out, store, cwd = tmp_path / "out", tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    repo_runs = sorted((REPO / "mlruns").rglob("*")) if (REPO / "mlruns").is_dir() else []
    r, _ = _run(cl, out, store / "mlflow.db", cwd)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "shared storage: the output dir, the MLflow SQLite store's folder" in r.stdout
    assert "seen by 2 other node(s)" in r.stdout

    # pre-flight built the one cache in the shared output dir
    built = [p.name for p in (out / "cache").iterdir() if (p / "COMPLETE").is_file()]
    assert len(built) == 1 and built[0].startswith("44100_"), built

    # per unit: the node it ran on, and what it did with that node's cache
    node_dirs = {cl["a"].node_id: cl["tmp"] / "node_a", cl["b"].node_id: cl["tmp"] / "node_b"}
    units = sorted(out.glob(f"*/split{SPLIT}/*/unit.log"))
    assert len(units) == len(TEACHERS) + 1
    by_node: dict[str, list[str]] = {}
    for log in units:
        text = log.read_text()
        (node,) = set(ON_NODE.findall(text))
        lines = CACHE_LINE.findall(text)
        assert len(lines) == 1 and lines[0][0] == built[0], text
        by_node.setdefault(node, []).append(lines[0][1])
    assert set(by_node) == set(node_dirs), "both worker nodes trained, the head (CPU: 0) nothing"
    for node, what in by_node.items():
        assert sorted(what) == ["copied to this node"] + ["reused this node's copy"] * (len(what) - 1), what
        assert (node_dirs[node] / built[0] / "COMPLETE").is_file()  # the copy is in the node's own folder
    assert max(len(w) for w in by_node.values()) >= 2  # some node ran two units: the second reused the copy

    # MLflow artifacts went beside the database, not to ./mlruns of the driver's working directory
    assert not (cwd / "mlruns").exists()  # the driver's working dir, and nothing new in the repo's
    assert (sorted((REPO / "mlruns").rglob("*")) if (REPO / "mlruns").is_dir() else []) == repo_runs
    assert list((store / "mlartifacts" / "asc-ray").glob("*/artifacts/*"))


def test_an_output_dir_that_a_node_does_not_see_is_refused_in_preflight(data, tmp_path):
    out = data["unmounted"] / "out"
    r, secs = _run(data, out, tmp_path / "mlflow.db", tmp_path / "cwd", timeout=300)
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    assert "the output dir is not shared" in msg and data["b"].node_id[:12] in msg and str(out) in msg
    assert "fix: " in msg and "mounts" in msg
    assert "Traceback" not in r.stderr
    assert not (out / "cache").exists() and not (out / "teachers").exists()  # before any data work


def test_a_sqlite_store_that_a_node_does_not_see_is_refused_with_the_fix(data, tmp_path):
    db = data["unmounted"] / "mlflow.db"
    out = tmp_path / "out"
    r, _ = _run(data, out, db, tmp_path / "cwd", timeout=300)
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    assert "MLflow SQLite store's folder is not shared" in msg and data["b"].node_id[:12] in msg
    assert "mlflow_server.sh" in msg and "MLFLOW_TRACKING_URI=http" in msg
    assert not (out / "cache").exists()
