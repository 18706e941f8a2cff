"""The AudioSet PaSST checkpoint on a cluster: every node a PaSST teacher may land on finds and loads it before
any teacher trains. Node B runs in a private mount namespace where the checkpoint's folder is empty (as on a
node without the shared volume), so pre-flight must stop with one error that names node B - not a teacher
failing, or downloading, mid-run on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cluster import local_cluster, unshare_available
from helpers.console import said
from helpers.training import release_passt_state

from asc_ray.models.passt import CHECKPOINT_NAME
from asc_ray.pipeline.preflight import NOT_ON_NODE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A file in the release checkpoint's layout (hear21passt's own 527-class PaSST-S, random weights)."""
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_NAME
    torch.save(release_passt_state(), path)
    return path


def test_a_node_without_the_checkpoint_stops_preflight_naming_it(checkpoint, synth_dataset, tmp_path):
    why_not = unshare_available()
    if why_not:
        pytest.skip(f"node B cannot hide the checkpoint's folder: {why_not}")
    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "hidden": [checkpoint.parent]}]
    with local_cluster(nodes, prefix="apc") as c:
        cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--data-dir", str(synth_dataset)]
        cmd += [
            "--output-dir",
            str(tmp_path / "out"),
            "--profile",
            "smoke",
            "--splits",
            "25",
            "--epochs",
            "1",
        ]
        cmd += [
            "passt.size=full",
            "passt.pretrained=true",
            "teachers.systems=[passt_dir]",
            "students.systems=[baseline]",
        ]
        env = c.driver_env(
            ASC_RAY_PASST_CHECKPOINT=str(checkpoint), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"
        )
        r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        hidden, seeing = c.workers[1].node_id, c.workers[0].node_id
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    error = r.stderr[r.stderr.index("error: ") :]
    m = said(NOT_ON_NODE, error)
    assert m and hidden[:12] in m["node"] and seeing[:12] not in error, error
    assert str(checkpoint) in error and "fix:" in error
    assert not (tmp_path / "out" / "teachers").exists()  # no teacher started
