"""Caches and shared storage across real Ray nodes (ray.cluster_utils.Cluster: a head with `CPU: 0` like
cluster.yaml's, and two 1-CPU worker nodes standing in for GPU nodes), the pipeline run as a job driver
(RAY_ADDRESS) would run it.

Each worker node has its own node-local cache folder: its raylet's environment sets ASC_RAY_CACHE_DIR, as
cluster.yaml does with the node's NVMe. The pipeline test shows that pre-flight builds the cache once in the
shared output dir, each node copies it once, and the node's other units reuse that copy.

All nodes share this machine's disk, so a node that does not see a folder is made for real: node B is started
(`ray start`) inside a private mount namespace with an empty tmpfs mounted over <tmp>/unmounted, so every process
of that node sees the folder empty, as on a node that does not mount the shared storage there. The driver
writes its tokens for real and a task pinned to each worker node reads them for real. Output dirs and MLflow
stores outside that folder are seen by both nodes. Where `unshare -m` is not permitted (not root, not Linux)
node B is a plain node and the two tests that need the hidden folder are skipped, saying why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cluster import local_cluster, unshare_available
from helpers.console import said, said_all
from helpers.procs import pipeline_args
from helpers.wait import unit_logs

from asc_ray.data.cache import CACHE_LINE, COPIED, REUSED
from asc_ray.pipeline.watch import RANK_LINE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SPLIT = 25
# every unit hears 44.1 kHz: one cache, and 3 units on 2 one-CPU nodes put two units on one node
TEACHERS = ["bcbl32_fms", "bcbl32_dir"]
STUDENT = "bcbl24"


@pytest.fixture(scope="module")
def cluster(synth_dataset, tmp_path_factory):
    """A head with no CPUs and two 1-CPU worker nodes, each with a node-local cache folder (its raylet's
    ASC_RAY_CACHE_DIR, as cluster.yaml gives each node its NVMe); node B does not see <tmp>/unmounted."""
    tmp = tmp_path_factory.mktemp("shared")
    unmounted = tmp / "unmounted"
    unmounted.mkdir()
    why_not = unshare_available()
    b = {"num_cpus": 1, "cache_dir": tmp / "node_b", **({} if why_not else {"hidden": [unmounted]})}
    with local_cluster([{"num_cpus": 1, "cache_dir": tmp / "node_a"}, b], prefix="ass") as c:
        yield {
            "c": c,
            "a": c.workers[0],
            "b": c.workers[1],
            "tmp": tmp,
            "unmounted": unmounted,
            "why_not": why_not,
            "data": synth_dataset,
        }


def _run(cluster, out: Path, db: Path, cwd: Path, *extra: str, timeout: float = 600):
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        *pipeline_args(cluster["data"], out),
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
    env = cluster["c"].driver_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hidden(cluster):
    """The cluster, where node B does not see <tmp>/unmounted (else the test is skipped, saying why)."""
    if cluster["why_not"]:
        pytest.skip(f"node B cannot hide a folder: {cluster['why_not']}")
    return cluster


def test_each_node_copies_the_cache_once_and_its_units_reuse_it(cluster, tmp_path):
    cl = cluster
    out, store, cwd = tmp_path / "out", tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    r = _run(cl, out, store / "mlflow.db", cwd)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    checked = [
        ln for ln in r.stdout.splitlines() if "shared storage: " in ln
    ]  # what pre-flight checked, where
    assert len(checked) == 1 and "output dir" in checked[0] and "MLflow" in checked[0], r.stdout[-3000:]
    assert "2 other node(s)" in checked[0]

    # pre-flight built the one cache in the shared output dir
    built = [p.name for p in (out / "cache").iterdir() if (p / "COMPLETE").is_file()]
    assert len(built) == 1 and built[0].startswith("44100_"), built

    # per unit: the node it ran on, and what it did with that node's cache
    node_dirs = {cl["a"].node_id: cl["a"].cache_dir, cl["b"].node_id: cl["b"].cache_dir}
    units = unit_logs(out, "teacher", SPLIT) + unit_logs(out, "student", SPLIT)
    assert len(units) == len(TEACHERS) + 1
    by_node: dict[str, list[str]] = {}
    for log in units:
        text = log.read_text()
        (node,) = {m["node"] for m in RANK_LINE.finditer(text)}
        lines = said_all(CACHE_LINE, text)
        assert len(lines) == 1 and lines[0]["name"] == built[0], text
        by_node.setdefault(node, []).append("copied" if said(COPIED, lines[0]["what"]) else lines[0]["what"])
    assert set(by_node) == set(node_dirs), "both worker nodes trained, the head (CPU: 0) nothing"
    for node, what in by_node.items():
        assert sorted(what) == ["copied"] + [REUSED] * (len(what) - 1), what
        assert (node_dirs[node] / built[0] / "COMPLETE").is_file()  # the copy is in the node's own folder
    assert max(len(w) for w in by_node.values()) >= 2  # some node ran two units: the second reused the copy

    # MLflow artifacts went beside the database, not to ./mlruns of the driver's working directory, nor into
    # the checkout's (looked up by this run's own run ids: other runs may write there meanwhile)
    assert not (cwd / "mlruns").exists()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("asc-ray").experiment_id])
    assert runs and not any(list(REPO.glob(f"mlruns/*/{r.info.run_id}")) for r in runs)
    assert list((store / "mlartifacts" / "asc-ray").glob("*/artifacts/*"))


def test_an_output_dir_that_a_node_does_not_see_is_refused_in_preflight(hidden, tmp_path):
    out = hidden["unmounted"] / "out"
    r = _run(hidden, out, tmp_path / "mlflow.db", tmp_path / "cwd", timeout=300)
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    # what is not shared, the node that does not see it, the folder, and the fix: shared storage
    assert "output dir" in msg and hidden["b"].node_id[:12] in msg and str(out) in msg, msg
    assert "mounts" in msg.split("fix: ", 1)[1] and hidden["a"].node_id[:12] not in msg, msg
    assert "Traceback" not in r.stderr
    assert not (out / "cache").exists() and not (out / "teachers").exists()  # before any data work


def test_a_sqlite_store_that_a_node_does_not_see_is_refused_with_the_fix(hidden, tmp_path):
    db = hidden["unmounted"] / "mlflow.db"
    out = tmp_path / "out"
    r = _run(hidden, out, db, tmp_path / "cwd", timeout=300)
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    assert "MLflow" in msg and str(hidden["unmounted"]) in msg and hidden["b"].node_id[:12] in msg, msg
    fix = msg.split("fix: ", 1)[1]
    assert "mlflow_server.sh" in fix and "MLFLOW_TRACKING_URI=http" in fix
    assert not (out / "cache").exists()
