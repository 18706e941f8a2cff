"""The LogitAggregator: tables appear only when complete, keyed by filename. Its logic in-process (fast); the
Ray actor the pipeline starts, on a real (small) Ray runtime (slow)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asc_ray.data.logits import read_logits, table_metadata
from asc_ray.errors import AscRayError
from asc_ray.layout import Layout, TableRef
from asc_ray.pipeline.aggregator import LogitAggregatorImpl

FILES = [f"audio/park-lyon-{i}-0-0-a.wav" for i in range(5)]
META = {25: (FILES, ["park"] * 5, ["a"] * 5)}
KEYS = {25: "datakey"}
TEACHERS, KD = TableRef("teachers", 25), TableRef("kd_ensemble", 25, 0)


def _npy(tmp_path, name, arr):
    p = tmp_path / f"{name}.npy"
    np.save(p, arr)
    return str(p)


def test_table_is_written_once_all_teachers_are_in(tmp_path):
    agg = LogitAggregatorImpl(str(tmp_path), META, KEYS)
    a, b = np.arange(50, dtype=np.float32).reshape(5, 10), np.ones((5, 10), np.float32)
    keys = {"bcbl32_fms": "k1", "passt_dir": "k2"}
    agg.collect(TEACHERS, "bcbl32_fms", _npy(tmp_path, "a", a), "k1", "run1")
    assert agg.write_table(TEACHERS, keys) is None  # passt_dir is not in yet
    assert not Layout(tmp_path).table(TEACHERS).exists()
    agg.collect(TEACHERS, "passt_dir", _npy(tmp_path, "b", b), "k2", "run2")
    path = agg.write_table(TEACHERS, keys)
    table = pq.read_table(path)
    assert table.column_names == ["filename", "scene_label", "device", "bcbl32_fms", "passt_dir", "logits"]
    for col in ("bcbl32_fms", "passt_dir", "logits"):
        t = table.schema.field(col).type
        assert pa.types.is_list(t) and t.value_type == pa.float32()
    np.testing.assert_allclose(read_logits(path, FILES), (a + b) / 2)
    np.testing.assert_allclose(read_logits(path, FILES, column="passt_dir"), b)
    # keyed by filename: any order of the requested files comes back aligned
    np.testing.assert_allclose(read_logits(path, FILES[::-1]), ((a + b) / 2)[::-1])
    meta = table_metadata(path)
    assert meta["runs"] == {"bcbl32_fms": "run1", "passt_dir": "run2"} and meta["data_key"] == "datakey"
    # the collected logits are remembered under their own unit key only
    assert agg.part_key(TEACHERS, "bcbl32_fms") == "k1"
    assert agg.write_table(TEACHERS, {**keys, "passt_dir": "other"}) is None
    files, logits = agg.table(TEACHERS)
    assert files == FILES and logits.shape == (5, 10)
    # the same keys again: the table is confirmed, not rewritten
    mtime = Layout(tmp_path).table(TEACHERS).stat().st_mtime_ns
    assert agg.write_table(TEACHERS, keys) == path
    assert Layout(tmp_path).table(TEACHERS).stat().st_mtime_ns == mtime
    # a new aggregator (the driver restarted) finds the parts on disk
    again = LogitAggregatorImpl(str(tmp_path), META, KEYS)
    assert again.part_key(TEACHERS, "passt_dir") == "k2" and again.write_table(TEACHERS, keys)


def test_a_table_for_other_files_or_bad_values_is_refused(tmp_path):
    agg = LogitAggregatorImpl(str(tmp_path), META, KEYS)
    with pytest.raises(ValueError) as e:  # the model, the file and the shape it should have
        agg.collect(TEACHERS, "bcbl32_fms", _npy(tmp_path, "x", np.zeros((4, 10))), "k", "")
    assert "bcbl32_fms" in str(e.value) and "x.npy" in str(e.value) and "(5, 10)" in str(e.value)
    bad = np.zeros((5, 10), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError) as e:
        agg.collect(TEACHERS, "bcbl32_fms", _npy(tmp_path, "y", bad), "k", "")
    assert "y.npy" in str(e.value)
    assert agg.part_key(TEACHERS, "bcbl32_fms") is None  # nothing refused was kept
    agg.collect(KD, "kd_ensemble", _npy(tmp_path, "z", np.zeros((5, 10))), "k", "")
    path = agg.write_table(KD, {"kd_ensemble": "k"})
    # a table that no longer matches the split's files is refused when a student asks for it
    with pytest.raises(AscRayError) as e:
        read_logits(path, FILES[:4])
    assert e.value.path == path and FILES[4] in str(e.value) and e.value.fix


@pytest.mark.slow
def test_the_actor_serves_tables_and_refuses_bad_logits(ray_local, tmp_path):
    """The actor the pipeline starts (pinned to the driver's node): the same calls through Ray, errors as
    RayTaskError."""
    from asc_ray.pipeline.aggregator import start_aggregator

    ray = ray_local
    agg = start_aggregator(tmp_path, META, KEYS)
    a = np.arange(50, dtype=np.float32).reshape(5, 10)
    ray.get(agg.collect.remote(TEACHERS, "bcbl32_fms", _npy(tmp_path, "a", a), "k1", "run1"))
    path = ray.get(agg.write_table.remote(TEACHERS, {"bcbl32_fms": "k1"}))
    np.testing.assert_allclose(read_logits(path, FILES), a)
    files, logits = ray.get(agg.table.remote(TEACHERS))
    assert files == FILES and np.array_equal(logits, a)
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(agg.collect.remote(TEACHERS, "passt_dir", _npy(tmp_path, "x", np.zeros((4, 10))), "k", ""))
    assert isinstance(e.value.cause, ValueError) and "x.npy" in str(e.value)


@pytest.mark.slow
def test_the_actor_comes_back_when_its_process_dies(ray_local, tmp_path):
    """SIGKILL to the actor's process (a node's OOM killer, a chaos run): Ray starts it again and retries the
    call in flight; what it had collected is on disk, so the table comes out as if nothing had happened."""
    import os
    import signal

    from asc_ray.pipeline.aggregator import start_aggregator

    ray = ray_local
    agg = start_aggregator(tmp_path, META, KEYS)
    a, b = np.arange(50, dtype=np.float32).reshape(5, 10), np.ones((5, 10), np.float32)
    ray.get(agg.collect.remote(TEACHERS, "bcbl32_fms", _npy(tmp_path, "a", a), "k1", "run1"))
    pid = ray.get(agg.pid.remote())
    os.kill(pid, signal.SIGKILL)
    ray.get(agg.collect.remote(TEACHERS, "passt_dir", _npy(tmp_path, "b", b), "k2", "run2"))
    path = ray.get(agg.write_table.remote(TEACHERS, {"bcbl32_fms": "k1", "passt_dir": "k2"}))
    np.testing.assert_allclose(read_logits(path, FILES), (a + b) / 2)
    assert ray.get(agg.pid.remote()) != pid


@pytest.mark.slow
def test_units_find_the_actor_by_its_name_and_a_new_driver_takes_the_name_over(ray_local, tmp_path):
    """Units get the actor's name, not its handle: Tune stores a trial's config, and a handle stored by a driver
    that was killed cannot be read back by the next driver (the chaos run's seed 3 failed every later run so).
    The name is the output dir's, and the next driver's actor takes it once the old one is gone."""
    from asc_ray.pipeline.aggregator import aggregator_name, get_aggregator, start_aggregator

    ray = ray_local
    name = aggregator_name(tmp_path)
    assert name == aggregator_name(str(tmp_path / "x" / ".."))  # the dir, however it is written
    assert name != aggregator_name(tmp_path / "other")

    @ray.remote
    def served_by(n: str) -> int:  # what a unit does, in another process
        return ray.get(get_aggregator(n).pid.remote())

    first = start_aggregator(tmp_path, META, KEYS)
    assert ray.get(served_by.remote(name)) == ray.get(first.pid.remote())
    ray.kill(first, no_restart=True)  # its driver is gone
    second = start_aggregator(tmp_path, META, KEYS, wait_s=30)
    assert ray.get(served_by.remote(name)) == ray.get(second.pid.remote())
