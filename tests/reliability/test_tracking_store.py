"""The tracking store is checked before any work: an SQLite file on a network file system (its locks do not hold
there) and a server that refuses this client are one error each, naming the store and the fix."""

from __future__ import annotations

import pytest

from asc_ray import tracking
from asc_ray.errors import AscRayError


@pytest.fixture
def mounts(tmp_path, monkeypatch):
    """This machine's mount table with `tmp_path/shared` on NFS and `tmp_path/shared/scratch` a local disk."""
    table = tmp_path / "mounts"
    shared = tmp_path / "shared"
    (shared / "scratch").mkdir(parents=True)
    table.write_text(
        "/dev/vda / ext4 rw,relatime 0 0\n"
        f"fs-1234.efs.us-west-2.amazonaws.com:/ {shared} nfs4 rw,vers=4.1 0 0\n"
        f"/dev/nvme1n1 {shared / 'scratch'} xfs rw 0 0\n"
    )
    monkeypatch.setattr(tracking, "MOUNTS", table)
    return shared


def test_the_file_system_under_a_path_is_its_longest_mount(mounts, tmp_path):
    assert tracking.network_filesystem(mounts / "runs") == "nfs4"
    assert tracking.network_filesystem(mounts / "scratch" / "runs") is None  # a local disk inside the share
    assert tracking.network_filesystem(tmp_path) is None


def test_sqlite_on_nfs_is_refused_with_the_fix(mounts):
    with pytest.raises(AscRayError) as e:
        tracking.check_tracking(f"sqlite:///{mounts}/mlflow.db")
    assert "nfs4" in e.value.problem and e.value.path == str(mounts / "mlflow.db")
    assert "MLFLOW_TRACKING_URI=http://" in e.value.fix and "PostgreSQL" in e.value.fix


def test_sqlite_on_a_local_disk_is_fine(mounts):
    tracking.check_tracking(f"sqlite:///{mounts}/scratch/mlflow.db")
    assert (mounts / "scratch" / "mlflow.db").is_file()


def test_the_pipeline_refuses_it_in_preflight_before_any_work(mounts, synth_dataset, tmp_path, monkeypatch):
    from asc_ray.config import load_config
    from asc_ray.pipeline.preflight import preflight

    cfg = load_config("smoke", None, [f"mlflow.tracking_uri=sqlite:///{mounts}/mlflow.db"])
    with pytest.raises(AscRayError, match="network file system"):
        preflight(cfg, synth_dataset, tmp_path / "out", [25])
    assert not (tmp_path / "out" / "cache").exists()  # refused before the caches were built
